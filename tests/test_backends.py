"""Native fast paths against the portable fallback, on every backend."""

import numpy as np
import pytest

from encanalyze import _backends as backends
from encanalyze._backends import _portable


def _data(rng, shape, kind):
    x = rng.standard_normal(shape).astype(np.float32)
    if kind == "nan":
        x[rng.random(shape) < 0.1] = np.nan
        x[0] = np.nan  # one whole slice of NaN
    elif kind == "inf":
        x[rng.random(shape) < 0.05] = np.inf
        x[rng.random(shape) < 0.05] = -np.inf
    elif kind == "int":
        x = (x * 100).astype(np.int32)
    return x


@pytest.mark.parametrize("kind", ["plain", "nan", "inf", "int"])
@pytest.mark.parametrize("axes", [(1,), (0,), (0, 2), (0, 1, 2)])
def test_minmax_native_equals_portable(backend, rng, kind, axes):
    xp = backend.xp
    x = backend.asarray(_data(rng, (6, 50, 7), kind))
    got = backends.minmax(xp, x, axes)
    want = _portable.minmax(xp, x, axes)
    for g, w in zip(got[:2], want[:2]):
        backend.check(g, w.shape, w.dtype)
        np.testing.assert_array_equal(backend.to_numpy(g), backend.to_numpy(w))
    counts = [
        np.zeros(got[0].shape) if c is None else backend.to_numpy(c) for c in (got[2], want[2])
    ]
    np.testing.assert_array_equal(*counts)
    if kind == "nan":
        assert got[2] is not None and np.sum(counts[0]) > 0


@pytest.mark.filterwarnings("ignore:All-NaN slice")
def test_minmax_portable_semantics(rng):
    import array_api_compat.numpy as xp

    x = _data(rng, (6, 50, 7), "nan")
    lo, hi, num_nan = _portable.minmax(xp, x, (1,))
    np.testing.assert_array_equal(num_nan, np.isnan(x).sum(axis=1))
    finite = ~np.isnan(x).all(axis=1)
    np.testing.assert_array_equal(lo[finite], np.nanmin(x, axis=1)[finite])
    np.testing.assert_array_equal(hi[finite], np.nanmax(x, axis=1)[finite])
    assert np.all(lo[~finite] == np.inf) and np.all(hi[~finite] == -np.inf)


def test_jax_without_x64_runs_every_method_quietly():
    """JAX's default configuration has no float64 / int64: float32 stats, int32 counts."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    code = """
import warnings
warnings.simplefilter("error")
import jax, jax.numpy as jnp, numpy as np
import encanalyze as ea
assert not jax.config.jax_enable_x64
x = jnp.asarray(np.random.default_rng(0).standard_normal((256, 4)).astype(np.float32))
for name, m in ea.METHODS.items():
    a = m.analyzer((1, 4))
    a.update_stats(x)
    lo, hi = a.compute_encodings(255, False)
    assert isinstance(lo, jax.Array) and lo.dtype == jnp.float32, name
    assert bool((lo < 0).all() and (hi > 0).all()), name
print("ok")
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "JAX_ENABLE_X64"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


@pytest.mark.parametrize(
    "bounds",
    ["numbers", "lower only", "upper only", "arrays", "array and number"],
)
def test_clip_native_equals_portable(backend, rng, bounds):
    xp = backend.xp
    x = _data(rng, (6, 50), "inf")
    x[rng.random(x.shape) < 0.1] = np.nan
    lo_a, hi_a = (
        backend.asarray(v)
        for v in (np.full((6, 1), -0.5, np.float32), np.full((1, 50), 0.75, np.float32))
    )
    lo, hi = {
        "numbers": (-0.5, 0.75),
        "lower only": (-0.5, None),
        "upper only": (None, 0.75),
        "arrays": (lo_a, hi_a),
        "array and number": (lo_a, 0.75),
    }[bounds]
    xs = backend.asarray(x)
    got, want = backends.clip(xp, xs, lo, hi), _portable.clip(xp, xs, lo, hi)
    backend.check(got, x.shape, "float32")
    np.testing.assert_array_equal(backend.to_numpy(got), backend.to_numpy(want))
    expect = np.clip(x, -0.5 if lo is not None else None, 0.75 if hi is not None else None)
    np.testing.assert_array_equal(backend.to_numpy(got), expect)  # NaN stays NaN


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize(
    "method", ["minmax", "ema", "percentile", "sqnr", "tf_enhanced", "mse", "entropy"]
)
@pytest.mark.filterwarnings("ignore:3 NaN values were ignored")
def test_host_torch_on_numpy_views_equals_torch(rng, monkeypatch, method, symmetric):
    """Small host torch batches are gathered, and host statistics encoded, on NumPy views of
    the same memory: the statistics and encodings equal torch's own, bit for bit."""
    torch = pytest.importorskip("torch")
    import encanalyze as ea

    x = rng.standard_t(5, (300, 8)).astype(np.float32)
    x[3, 2] = np.nan
    batches = [torch.from_numpy(b) for b in (x, x * 1.5, x * 0.25)]
    results = []
    for twin in (True, False):
        monkeypatch.setattr(backends, "HOST_TWIN", twin)
        analyzer = ea.METHODS[method].analyzer((1, 8))
        for b in batches:
            analyzer.update_stats(b)
        state = {k: v for k, v in analyzer.state_dict()["state"].items()}
        results.append((state, analyzer.compute_encodings(15, symmetric)))
    (state, enc), (want_state, want_enc) = results
    assert state.keys() == want_state.keys()
    for key, value in state.items():
        assert isinstance(value, torch.Tensor) and value.dtype == want_state[key].dtype, key
        np.testing.assert_array_equal(value.numpy(), want_state[key].numpy(), err_msg=key)
    for a, b in zip(enc, want_enc):
        assert isinstance(a, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a.numpy(), b.numpy())
