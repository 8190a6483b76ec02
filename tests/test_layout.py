"""Facts about the package's layout.

No import cycle (imports made inside functions included), layers that only import downward,
imports inside functions only of modules that need an optional dependency, argparse only
under ``cli/``, one model-job skeleton, no private names imported across modules,
implementation modules private and the public API exactly ``__all__``.
"""

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
OPTIONAL = {"torch", "jax", "onnx", "onnxruntime", "cupy", "matplotlib", "tqdm", "torchao"}
"""Optional dependencies: a module that imports one at its top may be imported lazily."""

LAYERS = [
    # the core: namespaces, checks, grids, shapes, backends, histograms, statistics, files
    (
        "encanalyze._version",
        "encanalyze._xp",
        "encanalyze._checks",
        "encanalyze._errors",
        "encanalyze._warnings",
        "encanalyze._grid",
        "encanalyze._shapes",
        "encanalyze._backends",
        "encanalyze._encoding",
        "encanalyze._histograms",
        "encanalyze._stats",
        "encanalyze._io",
        "encanalyze._memory",
    ),
    # observers, rules, analyzers, the method registry, persistence
    (
        "encanalyze._observers",
        "encanalyze._analyzer",
        "encanalyze._rules",
        "encanalyze._registry",
        "encanalyze._persistence",
    ),
    # number formats, quality measurements and exporters, the report's rendering
    ("encanalyze.formats", "encanalyze._report", "encanalyze._html_report"),
    ("encanalyze._report_data", "encanalyze._output_errors"),
    # the framework-free calibration result
    ("encanalyze._calibration",),
    # the frontends
    ("encanalyze.onnx", "encanalyze.torch", "encanalyze.pt2e", "encanalyze.distributed"),
    # the command, and the package's front door
    ("encanalyze.cli", "encanalyze.__main__", "encanalyze"),
]


EXTENSIONS = {"encanalyze._backends._cells": PACKAGE / "_backends" / "native" / "cells.c"}
"""Compiled modules (setup.py's extensions; they import nothing of the package)."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def test_extensions_are_setup_pys():
    setup = (PACKAGE.parent / "setup.py").read_text()
    for name, source in EXTENSIONS.items():
        assert f'"{name}"' in setup and source.is_file()


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, *([target] if target else [])])


def _imports(name: str, path: Path, modules: dict, top_only: bool = False):
    """Yield ``(imported module, imported names, at module level)`` within the package.

    ``from X import m`` where ``X.m`` is a module is an import of ``X.m`` (not of ``X``).
    """
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    top = {id(n) for n in tree.body}
    for node in tree.body if top_only else ast.walk(tree):
        at_top = id(node) in top
        if isinstance(node, ast.ImportFrom):
            target = (
                _resolve(name, is_package, node.level, node.module) if node.level else node.module
            )
            if not (target and target.startswith("encanalyze")):
                continue
            names = [a.name for a in node.names]
            known = modules.keys() | EXTENSIONS.keys()
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            if len(submodules) < len(names):
                yield target, [n for n in names if f"{target}.{n}" not in known], at_top
            for sub in submodules:
                yield sub, [], at_top
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("encanalyze"):
                    yield a.name, [], at_top


def _third_party_at_top(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _, _ in _imports(name, path, modules):
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def test_no_import_cycles_with_imports_inside_functions():
    graph = _graph()
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                raise AssertionError(f"import cycle: {' -> '.join([*stack, nxt])}")
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_cycle_check_sees_imports_inside_functions(tmp_path):
    # a lazy import that closes a circle is an edge like any other
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from . import _analyzer\n")
    found = list(_imports("encanalyze._xp", path, _modules()))
    assert found == [("encanalyze._analyzer", [], False)]


def _layer(name: str) -> int:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    assert best is not None, f"{name} is in no layer of LAYERS"
    return best[0]


def test_layers_import_only_downward():
    upward = []
    for name, targets in _graph().items():
        for target in targets:
            if _layer(target) > _layer(name):
                upward.append(f"{name} -> {target}")
    assert not upward, upward


def test_imports_inside_functions_only_of_modules_with_an_optional_dependency():
    modules = _modules()
    lazy = []
    for name, path in modules.items():
        for target, _, at_top in _imports(name, path, modules):
            if at_top or target not in modules:
                continue
            if not _third_party_at_top(modules[target]) & OPTIONAL:
                lazy.append(f"{name}: {target}")
    assert not lazy, lazy


def test_argparse_only_under_cli():
    from encanalyze.cli import build_parser

    parser = build_parser()
    calibrate = parser._subparsers._group_actions[0].choices["calibrate"]
    flags = {s for a in calibrate._actions for s in a.option_strings if s.startswith("--")}
    assert "--block-size" in flags and "--data" in flags
    for name, path in _modules().items():
        if name == "encanalyze.cli" or name.startswith("encanalyze.cli."):
            continue
        tree = ast.parse(path.read_text())
        assert "argparse" not in _third_party_at_top(path), name
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                params = {a.arg for a in (*node.args.posonlyargs, *node.args.args)}
                options = {  # a parameter read as a namespace of options: args.bits, ...
                    n.value.id
                    for n in ast.walk(node)
                    if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                }
                assert not params & options & {"args", "options", "opts"}, (
                    f"{name}.{node.name} takes the parsed args"
                )
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in docstrings:  # a message in the library names no option
                    words = set(node.value.replace("/", " ").split())
                    assert not words & flags, (name, node.value)


def test_the_command_has_one_model_job_skeleton():
    from encanalyze.cli import _model_job

    strategies = (_model_job.IntJob, _model_job.Float8Job, _model_job.BlockJob)
    assert all(issubclass(s, _model_job.ModelJob) for s in strategies)
    assert all("run" not in vars(s) for s in strategies)  # one order of steps for every grid
    runs = [
        f"{name}.{node.name}"
        for name, path in _modules().items()
        if name.startswith("encanalyze.cli")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name == "run"
    ]
    assert runs == ["encanalyze.cli._model_job.run"]
    boundaries = [
        name
        for name, path in _modules().items()
        if "noqa: BLE001 - the command's one boundary" in path.read_text()
    ]
    assert boundaries == ["encanalyze.cli"]


def test_no_private_names_imported_across_modules():
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        for target, names, _ in _imports(name, path, modules, top_only=True):
            for n in names:
                if n.startswith("_") and n != "__version__":
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
