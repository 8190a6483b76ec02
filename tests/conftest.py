"""The ``backend`` fixture: one parametrisation per installed array backend.

``ENCANALYZE_BACKENDS`` (comma-separated: numpy, array_api_strict, torch, jax, torch-cuda,
cupy) picks the backends (JAX runs on the CPU with ``jax_enable_x64``); by default every
installed CPU backend runs, plus torch-cuda and cupy where a GPU is present. A backend named
explicitly but not available is an error, not a skip.

The default run is the fast one: every backend runs, but on the backends in :data:`SAMPLED`
(JAX, whose eager operations cost about a millisecond each) only one in ``K`` of their cases,
taken round robin in collection order (so every module is sampled), and tests marked ``slow``
(long exhaustive checks) are left out. ``--full`` (or
``ENCANALYZE_FULL=1``) runs the exhaustive matrix, as ``nox`` and ``.ci/run`` do.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from encanalyze import cli

ALL_BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "torch-cuda", "cupy")
SAMPLED = {"jax": 64}
"""Backends whose cases the fast run samples: one in K of all their cases."""


def pytest_addoption(parser):
    parser.addoption(
        "--full",
        action="store_true",
        help="run every case on every backend (the exhaustive matrix; ENCANALYZE_FULL=1)",
    )


def _full(config) -> bool:
    return config.getoption("--full") or os.environ.get("ENCANALYZE_FULL", "") == "1"


def pytest_report_header(config):
    if _full(config):
        return "encanalyze: the full matrix"
    sampled = ", ".join(f"{b} 1 in {k}" for b, k in SAMPLED.items())
    return f"encanalyze: the fast run ({sampled} of its cases); --full for all"


def pytest_collection_modifyitems(config, items):
    """In the fast run, leave out ``slow`` tests and all but one in K of a sampled backend's
    cases (round robin)."""
    if _full(config):
        return
    seen: dict[str, int] = {}
    keep, drop = [], []
    for item in items:
        if item.get_closest_marker("slow") is not None:
            drop.append(item)
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        backend = params.get("backend")
        k = SAMPLED.get(backend)
        if k is None:
            keep.append(item)
            continue
        index = seen[backend] = seen.get(backend, -1) + 1  # round robin over all its cases
        (keep if index % k == 0 else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _gpu_available(name: str) -> bool:
    try:
        if name == "torch-cuda":
            import torch

            return torch.cuda.is_available()
        if name == "cupy":
            import cupy

            return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False
    return False


def _installed(name: str) -> bool:
    module = {"torch-cuda": "torch"}.get(name, name)
    if importlib.util.find_spec(module) is None:
        return False
    return name not in ("torch-cuda", "cupy") or _gpu_available(name)


def selected_backends() -> list[str]:
    env = os.environ.get("ENCANALYZE_BACKENDS", "").strip()
    if not env:
        return [b for b in ALL_BACKENDS if _installed(b)]
    names = [n.strip() for n in env.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_BACKENDS]
    if unknown:
        raise pytest.UsageError(f"ENCANALYZE_BACKENDS: unknown backends {unknown}")
    return names


@dataclass
class Backend:
    """An array backend under test: its namespace, device and converters."""

    name: str
    xp: Any
    device: Any

    def asarray(self, a, dtype: str | None = None):
        """Convert a NumPy array (or nested list) to this backend, optionally casting."""
        a = np.asarray(a)
        if dtype is not None:
            a = a.astype(dtype)
        if self.name == "array_api_strict":
            return self.xp.asarray(a)
        return self.xp.asarray(a, device=self.device)

    def dtype(self, name: str):
        return getattr(self.xp, name)

    def to_numpy(self, a) -> np.ndarray:
        if self.name.startswith("torch"):
            return a.detach().cpu().numpy()
        if self.name == "cupy":
            return a.get()
        if self.name == "jax":
            return np.asarray(a)
        return np.from_dlpack(a) if self.name == "array_api_strict" else np.asarray(a)

    def check(self, a, shape=None, dtype=None) -> None:
        """Assert ``a`` lives in this backend's namespace and device (and has shape/dtype)."""
        import array_api_compat

        assert array_api_compat.array_namespace(a) is self.xp, type(a)
        assert array_api_compat.device(a) == self.device
        if shape is not None:
            assert tuple(a.shape) == tuple(shape)
        if dtype is not None:
            want = self.dtype(dtype) if isinstance(dtype, str) else dtype
            assert a.dtype == want, (a.dtype, want)


def assert_xp_close(backend: Backend, actual, desired, *, dtype=None, rtol=0.0, atol=0.0) -> None:
    """Assert that ``actual`` lives in ``backend``'s namespace and device, has ``desired``'s
    shape and ``dtype`` (a name; default: ``desired``'s dtype where it is a NumPy array), and
    holds ``desired``'s values within ``rtol``/``atol`` (exactly by default)."""
    desired = np.asarray(desired)
    backend.check(actual, desired.shape, dtype or str(desired.dtype))
    np.testing.assert_allclose(backend.to_numpy(actual), desired, rtol=rtol, atol=atol)


def make_backend(name: str) -> Backend:
    import array_api_compat

    if name == "numpy":
        import array_api_compat.numpy as xp

        return Backend(name, xp, "cpu")
    if name == "array_api_strict":
        import array_api_strict as xp

        return Backend(name, xp, xp.Device("CPU_DEVICE"))
    if name in ("torch", "torch-cuda"):
        import torch

        xp = array_api_compat.array_namespace(torch.empty(0))
        dev = torch.device("cuda", 0) if name == "torch-cuda" else torch.device("cpu")
        return Backend(name, xp, dev)
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)  # float64 and int64 statistics, as elsewhere
        xp = array_api_compat.array_namespace(jax.numpy.empty(0))
        return Backend(name, xp, jax.devices("cpu")[0])
    if name == "cupy":
        import cupy

        xp = array_api_compat.array_namespace(cupy.empty(0))
        return Backend(name, xp, cupy.cuda.Device(0))
    raise ValueError(name)


@pytest.fixture(params=selected_backends())
def backend(request) -> Backend:
    return make_backend(request.param)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261126)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1600",
    ):
        options.add_argument(flag)  # fmt: skip
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@dataclass(frozen=True)
class Ran:
    """What one ``encanalyze calibrate`` run gave: its exit status, stdout and stderr."""

    status: int
    out: str
    err: str

    def __iter__(self):
        return iter((self.status, self.out, self.err))

    def json(self) -> dict:
        """Return its ``--format json`` output (the run must have succeeded)."""
        assert self.status == 0, self.err
        return json.loads(self.out)


@pytest.fixture
def command(capsys):
    """Run ``encanalyze calibrate ARGS`` in this process: ``command(*args)`` is a :class:`Ran`."""

    def run(*args) -> Ran:
        status = cli.main(["calibrate", *map(str, args)])
        captured = capsys.readouterr()
        return Ran(status, captured.out, captured.err)

    return run
