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


@pytest.mark.slow  # a fresh interpreter importing JAX: 10 s
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


_TWIN_METHODS = ("minmax", "ema", "percentile", "sqnr", "tf_enhanced", "mse", "entropy")
_TWIN_CASES = [
    pytest.param(
        method,
        symmetric,
        library,
        # JAX's own eager path takes seconds a case: the fast run keeps one of them
        marks=[pytest.mark.slow] if library == "jax" and (symmetric or method != "minmax") else [],
    )
    for library in ("torch", "jax")
    for method in _TWIN_METHODS
    for symmetric in (False, True)
]


@pytest.mark.parametrize(("method", "symmetric", "library"), _TWIN_CASES)
@pytest.mark.filterwarnings("ignore:3 NaN values were ignored")
def test_host_arrays_on_numpy_views_equal_their_own(rng, monkeypatch, method, symmetric, library):
    """Host torch batches and CPU JAX arrays are gathered, and host statistics encoded, on
    NumPy views of the same memory: the statistics and encodings equal the library's own (its
    kernels, its dispatch), bit for bit, in its own array type."""
    import encanalyze as ea

    if library == "torch":
        torch = pytest.importorskip("torch")
        kind, asarray = torch.Tensor, torch.from_numpy
    else:
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
        kind, asarray = jax.Array, jax.numpy.asarray
    x = rng.standard_t(5, (300, 8)).astype(np.float32)
    x[3, 2] = np.nan
    batches = [asarray(b) for b in (x, x * 1.5, x * 0.25)]
    results = []
    for twin in (True, False):
        monkeypatch.setattr(backends, "HOST_TWIN", twin)
        analyzer = ea.METHODS[method].analyzer((1, 8))
        stats = [analyzer.update_stats(b) for b in batches]
        state = {k: v for k, v in analyzer.state_dict()["state"].items()}
        results.append((stats, state, analyzer.compute_encodings(15, symmetric)))
    (stats, state, enc), (want_stats, want_state, want_enc) = results
    assert state.keys() == want_state.keys()
    for key, value in state.items():
        assert isinstance(value, kind) and value.dtype == want_state[key].dtype, key
        np.testing.assert_array_equal(np.asarray(value), np.asarray(want_state[key]), err_msg=key)
    for a, b in zip(enc, want_enc):
        assert isinstance(a, kind) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for got, want in zip(stats, want_stats):  # each batch's own statistics
        for name in ("min", "max", "histogram"):
            if hasattr(want, name):
                a, b = getattr(got, name), getattr(want, name)
                assert isinstance(a, kind) and a.dtype == b.dtype, name
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def _ranges(rng, kind):
    """(lo, hi) pairs of 200 encodings: random, narrow, infinite, NaN, signed zeros."""
    lo = -np.abs(rng.standard_normal(200)) * 10.0 ** rng.integers(-8, 8, 200)
    hi = np.abs(rng.standard_normal(200)) * 10.0 ** rng.integers(-8, 8, 200)
    lo[:20], hi[:20] = 0.0, 1e-12  # narrower than the minimum scale
    lo[20:30], hi[20:30] = -0.0, -0.0
    lo[30:35], hi[35:40] = -np.inf, np.inf
    lo[40:45], hi[45:50] = 3e38, -3e38  # beyond float16's range; positive lo, negative hi
    lo[50:52] = np.nan
    lo[52:60], hi[52:60] = 5.0, 7.0  # zero is put into the range
    if kind != "float64":
        with np.errstate(over="ignore"):
            lo, hi = lo.astype(kind), hi.astype(kind)
    return lo, hi


@pytest.mark.parametrize("kind", ["float16", "float32", "float64"])
@pytest.mark.parametrize("num_steps", [1, 2, 3, 15, 255, 2**32 - 1])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.filterwarnings("ignore:encodings were infinite")
def test_fused_minmax_encoding_equals_portable(rng, kind, num_steps, symmetric):
    """NumPy's fused min-max rule gives the portable rule's bits, warnings and dtypes."""
    import warnings

    import array_api_compat.numpy as xp

    from encanalyze._backends import _numpy_like
    from encanalyze._encoding import portable_minmax_encoding

    if symmetric and num_steps < 2:
        pytest.skip("symmetric grids have at least 2 steps")
    lo, hi = _ranges(rng, kind)
    f32, f64 = np.dtype("float32"), np.dtype("float64")
    for out_dtype, two_bit in ((None, True), (f32, False), (f64, True)):
        results = []
        for fn in (_numpy_like.minmax_encoding, None):
            with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
                warnings.simplefilter("always")
                if fn is None:
                    got = portable_minmax_encoding(
                        xp, lo, hi, num_steps, symmetric, out_dtype, two_bit
                    )
                else:
                    got = fn(lo, hi, num_steps, symmetric, out_dtype, two_bit)
            results.append((got, [str(w.message) for w in caught]))
        (fused, fused_warn), (want, want_warn) = results
        assert fused_warn == want_warn
        for g, w in zip(fused, want):
            assert type(g) is np.ndarray and g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)
            np.testing.assert_array_equal(np.signbit(g), np.signbit(w))
        for k in range(lo.shape[0]):  # one encoding at a time: the scalar path
            one = []
            for fn in (_numpy_like.minmax_encoding, None):
                with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
                    warnings.simplefilter("always")
                    args = (lo[k : k + 1], hi[k : k + 1], num_steps, symmetric, out_dtype, two_bit)
                    got = fn(*args) if fn else portable_minmax_encoding(xp, *args)
                one.append((got, [str(w.message) for w in caught]))
            (fused, fused_warn), (want, want_warn) = one
            assert fused_warn == want_warn
            for g, w in zip(fused, want):
                assert type(g) is np.ndarray and g.dtype == w.dtype and g.shape == (1,)
                np.testing.assert_array_equal(g, w)
                np.testing.assert_array_equal(np.signbit(g), np.signbit(w))


@pytest.mark.parametrize("shape", [(1,), (8, 1), (1, 64), (8, 64)])
@pytest.mark.parametrize("kind", ["plain", "nan", "inf", "int"])
def test_fused_minmax_rows_equal_portable(rng, shape, kind):
    """NumPy's one-call batch range gives the portable range, or declines for NaN rows."""
    import array_api_compat.numpy as xp

    from encanalyze._backends import _numpy_like, primitives
    from encanalyze._shapes import plan

    x = _data(rng, (8, 64), kind)
    p = plan(x.shape, shape)
    got = _numpy_like.minmax_rows(np, x, p.view_shape, p.reduce_axes, p.num_encodings)
    lo, hi, num_nan = _portable.minmax(xp, xp.reshape(x, p.view_shape), p.reduce_axes)
    if kind == "nan":
        assert got is None
        return
    assert primitives(xp).minmax_rows is not None
    for g, w in zip(got, (lo, hi)):
        assert g.dtype == x.dtype and g.shape == (p.num_encodings,)
        np.testing.assert_array_equal(g, np.reshape(w, (p.num_encodings,)))


@pytest.mark.parametrize("kind", ["plain", "edges", "nan", "wide"])
@pytest.mark.parametrize("num_bins", [1, 7, 256, 2048])
def test_histogram_rows_native_equals_portable(backend, rng, kind, num_bins):
    """Every backend's binning (JAX's compiled, NumPy's blocked, torch's) counts as the
    portable formula does, values on bin edges and out-of-range values included."""
    from encanalyze._xp import work_dtype

    xp = backend.xp
    x = rng.standard_normal((9, 301)) * rng.uniform(0.01, 100, (9, 1))
    if kind == "edges":
        x = np.round(x * 8) / 8  # many values exactly on edges
    lo, hi = x.min(axis=1), x.max(axis=1)
    if kind == "wide":  # values beyond the range go to the end bins
        lo, hi = lo * 0.5, hi * 0.5
    if kind == "nan":
        x[rng.random(x.shape) < 0.1] = np.nan
    for dtype in ("float32", "float64"):
        rows, a, b = (backend.asarray(v, dtype) for v in (x, lo, hi))
        wd = work_dtype(xp, rows.dtype)
        args = (xp.astype(rows, wd), xp.astype(a, wd), xp.astype(b, wd), num_bins, kind == "nan")
        got = backends.histogram_rows(xp, *args)
        want = _portable.histogram_rows(xp, *args)
        backend.check(got, (9, num_bins), want.dtype)
        np.testing.assert_array_equal(backend.to_numpy(got), backend.to_numpy(want))
        assert float(np.sum(backend.to_numpy(got))) == np.sum(~np.isnan(x))


@pytest.mark.parametrize("shape", [(1,), (8, 1), (1, 64), (2, 4, 1)])
@pytest.mark.filterwarnings("ignore:.*NaN values were ignored", "ignore:encodings were infinite")
def test_compiled_minmax_update_equals_the_eager_one(rng, monkeypatch, shape):
    """JAX runs a min-max update as one compiled program: the same statistics, bit for bit,
    as its operations run one by one (NaN and infinities, several batches, a block size)."""
    jax = pytest.importorskip("jax")
    import encanalyze as ea
    from encanalyze import _analyzer

    jax.config.update("jax_enable_x64", True)
    xs = [_data(rng, (8, 64), kind) for kind in ("plain", "nan", "inf", "int")]
    if shape == (2, 4, 1):
        xs = [np.reshape(x, (2, 4, 64)) for x in xs]
    results = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(_analyzer, "compiled_update", lambda xp, update, kinds=(): None)
        analyzer = ea.MinMaxEncodingAnalyzer(shape)
        batches = [analyzer.update_stats(jax.numpy.asarray(x)) for x in xs]
        analyzer.observe(jax.numpy.asarray(xs[0] * 3))
        assert (analyzer.__dict__["_program"][1] is not None) == compiled
        state = analyzer.state_dict()["state"]
        results.append((batches, state, analyzer.compute_encodings(255, False)))
    (b1, s1, e1), (b2, s2, e2) = results
    for one, two in zip(b1, b2):
        for f in ("min", "max", "num_nan"):
            a, b = getattr(one, f), getattr(two, f)
            assert (a is None) == (b is None)
            if a is not None:
                assert isinstance(a, jax.Array) and a.dtype == b.dtype
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert s1.keys() == s2.keys()
    for key in s1:
        np.testing.assert_array_equal(np.asarray(s1[key]), np.asarray(s2[key]), err_msg=key)
    for a, b in zip(e1, e2):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_compiled_jax_primitives_inline_into_a_callers_program(rng):
    """Inside a caller's jax.jit (which owns the compiler options) the compiled primitives
    are traced into its program instead of nesting theirs (nested options are an error):
    the range is the same (it only compares); the binning counts every value."""
    jax = pytest.importorskip("jax")
    import array_api_compat

    jax.config.update("jax_enable_x64", True)
    x = jax.numpy.asarray(_data(rng, (6, 50, 7), "nan"))
    xp = array_api_compat.array_namespace(x)
    eager = backends.minmax(xp, x, (1,))
    traced = jax.jit(lambda v: backends.minmax(xp, v, (1,)))(x)
    for a, b in zip(eager, traced):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = jax.numpy.asarray(rng.standard_normal((4, 100)).astype(np.float32))
    lo, hi = jax.numpy.min(rows, axis=1), jax.numpy.max(rows, axis=1)
    inlined = jax.jit(lambda r, a, b: backends.histogram_rows(xp, r, a, b, 16, False))(rows, lo, hi)
    assert inlined.shape == (4, 16) and float(np.sum(np.asarray(inlined))) == 400
