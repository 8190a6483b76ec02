"""Facts about the package's layout: no import cycles, no private names imported across
modules, implementation modules private, the public API exactly ``__all__``."""

import ast
import importlib.util
from pathlib import Path

import encanalyze

PACKAGE = Path(encanalyze.__file__).resolve().parent
PUBLIC_MODULES = {
    "encanalyze",
    "encanalyze.cli",
    "encanalyze.distributed",
    "encanalyze.formats",
    "encanalyze.torch",
    "encanalyze.onnx",
    "encanalyze.pt2e",
    "encanalyze.__main__",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, *([target] if target else [])])


def _imports(name: str, path: Path):
    """Module-level ``(imported module, imported names)`` pairs within the package."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    for node in tree.body:  # module level only: lazy imports inside functions are not edges
        if isinstance(node, ast.ImportFrom):
            target = (
                _resolve(name, is_package, node.level, node.module) if node.level else node.module
            )
            if target and target.startswith("encanalyze"):
                yield target, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("encanalyze"):
                    yield a.name, []


def test_no_import_cycles():
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for target, names in _imports(name, path):
            graph[name].add(target)
            graph[name].update(f"{target}.{n}" for n in names if f"{target}.{n}" in modules)
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt not in graph or nxt in PUBLIC_MODULES - {"encanalyze"}:
                continue
            if state.get(nxt) == "open":
                raise AssertionError(f"import cycle: {' -> '.join([*stack, nxt])}")
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_private_names_imported_across_modules():
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        for target, names in _imports(name, path):
            for n in names:
                is_module = f"{target}.{n}" in modules
                if n.startswith("_") and not is_module and n != "__version__":
                    offenders.append(f"{name}: from {target} import {n}")
    assert not offenders, offenders


def test_implementation_modules_are_private_and_the_api_is_all():
    for name in _modules():
        if name not in PUBLIC_MODULES:
            assert any(part.startswith("_") for part in name.split(".")[1:]), name
    public = {n for n in dir(encanalyze) if not n.startswith("_")}
    submodules = {n for n in public if importlib.util.find_spec(f"encanalyze.{n}") is not None}
    assert public - submodules == set(encanalyze.__all__)
    assert submodules <= {"cli", "distributed", "formats", "torch", "onnx", "pt2e"}
