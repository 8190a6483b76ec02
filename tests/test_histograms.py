import copy
import math
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import encanalyze as ea
from encanalyze import (
    Histogram,
    HistogramAnalyzer,
    PercentileEncodingAnalyzer,
    StatisticsNotFoundError,
)
from encanalyze import _backends as backends
from encanalyze._backends import _compiled, _portable
from encanalyze._histograms import _rebin, bin_counts, bin_edges, rebin
from encanalyze._rules.percentile import percentile_bins, percentile_range
from encanalyze._xp import wide_dtype
from tests import reference


class Observer(HistogramAnalyzer):
    """A histogram analyzer with a growth limit whose encodings are the histogram's range."""

    @staticmethod
    def rule(xp, state, num_steps, is_symmetric):
        return percentile_range(xp, state.counts, state.edges_of(xp), 100)


SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# -- the batched bincount primitive: native paths against the portable fallback ---------------
@pytest.mark.parametrize("rows, n, bins", [(1, 1000, 7), (5, 300, 16), (64, 50, 2048), (3, 1, 1)])
@pytest.mark.parametrize("weighted", [False, True])
def test_bincount_rows_native_equals_portable(backend, rng, rows, n, bins, weighted):
    xp = backend.xp
    idx_np = rng.integers(0, bins, (rows, n))
    idx = backend.asarray(idx_np, "int64")
    weights = None
    w_np = rng.integers(0, 1000, (rows, n)).astype(np.float64)
    if weighted:
        weights = backend.asarray(w_np, "float64")
    got = backends.bincount_rows(xp, idx, bins, weights)
    want = _portable.bincount_rows(xp, idx, bins, weights)
    backend.check(got, (rows, bins), "float64" if weighted else "int64")
    np.testing.assert_array_equal(backend.to_numpy(got), backend.to_numpy(want))
    expect = np.stack(
        [np.bincount(r, w if weighted else None, minlength=bins) for r, w in zip(idx_np, w_np)]
    )
    np.testing.assert_array_equal(backend.to_numpy(got), expect)


def _values_on_edges(rng, rows, n):
    """Random values plus values exactly on the edges of their row's first-batch histogram."""
    x = rng.standard_normal((rows, n)).astype(np.float32)
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    k = rng.integers(0, 17, (rows, n // 4)).astype(np.float32)
    x[:, : n // 4] = lo + k * ((hi - lo) / np.float32(16))
    x[:, : n // 4] = np.clip(x[:, : n // 4], lo, hi)
    return x


@pytest.mark.parametrize("may_have_nan", [False, True])
def test_bin_counts_follow_the_bin_rule(backend, rng, may_have_nan):
    xp = backend.xp
    x = _values_on_edges(rng, 6, 400)
    x[1, :3] = [np.inf, -np.inf, 1e30]
    if may_have_nan:
        x[2, 5:9] = np.nan
    lo = np.nanmin(np.where(np.isfinite(x), x, np.nan), axis=1)
    hi = np.nanmax(np.where(np.isfinite(x), x, np.nan), axis=1)
    counts = bin_counts(
        xp, backend.asarray(x), backend.asarray(lo), backend.asarray(hi), 16, may_have_nan
    )
    backend.check(counts, (6, 16), wide_dtype(backend.xp, backend.device))  # exact counts
    for r in range(6):
        v = x[r][~np.isnan(x[r])]
        t = np.clip(np.floor((v - lo[r]) / (hi[r] - lo[r]) * np.float32(16)), 0, 15).astype(int)
        np.testing.assert_array_equal(backend.to_numpy(counts)[r], np.bincount(t, minlength=16))


def test_bin_edges(backend):
    edges = bin_edges(
        backend.xp,
        backend.asarray([-1.0, 2.0], "float32"),
        backend.asarray([1.0, 6.0], "float32"),
        4,
    )
    backend.check(edges, (2, 5), "float32")
    np.testing.assert_array_equal(backend.to_numpy(edges), [[-1, -0.5, 0, 0.5, 1], [2, 3, 4, 5, 6]])


def test_returned_edges_are_built_when_read_and_equal_the_table(backend, rng):
    """update_stats returns statistics whose edges are built on first read, as the table was."""
    x = (rng.standard_normal((6, 300)) * [[1], [2], [0], [5], [1], [3]]).astype("float32")
    analyzer = PercentileEncodingAnalyzer((6, 1), num_bins=32)
    batch = analyzer.update_stats(backend.asarray(x))
    assert "bin_edges" not in batch.__dict__  # nothing built until read
    lo, hi = batch.min, batch.max
    wd = backend.xp.float32
    want = bin_edges(backend.xp, backend.asarray(x.min(1), "float32"),
                     backend.asarray(x.max(1), "float32"), 32)  # fmt: skip
    edges = batch.bin_edges
    backend.check(edges, (6, 1, 33), "float32")
    constant = backend.to_numpy(lo)[2, 0] == backend.to_numpy(hi)[2, 0] == 0
    assert constant  # the constant row's edges are [-0.5, 0.5]; the others the rows' range
    got, want = backend.to_numpy(edges)[:, 0], backend.to_numpy(want)
    np.testing.assert_array_equal(np.delete(got, 2, 0), np.delete(want, 2, 0))
    np.testing.assert_array_equal(got[2, [0, -1]], [-0.5, 0.5])
    assert batch.bin_edges is edges and edges.dtype == wd  # built once
    again = analyzer.get_stats()
    np.testing.assert_array_equal(backend.to_numpy(again.bin_edges), backend.to_numpy(edges))
    for twin in (copy.deepcopy(batch), pickle.loads(pickle.dumps(analyzer.get_stats()))):
        np.testing.assert_array_equal(backend.to_numpy(twin.bin_edges), backend.to_numpy(edges))
    with pytest.raises(AttributeError, match="no attribute 'edges'"):
        batch.edges  # noqa: B018


# -- the running histogram ------------------------------------------------------------------
def _run(backend, shape, batches, num_bins, growth_limit=None):
    analyzer = Observer(shape, num_bins=num_bins, growth_limit=growth_limit)
    for b in batches:
        analyzer.update_stats(backend.asarray(b))
    return analyzer


@pytest.mark.parametrize("growth_limit", [None, 1.0, 3.0])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_running_histograms_match_reference(backend, rng, growth_limit, dtype):
    scales = [(1.0, 0.0), (3.0, 1.0), (0.5, -2.0), (6.0, 0.0)]
    batches = [(rng.standard_normal((5, 200)) * s + m).astype(dtype) for s, m in scales]
    batches[2][3] = 7.25  # a constant batch in one row
    analyzer = _run(backend, (5, 1), batches, 64, growth_limit)
    stats = analyzer.get_stats()
    backend.check(stats.histogram, (5, 1, 64), wide_dtype(backend.xp, backend.device))
    backend.check(stats.min, (5, 1), dtype)
    g = math.inf if growth_limit is None else growth_limit
    for r in range(5):
        counts, lo, hi = reference.histogram_rows([b[r] for b in batches], 64, g)
        np.testing.assert_array_equal(backend.to_numpy(stats.histogram)[r, 0], counts)
        assert backend.to_numpy(stats.min)[r, 0] == lo
        assert backend.to_numpy(stats.max)[r, 0] == hi
        assert counts.sum() == 800


def test_counts_conserved_and_growth_limited(backend, rng):
    first = rng.uniform(-1, 1, (2, 100)).astype(np.float32)
    second = np.concatenate([first * 10, first], axis=1)
    analyzer = _run(backend, (2, 1), [first, second], 32, growth_limit=1.0)
    stats = analyzer.get_stats()
    lo0, hi0 = first.min(axis=1), first.max(axis=1)
    half = (hi0 - lo0) / 2
    np.testing.assert_allclose(backend.to_numpy(stats.min)[:, 0], lo0 - half, rtol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(stats.max)[:, 0], hi0 + half, rtol=1e-6)
    np.testing.assert_array_equal(backend.to_numpy(stats.histogram).sum(axis=-1)[:, 0], 300)
    with pytest.raises(ValueError, match="growth limit"):
        Observer((1,), growth_limit=0.5)


@pytest.mark.parametrize("steps", [2, 3])
def test_channels_on_the_last_axis_stay_separate(backend, rng, steps):
    # the reference mixes channels here from the second update on (SPEC defect 1)
    batches = [
        rng.standard_normal((16, 5)).astype(np.float32) * (1 + np.arange(5)) + i
        for i in range(steps + 1)
    ]
    last = _run(backend, (1, 5), batches, 32).get_stats()
    lead = _run(backend, (5, 1), [b.T for b in batches], 32).get_stats()
    np.testing.assert_array_equal(
        backend.to_numpy(last.histogram)[0], backend.to_numpy(lead.histogram)[:, 0]
    )
    np.testing.assert_array_equal(
        backend.to_numpy(last.bin_edges)[0], backend.to_numpy(lead.bin_edges)[:, 0]
    )
    for c in range(5):
        counts, lo, _ = reference.histogram_rows([b[:, c] for b in batches], 32)
        np.testing.assert_array_equal(backend.to_numpy(last.histogram)[0, c], counts)


def test_block_wise_histograms(backend, rng):
    x = rng.standard_normal((4, 64)).astype(np.float32)
    y = rng.standard_normal((4, 64)).astype(np.float32) * 2
    analyzer = PercentileEncodingAnalyzer((4, 4), num_bins=16, block_size=(1, 16))
    analyzer.update_stats(backend.asarray(x))
    analyzer.update_stats(backend.asarray(y))
    stats = analyzer.get_stats()
    backend.check(stats.histogram, (4, 4, 16), wide_dtype(backend.xp, backend.device))
    for i in range(4):
        for j in range(4):
            counts, lo, hi = reference.histogram_rows(
                [x[i, j * 16 : (j + 1) * 16], y[i, j * 16 : (j + 1) * 16]], 16
            )
            np.testing.assert_array_equal(backend.to_numpy(stats.histogram)[i, j], counts)


def test_non_finite_values(backend):
    analyzer = Observer((3, 1), num_bins=4)
    x = np.array(
        [
            [0.0, 1.0, np.inf, np.nan],
            [np.inf, -np.inf, np.nan, np.inf],
            [np.nan, np.nan, np.nan, np.nan],
        ],
        np.float32,
    )
    stats = analyzer.update_stats(backend.asarray(x))
    counts = backend.to_numpy(stats.histogram)[:, 0]
    # inf counts in the end bin but never sets the range; a row without a finite value keeps
    # its infinities in its end bins (no range yet); NaN counts nowhere
    np.testing.assert_array_equal(counts, [[1, 0, 0, 2], [1, 0, 0, 2], [0, 0, 0, 0]])
    assert backend.to_numpy(stats.max)[0, 0] == 1.0
    assert backend.to_numpy(stats.num_nan)[:, 0].tolist() == [1, 1, 4]
    with pytest.raises(StatisticsNotFoundError, match="2 of 3"):
        PercentileEncodingAnalyzer((3, 1), num_bins=4).compute_encodings_from_stats(
            stats, 255, False
        )
    analyzer.update_stats(backend.asarray(np.zeros((3, 0), np.float32)))  # empty: no-op
    np.testing.assert_array_equal(backend.to_numpy(analyzer.get_stats().histogram)[:, 0], counts)
    analyzer.update_stats(backend.asarray(np.array([[2.0], [5.0], [-1.0]], np.float32)))
    stats = analyzer.get_stats()
    # the first finite value gives row 1 a range; its infinities stay in the end bins
    np.testing.assert_array_equal(
        backend.to_numpy(stats.histogram)[:, 0], [[1, 2, 0, 1], [1, 0, 1, 2], [0, 0, 1, 0]]
    )
    # a row's first finite value gives it [v - 0.5, v + 0.5] edges; min/max stay observed
    assert backend.to_numpy(stats.min)[1:, 0].tolist() == [5.0, -1.0]
    assert backend.to_numpy(stats.max)[1:, 0].tolist() == [5.0, -1.0]
    edges = backend.to_numpy(stats.bin_edges)[1:, 0]
    assert edges[:, [0, -1]].tolist() == [[4.5, 5.5], [-1.5, -0.5]]


finite32 = st.floats(-1e4, 1e4, width=32)
special32 = st.one_of(finite32, st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 7.0]))
GROWTH = st.sampled_from([None, 1.0, 2.5])


def _batches(max_columns: int, max_size: int):
    """Lists of (3, n) float32 batches: finite values, NaN, infinities, repeated values."""
    shape = st.tuples(st.just(3), st.integers(0, max_columns))
    return st.lists(
        hnp.arrays(np.float32, shape, elements=special32), min_size=1, max_size=max_size
    )


@SETTINGS
@given(batches=_batches(40, 4), growth=GROWTH)
def test_merges_conserve_counts(backend, batches, growth):
    analyzer = Observer((3, 1), num_bins=8, growth_limit=growth)
    for b in batches:
        analyzer.update_stats(backend.asarray(b))
    fed = sum((~np.isnan(b)).sum(axis=1) for b in batches)  # infinities included
    counts = backend.to_numpy(analyzer.get_stats().histogram)
    np.testing.assert_array_equal(counts.sum(axis=-1)[:, 0], fed)
    assert np.all(counts >= 0) and np.all(counts == np.round(counts))


@SETTINGS
@given(batches=_batches(30, 5), growth=GROWTH, absolute=st.booleans())
def test_observe_keeps_the_same_statistics_as_update_stats(backend, batches, growth, absolute):
    """observe() skips the batch's own histogram (and, on a host, takes the steady-state path
    for batches inside the range): the running state is bit-identical to update_stats'."""
    full = Observer((3, 1), num_bins=8, growth_limit=growth)
    lean = Observer((3, 1), num_bins=8, growth_limit=growth)
    full.observer.absolute = lean.observer.absolute = absolute
    for b in [batches[0], *batches]:  # the first batch twice: later batches inside its range
        full.update_stats(backend.asarray(b))
        lean.observe(backend.asarray(b))
    want, got = full.state_dict()["state"], lean.state_dict()["state"]
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_array_equal(backend.to_numpy(got[key]), backend.to_numpy(want[key]))


# -- percentile -----------------------------------------------------------------------------
SEED_COUNTS = [1, 1, 8, 13, 19, 27, 16, 10, 3, 2]
SEED_EDGES = [
    -2.5710,
    -2.0989,
    -1.6269,
    -1.1548,
    -0.6827,
    -0.2106,
    0.2614,
    0.7335,
    1.2056,
    1.6776,
    2.1497,
]


def test_seed_example(backend):
    analyzer = PercentileEncodingAnalyzer(shape=(1,), num_bins=10, percentile=80)
    edges = backend.asarray([SEED_EDGES], "float32")
    stats = Histogram(backend.asarray([SEED_COUNTS], "float32"), edges, edges[:, 0], edges[:, -1])
    lo, hi = analyzer.compute_encodings_from_stats(stats, num_steps=256, is_symmetric=False)
    backend.check(lo, (1,), "float32")
    # targets 20 and 80 hit bins 3 and 6: their lower edges, exactly
    assert backend.to_numpy(lo).tolist() == [np.float32(-1.1548)]
    assert backend.to_numpy(hi).tolist() == [np.float32(0.2614)]


@pytest.mark.parametrize("p", [50, 80, 99.9, 100])
@pytest.mark.parametrize("n, sym", [(255, False), (255, True), (15, False), (65535, True)])
def test_percentile_matches_reference(backend, rng, p, n, sym):
    counts = rng.integers(0, 50, (6, 32)).astype(np.float32)
    counts[0, :] = 0
    counts[0, 5] = 7  # a single populated bin
    lo = rng.uniform(-5, 1, 6).astype(np.float32)
    edges = lo[:, None] + np.arange(33, dtype=np.float32) * rng.uniform(0.01, 1, (6, 1)).astype(
        np.float32
    )
    stats = Histogram(
        backend.asarray(counts),
        backend.asarray(edges),
        backend.asarray(edges[:, 0]),
        backend.asarray(edges[:, -1]),
    )
    got_lo, got_hi = PercentileEncodingAnalyzer(6, 32, p).compute_encodings_from_stats(
        stats, n, sym
    )
    for r in range(6):
        want = reference.minmax_encoding(
            *reference.percentile_range(counts[r], edges[r], p), n, sym
        )
        np.testing.assert_allclose(backend.to_numpy(got_lo)[r], want[0], rtol=2e-7)
        np.testing.assert_allclose(backend.to_numpy(got_hi)[r], want[1], rtol=2e-7)


def test_percentile_end_to_end_and_set_percentile(backend, rng):
    x = rng.standard_normal((2, 10000)).astype(np.float32)
    analyzer = PercentileEncodingAnalyzer((2, 1), num_bins=512, percentile=99)
    analyzer.update_stats(backend.asarray(x[:, :5000]))
    analyzer.update_stats(backend.asarray(x[:, 5000:] * 1.5))
    lo99, hi99 = (backend.to_numpy(a) for a in analyzer.compute_encodings(255, False))
    analyzer.set_percentile(100)
    lo100, hi100 = (backend.to_numpy(a) for a in analyzer.compute_encodings(255, False))
    assert np.all(lo100 < lo99) and np.all(hi99 < hi100)
    both = np.concatenate([x[:, :5000], x[:, 5000:] * 1.5], axis=1)
    # the 1% / 99% cut lands within a bin or two of the true quantiles
    width = (both.max(axis=1) - both.min(axis=1)) / 512
    assert np.all(np.abs(hi99[:, 0] - np.quantile(both, 0.99, axis=1)) < 2 * width)
    assert np.all(np.abs(lo99[:, 0] - np.quantile(both, 0.01, axis=1)) < 2 * width)


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_num_bins(bad):
    with pytest.raises(ValueError, match="num_bins"):
        PercentileEncodingAnalyzer((1,), num_bins=bad)
    with pytest.raises(TypeError, match="num_bins"):
        PercentileEncodingAnalyzer((1,), num_bins=2.5)


@pytest.mark.parametrize("bad", [49.9, 100.1, math.nan, -1])
def test_bad_percentile(bad):
    with pytest.raises(ValueError, match="percentile"):
        PercentileEncodingAnalyzer((1,), percentile=bad)
    analyzer = PercentileEncodingAnalyzer((1,), percentile=90)
    with pytest.raises(ValueError, match="percentile"):
        analyzer.set_percentile(bad)
    assert analyzer.percentile == 90


def test_errors_leave_histograms_unchanged(backend, rng):
    analyzer = PercentileEncodingAnalyzer((3, 1), num_bins=16, percentile=95)
    analyzer.update_stats(backend.asarray(rng.standard_normal((3, 50)), "float32"))
    before = [
        backend.to_numpy(a).copy()
        for a in (analyzer.get_stats().histogram, analyzer.get_stats().bin_edges)
    ]
    wrong = Histogram(
        backend.asarray(np.ones((3, 1, 8)), "float32"),
        backend.asarray(np.ones((3, 1, 9)), "float32"),
        backend.asarray(np.zeros((3, 1)), "float32"),
        backend.asarray(np.ones((3, 1)), "float32"),
    )
    calls = [
        (
            lambda: analyzer.update_stats(backend.asarray(np.ones((4, 5)))),
            ValueError,
            r"\(3, 1\).*\(4, 5\)",
        ),
        (
            lambda: analyzer.update_stats(backend.asarray(np.ones((3, 2)), "complex64")),
            TypeError,
            "complex",
        ),
        (lambda: analyzer.update_stats([1.0, 2.0, 3.0]), TypeError, "pass an array"),
        (
            lambda: analyzer.compute_encodings_from_stats(wrong, 255, False),
            ValueError,
            r"\(3, 1, 8\).*\(3, 1, 16\)",
        ),
        (lambda: analyzer.compute_encodings(2.5, False), ValueError, "num_steps"),
    ]
    for call, exc, pattern in calls:
        with pytest.raises(exc, match=pattern):
            call()
        after = (analyzer.get_stats().histogram, analyzer.get_stats().bin_edges)
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, backend.to_numpy(b))


@pytest.mark.parametrize("dtype", ["float16", "float64", "int32"])
def test_result_dtypes(backend, rng, dtype):
    if dtype == "float16" and backend.name == "array_api_strict":
        pytest.skip("float16 is not in the array API standard")
    x = backend.asarray(rng.standard_normal((2, 64)) * 20, dtype)
    analyzer = PercentileEncodingAnalyzer((2, 1), num_bins=32, percentile=99)
    analyzer.update_stats(x)
    lo, hi = analyzer.compute_encodings(255, True)
    info = backend.xp.__array_namespace_info__()
    want = (
        info.default_dtypes(device=backend.device)["real floating"] if dtype == "int32" else dtype
    )
    backend.check(lo, (2, 1), want)
    assert np.all(backend.to_numpy(lo) < 0) and np.all(backend.to_numpy(hi) > 0)


@pytest.mark.parametrize("may_have_nan", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_histogram_rows_native_equals_portable(backend, rng, may_have_nan, dtype):
    xp = backend.xp
    x = _values_on_edges(rng, 7, 300).astype(dtype)
    x[0, :4] = [np.inf, -np.inf, 1e30, -1e30]
    if may_have_nan:
        x[3, ::7] = np.nan
    lo = np.nanmin(np.where(np.isfinite(x), x, np.nan), axis=1)
    hi = np.nanmax(np.where(np.isfinite(x), x, np.nan), axis=1)
    args = (backend.asarray(x), backend.asarray(lo), backend.asarray(hi), 16, may_have_nan)
    got = backends.histogram_rows(xp, *args)
    want = _portable.histogram_rows(xp, *args)
    backend.check(got, (7, 16), wide_dtype(xp, backend.device))
    np.testing.assert_array_equal(backend.to_numpy(got), backend.to_numpy(want))
    finite_or_inf = ~np.isnan(x)
    np.testing.assert_array_equal(backend.to_numpy(got).sum(axis=1), finite_or_inf.sum(axis=1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", [3, 40])
def test_rebin_native_equals_portable(backend, rng, dtype, rows):
    """The host re-binning (in place, by blocks, one bincount) gives the portable counts."""
    num_bins = 512
    counts = rng.integers(0, 50, (rows, num_bins)) * (rng.random((rows, num_bins)) < 0.6)
    counts = counts.astype(np.float64)
    counts[0, 7] = 2.0**24 + 3  # past float32's integers: the wide split
    lo = rng.uniform(-3, 0, rows).astype(dtype)
    hi = (lo + rng.uniform(1e-3, 4, rows)).astype(dtype)
    new_lo = (lo - rng.uniform(0, 2, rows) * (rng.random(rows) < 0.7)).astype(dtype)
    new_hi = (hi + rng.uniform(0, 3, rows)).astype(dtype)
    new_lo[1], new_hi[1] = lo[1], hi[1]  # unchanged
    lo[2], hi[2] = np.inf, -np.inf  # no range
    if rows > 3:  # a row whose bins are narrower than the smallest subnormal: width 0
        lo[3], hi[3] = 0.0, np.finfo(dtype).smallest_subnormal
        new_lo[3], new_hi[3] = -0.5, 2.0
        lo[4], hi[4], new_lo[4], new_hi[4] = -1.0, 1.0, -1e30, 1e30  # every old bin in one
        lo[5], hi[5], new_lo[5], new_hi[5] = 1.0, 1.0 + 2e-6, 1.0, 1.0 + 4e-6  # near one ulp
    wide = wide_dtype(backend.xp, backend.device)
    args = [backend.asarray(counts, "float64" if wide == backend.xp.float64 else "float32")]
    args += [backend.asarray(a) for a in (lo, hi, new_lo, new_hi)]
    want = _rebin(backend.xp, *args)
    for whole in (False, True):
        got = rebin(backend.xp, *args, whole)
        backend.check(got, (rows, num_bins), wide)
        np.testing.assert_array_equal(backend.to_numpy(got), backend.to_numpy(want))
    keep = np.isfinite(lo)
    np.testing.assert_array_equal(backend.to_numpy(got).sum(axis=1)[keep], counts.sum(1)[keep])


def test_percentile_with_counts_past_float32_integers(backend, rng):
    counts = rng.integers(0, 50, (3, 32)).astype(np.float64)
    counts[:, 5] = 2.0**25 + 1  # totals past 2**24: running sums need the wide dtype
    edges = np.linspace(-4, 4, 33)[None].repeat(3, axis=0).astype(np.float32)
    stats = Histogram(
        backend.asarray(counts, "float32"),
        backend.asarray(edges),
        backend.asarray(edges[:, 0]),
        backend.asarray(edges[:, -1]),
    )
    lo, hi = PercentileEncodingAnalyzer(3, 32, 99.9999).compute_encodings_from_stats(
        stats, 255, False
    )
    for r in range(3):
        want = reference.minmax_encoding(
            *reference.percentile_range(counts[r].astype(np.float32), edges[r], 99.9999), 255, False
        )
        np.testing.assert_allclose(backend.to_numpy(lo)[r], want[0], rtol=2e-7)
        np.testing.assert_allclose(backend.to_numpy(hi)[r], want[1], rtol=2e-7)


@pytest.mark.parametrize("num_bins", [128, 2048])
@pytest.mark.parametrize("p", [50, 99, 99.9, 99.99])
def test_percentile_bins_by_blocks_equal_every_running_sum(backend, rng, num_bins, p):
    """Whole counts: the blocks' running sums find the bins that every bin's running sum finds."""
    counts = np.zeros((9, num_bins))
    counts[0] = rng.integers(0, 3, num_bins)  # dense
    counts[1, [0, num_bins - 1]] = 5  # the ends only
    counts[2, 64:128] = 1  # one whole block
    counts[3, rng.integers(0, num_bins, 40)] = 1  # sparse
    counts[4, 63] = counts[4, 64] = 10**6  # a block boundary
    counts[5] = rng.integers(0, 100, num_bins) * (rng.random(num_bins) < 0.1)
    counts[6, :] = 1  # thresholds hit exactly (p = 50: half the bins)
    counts[7, num_bins // 2] = 1  # one value
    counts[8] = rng.integers(0, 2**20, num_bins)  # totals past 2**24: the wide path
    c = backend.asarray(counts)
    xp = backend.xp
    got = percentile_bins(xp, c, p, whole=True)
    want = percentile_bins(xp, c, p, whole=False)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(backend.to_numpy(g), backend.to_numpy(w))


def test_loaded_counts_must_be_whole(backend):
    a = PercentileEncodingAnalyzer((2, 1), num_bins=8)
    a.update_stats(backend.asarray([[1.0, 2.0, 3.0], [0.0, 5.0, 6.0]], "float32"))
    sd = a.state_dict()
    for bad in (0.5, -1.0):
        counts = backend.to_numpy(sd["state"]["counts"]).copy()
        counts[0, 3] = bad
        broken = dict(sd, state=dict(sd["state"], counts=backend.asarray(counts)))
        b = PercentileEncodingAnalyzer((2, 1), num_bins=8)
        with pytest.raises(ValueError, match="whole numbers"):
            b.load_state_dict(broken)
        assert b.get_stats() is None


@pytest.mark.parametrize("method", ["percentile", "sqnr"])
def test_counts_past_2_24_in_one_bin_lose_no_value(method):
    """16,779,217 zeros, then 1,000 single zeros and a value that grows the range: all kept."""
    analyzer = ea.METHODS[method].analyzer((1,))
    analyzer.update_stats(np.zeros(16_779_217, np.float32))
    for _ in range(1000):
        analyzer.update_stats(np.zeros(1, np.float32))
    assert float(analyzer.get_stats().histogram.sum()) == 16_780_217
    analyzer.update_stats(np.array([7.0], np.float32))  # re-binned onto a wider range
    assert float(analyzer.get_stats().histogram.sum()) == 16_780_218


@pytest.mark.skipif(_compiled.LIBRARY is None, reason="the compiled kernels were not built")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape",
    [(1, 300_000), (3, 70_000), (5, 3000), (64, 100), (7, 1)],
    ids=["long", "few", "chunks", "many", "one"],
)
def test_compiled_count_equals_portable(rng, dtype, shape):
    """The C count (threads over rows, or over the values of a few long rows; values binned by
    chunks) gives the portable counts: NaN left out, infinities and values past the range in the
    end bins, rows read through a stride."""
    import array_api_compat.numpy as xp

    wide = rng.standard_normal((shape[0], 2 * shape[1])).astype(dtype)
    x = wide[:, ::2]  # strided
    x[0, 0] = np.nan
    x[:, 3::509] = np.nan  # in several chunks of the vectorised binning, and in every row
    x[-1, -1] = np.inf
    if shape[1] > 1:
        x[0, 1] = -np.inf
    lo = (np.nanmin(np.where(np.isinf(x), 0, x), axis=1) * 0.9).astype(dtype)  # values outside
    hi = (np.nanmax(np.where(np.isinf(x), 0, x), axis=1) * 0.9).astype(dtype)
    hi = np.maximum(hi, lo + 1).astype(dtype)
    want = _portable.histogram_rows(xp, x, lo, hi, 512, True)
    got = _compiled.count_rows(x, lo, hi, 512)
    assert got.dtype == np.float64 and got.shape == (shape[0], 512)
    np.testing.assert_array_equal(got, want)
    assert got.sum() == np.isfinite(x).sum() + np.isinf(x).sum()


@pytest.mark.skipif(_compiled.LIBRARY is None, reason="the compiled kernels were not built")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape",
    [(1, 300_000), (3, 70_000), (5, 3000), (64, 100)],
    ids=["long", "few", "chunks", "many"],
)
@pytest.mark.parametrize("absolute", [False, True], ids=["x", "abs"])
def test_compiled_count_checked_equals_portable(rng, dtype, shape, absolute):
    """The steady state's one pass: the counts added onto a table, and per row its NaN values,
    its values that are not finite and its finite values outside the range, as the portable
    count and masks give them (threads over rows or over a few long rows' values); for
    histograms of ``|x|``, those of ``|x|`` and the negative values."""
    import array_api_compat.numpy as xp

    x = rng.standard_normal(shape).astype(dtype)
    x[:, 3::509] = np.nan
    x[0, 5], x[-1, 7] = np.inf, -np.inf
    lo = np.full(shape[0], -2.5, dtype)
    hi = np.full(shape[0], 2.5, dtype)
    x[:, 11::257] = -0.0  # not negative
    if shape[0] > 2:
        x[1, :] = np.where(np.isnan(x[1]), np.nan, -np.inf)  # no finite value
        last = np.abs(x[-1]) if absolute else x[-1]
        lo[-1] = np.nanmin(np.where(np.isfinite(last), last, np.nan))  # inside its range
        hi[-1] = np.nanmax(np.where(np.isfinite(last), last, np.nan))
    onto = rng.integers(0, 9, (shape[0], 512)).astype(np.float64)
    counts, nans, odd, outside, *negative = _compiled.count_checked(x, lo, hi, onto, absolute)
    if absolute:
        np.testing.assert_array_equal(negative[0], (x < 0).sum(axis=1))
        x = np.abs(x)
    want = _portable.histogram_rows(xp, x, lo, hi, 512, True) + onto
    np.testing.assert_array_equal(counts, want)
    finite = np.isfinite(x)
    np.testing.assert_array_equal(nans, np.isnan(x).sum(axis=1))
    np.testing.assert_array_equal(odd, (~finite).sum(axis=1))
    beyond = finite & ((x < lo[:, None]) | (x > hi[:, None]))
    np.testing.assert_array_equal(outside, beyond.sum(axis=1))
    assert (shape[0] < 3 or outside[-1] == 0) and (shape[1] < 1000 or outside[0] > 0)
    assert onto.max() < 9  # the table it added onto is left as it was


@pytest.mark.skipif(_compiled.LIBRARY is None, reason="the compiled kernels were not built")
def test_compiled_kernels_refuse_other_dtypes(rng):
    """Integer rows and mixed dtypes are not the C kernels': None (the caller's ufunc path)."""
    x = rng.integers(0, 9, (4, 50))
    assert _compiled.count_rows(x, x.min(1), x.max(1), 16) is None
    f = x.astype(np.float32)
    assert _compiled.count_rows(f, f.min(1).astype(np.float64), f.max(1), 16) is None
    counts = np.ones((4, 16))
    lo, hi = np.zeros(4, np.float32), np.ones(4, np.float32)
    assert _compiled.rebin_rows(counts.astype(np.float32), lo, hi, lo - 1, hi) is None
    assert _compiled.rebin_rows(counts, lo, hi, (lo - 1).astype(np.float64), hi) is None
