import math

import numpy as np
import pytest

from encanalyze import Histogram, SqnrEncodingAnalyzer, TfEnhancedEncodingAnalyzer
from encanalyze._rules.sqnr import sqnr_search
from tests import reference

SEED_COUNTS = [2, 0, 8, 8, 16, 22, 23, 12, 6, 3]


def _hist(backend, counts, edges):
    counts, edges = np.asarray(counts, np.float32), np.asarray(edges, np.float32)
    return Histogram(
        backend.asarray(counts),
        backend.asarray(edges),
        backend.asarray(edges[..., 0]),
        backend.asarray(edges[..., -1]),
    )


def _random_histograms(rng, rows, bins, kind="mixed"):
    counts = rng.integers(0, 40, (rows, bins)).astype(np.float32)
    counts *= rng.random((rows, bins)) < rng.uniform(0.2, 1.0, (rows, 1))  # sparse ones too
    counts[:, rng.integers(0, bins)] += 1  # never empty
    lo = rng.uniform(-8, 0.5, rows).astype(np.float32)
    width = rng.uniform(0.1, 12, rows).astype(np.float32)
    if kind == "positive":
        lo = np.abs(lo)
    edges = lo[:, None] + np.arange(bins + 1, dtype=np.float32) * (width / bins)[:, None]
    return counts, edges.astype(np.float32)


def test_seed_example(backend):
    analyzer = SqnrEncodingAnalyzer(shape=(1,), num_bins=10, gamma=1)
    edges = np.linspace(-2.8907, 2.3912, 11, dtype=np.float32)[None]
    lo, hi = analyzer.compute_encodings_from_stats(_hist(backend, [SEED_COUNTS], edges), 256, False)
    backend.check(lo, (1,), "float32")
    np.testing.assert_allclose(backend.to_numpy(lo), [-2.7080], atol=5e-5)
    np.testing.assert_allclose(backend.to_numpy(hi), [2.2438], atol=5e-5)


@pytest.mark.parametrize("n", [15, 255, 65535])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_matches_numpy_brute_force(backend, rng, n, symmetric, gamma):
    counts, edges = _random_histograms(rng, 6, 64)
    analyzer = SqnrEncodingAnalyzer((6,), num_bins=64, gamma=gamma)
    lo, hi = analyzer.compute_encodings_from_stats(_hist(backend, counts, edges), n, symmetric)
    backend.check(lo, (6,), "float32")
    for r in range(6):
        want_lo, want_hi, best, noises = reference.sqnr_encoding(
            counts[r], edges[r], edges[r, 0], edges[r, -1], n, symmetric, gamma
        )
        got = (float(backend.to_numpy(lo)[r]), float(backend.to_numpy(hi)[r]))
        if got != (want_lo, want_hi):  # only a near-tie may choose another candidate
            d = (got[1] - got[0]) / n
            mine = reference.sqnr_noise(counts[r], edges[r], d, round(got[0] / d), n, gamma)
            assert mine <= best * (1 + 1e-6), (got, (want_lo, want_hi))


@pytest.mark.parametrize(
    "n, bins",
    [
        pytest.param(15, 2048, marks=pytest.mark.slow),
        pytest.param(255, 2048, marks=pytest.mark.slow),
        (15, 512),
        pytest.param(255, 1024, marks=pytest.mark.slow),
        (255, 256),
        (255, 130),
        (3, 64),
    ],
)
@pytest.mark.parametrize("symmetric", [False, True])
def test_cells_and_brute_force_choose_the_same(rng, n, bins, symmetric):
    import array_api_compat.numpy as xp

    counts, edges = _random_histograms(rng, 200, bins)
    counts[:50] = np.round(counts[:50] * 1000)  # large counts too
    args = (xp, counts, edges, edges[:, 0], edges[:, -1], n, symmetric)
    got = sqnr_search(*args, method="cells", gamma=3.0)
    want = sqnr_search(*args, method="brute", gamma=3.0)
    differ = np.nonzero((got[0] != want[0]) | (got[1] != want[1]))[0]
    for r in differ:  # allowed only where both noises agree to 1e-6
        noise = [
            reference.sqnr_noise(
                counts[r], edges[r], (h - lo) / n, round(lo / ((h - lo) / n)), n, 3.0
            )
            for lo, h in ((got[0][r], got[1][r]), (want[0][r], want[1][r]))
        ]
        assert abs(noise[0] - noise[1]) <= 1e-6 * noise[1], (r, noise)
    assert len(differ) <= 2


@pytest.mark.parametrize("symmetric", [pytest.param(False, marks=pytest.mark.slow), True])
def test_sparse_rows_search_only_their_occupied_bins(backend, rng, symmetric):
    """Weights of a few dozen values leave most bins empty: the brute force over the occupied
    bins alone is chosen, and it picks what the brute force over every bin picks."""
    from encanalyze._rules.sqnr import choose_method

    counts, edges = _random_histograms(rng, 40, 2048)
    keep = np.zeros_like(counts, dtype=bool)
    for r, k in enumerate(rng.integers(1, 60, 40)):  # 1..59 occupied bins per row
        keep[r, rng.choice(2048, k, replace=False)] = True
    counts = np.where(keep, np.maximum(counts, 1), 0).astype(np.float32)
    c, e = backend.asarray(counts), backend.asarray(edges)
    xp = backend.xp
    assert choose_method(xp, c, 255, xp.float64) == ("brute", int(keep.sum(axis=1).max()))
    args = (xp, c, e, e[:, 0], e[:, -1], 255, symmetric)
    got = [backend.to_numpy(a) for a in sqnr_search(*args, gamma=3.0)]
    want = [backend.to_numpy(a) for a in sqnr_search(*args, method="brute", gamma=3.0)]
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_cells_noise_equals_brute_force_noise(rng):
    import array_api_compat.numpy as xp

    from encanalyze._rules.sqnr import asymmetric_candidates, noise_brute_force, noise_by_cells

    counts, edges = _random_histograms(rng, 50, 1024)
    lo, hi = np.minimum(edges[:, 0], 0), np.maximum(edges[:, -1], 0)
    d, o = asymmetric_candidates(xp, lo, hi, 255, 17, 21)
    args = [a.astype(np.float64) for a in (counts, edges, d, o)]
    brute = noise_brute_force(xp, *args, 255, 3.0)
    cells = noise_by_cells(xp, *args, 255, 3.0)
    np.testing.assert_allclose(cells, brute, rtol=1e-9)


def test_max_parallelism_never_changes_results(backend, rng):
    counts, edges = _random_histograms(rng, 9, 128)
    stats = _hist(backend, counts.reshape(3, 3, 128), edges.reshape(3, 3, 129))
    results = [
        [
            backend.to_numpy(a)
            for a in SqnrEncodingAnalyzer(
                (3, 3), 128, max_parallelism=p
            ).compute_encodings_from_stats(stats, 255, False)
        ]
        for p in (1, 2, 64)
    ]
    for other in results[1:]:
        np.testing.assert_array_equal(other[0], results[0][0])
        np.testing.assert_array_equal(other[1], results[0][1])


@pytest.mark.parametrize("layout", [((64, 6), (1, 6)), ((6, 64), (6, 1)), ((4, 6, 8), (6, 1))])
def test_end_to_end_per_channel_any_axis(backend, rng, layout):
    in_shape, shape = layout
    batches = [rng.standard_normal(in_shape).astype(np.float32) * s for s in (1.0, 2.5)]
    analyzer = SqnrEncodingAnalyzer(shape, num_bins=128, gamma=3.0)
    for b in batches:
        analyzer.update_stats(backend.asarray(b))
    lo, hi = analyzer.compute_encodings(15, False)
    backend.check(lo, shape, "float32")
    stats = analyzer.get_stats()
    counts = backend.to_numpy(stats.histogram).reshape(6, 128)
    edges = backend.to_numpy(stats.bin_edges).reshape(6, 129)
    for r in range(6):
        want_lo, want_hi, _, _ = reference.sqnr_encoding(
            counts[r], edges[r], edges[r, 0], edges[r, -1], 15, False, 3.0
        )
        assert backend.to_numpy(lo).ravel()[r] == want_lo
        assert backend.to_numpy(hi).ravel()[r] == want_hi


def test_tf_enhanced_settings():
    a = TfEnhancedEncodingAnalyzer((4, 1))
    assert (a.num_bins, a.gamma, a.growth_limit) == (512, 3.0, 3.0)
    assert (a.asymmetric_delta_candidates, a.symmetric_delta_candidates, a.offset_candidates) == (
        17,
        101,
        21,
    )


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        ({"asymmetric_delta_candidates": 1}, ValueError, "asymmetric_delta_candidates"),
        ({"symmetric_delta_candidates": 1}, ValueError, "symmetric_delta_candidates"),
        ({"offset_candidates": 2}, ValueError, "offset_candidates"),
        ({"max_parallelism": 0}, ValueError, "max_parallelism"),
        ({"gamma": -0.5}, ValueError, "gamma"),
        ({"gamma": math.inf}, ValueError, "gamma"),
        ({"gamma": math.nan}, ValueError, "gamma"),
        ({"gamma": "3"}, TypeError, "gamma"),
        ({"offset_candidates": 2.5}, TypeError, "offset_candidates"),
        ({"histogram_growth_limit": 0.9}, ValueError, "growth limit"),
        ({"num_bins": 0}, ValueError, "num_bins"),
    ],
)
def test_bad_parameters(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        SqnrEncodingAnalyzer((1,), **kwargs)


def test_errors_leave_stats_unchanged(backend, rng):
    analyzer = SqnrEncodingAnalyzer((2, 1), num_bins=32)
    analyzer.update_stats(backend.asarray(rng.standard_normal((2, 40)), "float32"))
    before = backend.to_numpy(analyzer.get_stats().histogram).copy()
    with pytest.raises(ValueError, match="symmetric"):
        analyzer.compute_encodings(1, True)
    with pytest.raises(ValueError, match=r"\(2, 1\).*\(3, 40\)"):
        analyzer.update_stats(backend.asarray(rng.standard_normal((3, 40)), "float32"))
    np.testing.assert_array_equal(backend.to_numpy(analyzer.get_stats().histogram), before)
    lo, hi = analyzer.compute_encodings(255, True)
    assert np.all(backend.to_numpy(lo) < 0) and np.all(backend.to_numpy(hi) > 0)


@pytest.mark.parametrize("cls", [SqnrEncodingAnalyzer, TfEnhancedEncodingAnalyzer])
@pytest.mark.parametrize("top", [1.75e38, 3.0e38, 3.3983045e38])
def test_ranges_near_float32s_largest_value_keep_their_data(backend, cls, top):
    """Non-negative data up to ``top``: the grid covers it (it used to be (0, 3.04e-05))."""
    values = np.linspace(0, 1, 1000) * top
    x = backend.asarray(values, "float32")
    analyzer = cls((1,))
    analyzer.update_stats(x)
    lo, hi = (backend.to_numpy(a) for a in analyzer.compute_encodings(255, False))
    assert lo[0] == 0 and 0.99 * np.float32(top) <= hi[0] <= np.finfo(np.float32).max
    with pytest.warns(RuntimeWarning, match="clamped") if top > 3.3e38 else _no_warning():
        lo, hi = (backend.to_numpy(a) for a in analyzer.compute_encodings(255, True))
    assert np.isfinite([lo[0], hi[0]]).all() and -lo[0] >= hi[0] >= 0.99 * np.float32(top)


def _no_warning():
    import contextlib
    import warnings

    @contextlib.contextmanager
    def check():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield

    return check()


compiled = pytest.mark.skipif(
    __import__("os").environ.get("ENCANALYZE_NATIVE") == "0",
    reason="ENCANALYZE_NATIVE=0: the compiled kernels are switched off",
)


def _portable_cells(xp, counts, edges, d, o, n, gamma, scale=None):
    """The portable cells search (the compiled one's specification)."""
    from functools import partial

    from encanalyze._rules.sqnr import _noise_by_cells
    from encanalyze._xp import in_row_blocks

    edges = xp.astype(edges, counts.dtype)
    if scale is not None:
        edges = edges * scale
    return in_row_blocks(xp, partial(_noise_by_cells, xp), (counts, edges, d, o), 7, n, gamma)


@compiled
def test_compiled_cells_search_is_built():
    """``pip install`` compiled the C search (CI installs with a compiler; the portable path
    would still give the same encodings, only slower)."""
    from encanalyze._backends import _compiled, primitives

    assert _compiled.LIBRARY is not None, "encanalyze/_backends/_cells was not compiled"
    import array_api_compat.numpy as xp

    assert primitives(xp).noise_by_cells is _compiled.noise_by_cells


@compiled
@pytest.mark.parametrize("n", [0, 1, 15, 254, 255])
@pytest.mark.parametrize("gamma", [1.0, 3.0])
@pytest.mark.parametrize("edge_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sym", [False, True])
def test_compiled_cells_equal_portable_bit_for_bit(rng, n, gamma, edge_dtype, sym):
    """The C search (SSE2 two lanes, and the scalar tail) gives the portable noise exactly:
    rows split between threads, positive-only and huge rows (power-of-two scales), edges of
    either float width, a row of one occupied bin."""
    import array_api_compat.numpy as xp

    from encanalyze._backends import _compiled
    from encanalyze._rules.sqnr import (
        _power_of_two_scale,
        asymmetric_candidates,
        noise_by_cells,
        symmetric_candidates,
    )

    counts, edges = _random_histograms(rng, 40, 300)
    pos_counts, pos_edges = _random_histograms(rng, 8, 300, kind="positive")
    counts = np.concatenate([counts, pos_counts]).astype(np.float64)
    edges = np.concatenate([edges, pos_edges]).astype(np.float64)
    edges[3] *= 2.0**600 if edge_dtype == np.float64 else 2.0**100  # huge (float64: scaled)
    counts[5] = 0.0
    counts[5, 17] = 3.0  # one occupied bin
    edges = edges.astype(edge_dtype)
    lo = np.minimum(edges[:, 0].astype(np.float64), 0)
    hi = np.maximum(edges[:, -1].astype(np.float64), 0)
    steps = max(n, 1)
    if sym:
        d, o = symmetric_candidates(xp, lo, hi, steps, 101)
    else:
        d, o = asymmetric_candidates(xp, lo, hi, steps, 17, 21)
    scale = _power_of_two_scale(xp, edges[:, :: edges.shape[1] - 1].astype(np.float64))
    d = d * scale
    want = _portable_cells(xp, counts, edges, d, o, n, gamma, scale)
    got = noise_by_cells(xp, counts, edges, d, o, n, gamma, scale)
    assert _compiled.LIBRARY is not None
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got).all()


@compiled
def test_compiled_cells_on_torch_cpu_tensors(rng):
    """torch CPU float64 tensors take the compiled search through NumPy views: same noise."""
    torch = pytest.importorskip("torch")
    import array_api_compat.numpy as np_xp
    import array_api_compat.torch as t_xp

    from encanalyze._rules.sqnr import asymmetric_candidates, noise_by_cells

    counts, edges = _random_histograms(rng, 20, 256)
    counts = counts.astype(np.float64)
    lo, hi = np.minimum(edges[:, 0], 0).astype(np.float64), np.maximum(edges[:, -1], 0)
    d, o = asymmetric_candidates(np_xp, lo, hi.astype(np.float64), 255, 17, 21)
    want = _portable_cells(np_xp, counts, edges, d, o, 255, 3.0)
    got = noise_by_cells(t_xp, *(torch.from_numpy(a) for a in (counts, edges, d, o)), 255, 3.0)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), want)


def test_cells_search_takes_the_portable_path_for_other_dtypes(rng):
    """float32 work arrays are not the compiled search's: the portable one answers them."""
    import array_api_compat.numpy as xp

    from encanalyze._backends import _compiled

    counts, edges = _random_histograms(rng, 4, 64)
    d = np.full((4, 3), 0.05, dtype=np.float32)
    o = np.full((4, 3), -7.0, dtype=np.float32)
    assert _compiled.noise_by_cells(counts, edges, d, o, 15, 3.0) is None
    got = __import__("encanalyze._rules.sqnr", fromlist=["x"]).noise_by_cells(
        xp, counts, edges, d, o, 15, 3.0
    )
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _portable_cells(xp, counts, edges, d, o, 15, 3.0))


FORKED_CHILD = """
import multiprocessing, numpy as np
from encanalyze import Histogram, SqnrEncodingAnalyzer

def encode(counts, edges):
    stats = Histogram(counts, edges, edges[:, 0], edges[:, -1])
    return SqnrEncodingAnalyzer((64,), 512).compute_encodings_from_stats(stats, 255, False)

if __name__ == "__main__":
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 40, (64, 512)).astype(np.float64)
    edges = -3 + np.arange(513) * (6 / 512) * np.ones((64, 1))
    want = encode(counts, edges)  # the worker threads start here
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(encode, (counts, edges)).get(timeout=60)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    print("ok")
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_compiled_cells_search_after_fork(tmp_path):
    """A forked child (DataLoader workers, multiprocessing) runs the threaded search itself:
    the parent's worker threads do not survive the fork, and the child must not wait on them.
    (In a fresh interpreter: this one has JAX's threads, which a fork must not copy.)"""
    import subprocess
    import sys

    script = tmp_path / "fork_child.py"
    script.write_text(FORKED_CHILD)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
