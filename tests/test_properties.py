"""Properties every registered analyzer keeps on every backend, whatever the data and batching."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import encanalyze as ea

SETTINGS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
METHODS = sorted(ea.METHODS)
finite = st.floats(-1e6, 1e6, width=32)
with_nan = st.one_of(finite, st.just(np.nan))
data = hnp.arrays(np.float32, st.tuples(st.integers(1, 40), st.just(3)), elements=with_nan)
special = st.one_of(finite, st.sampled_from([np.nan, np.inf, -np.inf]))
data_inf = hnp.arrays(np.float32, st.tuples(st.integers(1, 40), st.just(3)), elements=special)
HISTOGRAM_METHODS = [m for m in METHODS if ea.METHODS[m].observer == "histogram"]
# magnitudes from 2**-66 (1.4e-20): every range's bin width is a normal float32 (docs/limits.rst:
# a width in the subnormal range rounds the stored last edge, later batches' edge)
wide = st.one_of(
    st.just(0.0), st.floats(2**-66, 1e6, width=32), st.floats(-1e6, -(2**-66), width=32)
)
wide_inf = st.one_of(wide, st.sampled_from([np.nan, np.inf, -np.inf]))
data_wide_inf = hnp.arrays(np.float32, st.tuples(st.integers(1, 40), st.just(3)), elements=wide_inf)


def _skip_jax(backend):
    if backend.name == "jax":
        pytest.skip("JAX compiles each op: these properties run on the other backends")


def _splits(n: int, cuts: list[int]) -> list[slice]:
    points = sorted({c % (n + 1) for c in cuts} | {0, n})
    return [slice(a, b) for a, b in zip(points, points[1:]) if b > a]


OPTIONS = {"percentile": {"num_bins": 32}, "sqnr": {"num_bins": 32}, "mse": {"num_bins": 32},
           "entropy": {"num_bins": 256}}  # fmt: skip


def _analyzer(method: str):
    return ea.METHODS[method].analyzer((1, 3), **OPTIONS.get(method, {}))


@pytest.mark.parametrize("method", HISTOGRAM_METHODS)
@SETTINGS
@given(x=data_inf, cuts=st.lists(st.integers(0, 40), max_size=4))
def test_counts_are_the_non_nan_values_fed_whatever_the_batching(backend, method, x, cuts):
    _skip_jax(backend)
    analyzer = _analyzer(method)
    for part in _splits(len(x), cuts):
        analyzer.update_stats(backend.asarray(x[part]))
    counts = backend.to_numpy(analyzer.get_stats().histogram).sum(axis=-1).reshape(-1)
    np.testing.assert_array_equal(counts, (~np.isnan(x)).sum(axis=0))


def _finite_extremes(x: np.ndarray) -> np.ndarray:
    """Rows holding each column's finite min and max (NaN where a column has none)."""
    finite_x = np.where(np.isfinite(x), x, np.nan)
    held = np.isfinite(finite_x).any(axis=0)
    safe = np.where(held, finite_x, 0.0)
    lo = np.where(held, np.nanmin(np.where(np.isnan(safe), np.inf, safe), axis=0), np.nan)
    hi = np.where(held, np.nanmax(np.where(np.isnan(safe), -np.inf, safe), axis=0), np.nan)
    return np.stack([lo, hi]).astype(x.dtype)


@pytest.mark.parametrize("method", HISTOGRAM_METHODS)
@SETTINGS
@given(x=data_wide_inf, cuts=st.lists(st.integers(0, 40), max_size=4))
def test_histograms_are_the_same_for_any_split_that_fixes_the_range_first(backend, method, x, cuts):
    """Infinities count in the end bins wherever they come: before a column's first finite
    value (waiting without a range), with it, or after it. Splits whose range is fixed by its
    first finite batch (no re-binning) give the whole batch's histograms exactly."""
    _skip_jax(backend)
    infinities = np.where(np.isfinite(x), np.nan, x)  # the non-finite values, fed first
    extremes = _finite_extremes(x)
    whole, split = _analyzer(method), _analyzer(method)
    whole.update_stats(backend.asarray(np.concatenate([infinities, extremes, x])))
    parts = [infinities[p] for p in _splits(len(x), cuts)]
    tail = [x[p] for p in _splits(len(x), cuts[::-1])]
    parts += [np.concatenate([extremes, tail[0]]), *tail[1:]]
    for part in parts:
        split.update_stats(backend.asarray(part))
    a, b = whole.get_stats(), split.get_stats()
    for field in ("histogram", "bin_edges"):  # min/max: the SPEC's observed range, by batch
        np.testing.assert_array_equal(
            backend.to_numpy(getattr(b, field)), backend.to_numpy(getattr(a, field)), field
        )


@SETTINGS
@given(x=data, cuts=st.lists(st.integers(0, 40), max_size=4))
def test_min_max_is_the_same_for_any_split(backend, x, cuts):
    _skip_jax(backend)
    whole, parts = _analyzer("minmax"), _analyzer("minmax")
    whole.update_stats(backend.asarray(x))
    for part in _splits(len(x), cuts):
        parts.update_stats(backend.asarray(x[part]))
    a, b = whole.get_stats(), parts.get_stats()
    for field in ("min", "max"):
        np.testing.assert_array_equal(
            backend.to_numpy(getattr(b, field)), backend.to_numpy(getattr(a, field))
        )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "bad",
    [
        lambda b: b.asarray(np.ones((4, 5), np.float32)),  # 5 columns for 3 encodings
        lambda b: np.ones((4, 3), np.complex64),
        lambda b: np.ma.masked_array(np.ones((4, 3), np.float32)),
    ],
)
def test_a_failing_update_leaves_the_state_bit_identical(backend, method, bad):
    _skip_jax(backend)
    analyzer = _analyzer(method)
    x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    analyzer.update_stats(backend.asarray(x))
    before = {k: backend.to_numpy(v).copy() for k, v in analyzer.state_dict()["state"].items()}
    with pytest.raises((TypeError, ValueError)):
        analyzer.update_stats(bad(backend))
    after = analyzer.state_dict()["state"]
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(backend.to_numpy(after[k]), before[k], err_msg=k)


@pytest.mark.parametrize("method", METHODS)
@SETTINGS
@given(
    x=hnp.arrays(np.float32, st.tuples(st.integers(1, 40), st.just(3)), elements=finite),
    bits=st.integers(2, 16),
    symmetric=st.booleans(),
)
def test_encodings_are_finite_and_hold_zero_for_any_finite_input(
    backend, method, x, bits, symmetric
):
    _skip_jax(backend)
    analyzer = _analyzer(method)
    analyzer.update_stats(backend.asarray(x))
    lo, hi = (backend.to_numpy(a) for a in analyzer.compute_encodings(2**bits - 1, symmetric))
    assert np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))
    assert np.all(lo <= 0) and np.all(hi >= 0) and np.all(lo < hi)
