import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from encanalyze import MinMaxEncodingAnalyzer, MinMaxRange, StatisticsNotFoundError
from tests import reference

GRIDS = [
    (255, False),
    (255, True),
    (15, False),
    (15, True),
    (65535, False),
    (65535, True),
    (254, True),
    (3, True),
    (3, False),
]

LAYOUTS = [
    # (input shape, encoding shape, block_size)
    ((64,), (1,), None),
    ((64,), (), None),
    ((8, 3, 3, 3), (8, 1, 1, 1), None),
    ((32, 6), (1, 6), None),
    ((32, 6), (6,), None),
    ((6, 32), (6, 1), None),
    ((4, 6, 5), (6, 1), None),
    ((8, 64), (8, 4), (1, 16)),
    ((8, 64), (2, 4), (4, 16)),
    ((2, 8, 64), (8, 4), 16),
]


def snapshot(backend, stats):
    if stats is None:
        return None
    lo, hi = backend.to_numpy(stats.min).copy(), backend.to_numpy(stats.max).copy()
    num_nan = np.zeros(lo.shape) if stats.num_nan is None else backend.to_numpy(stats.num_nan)
    return lo, hi, num_nan.copy()


def assert_same_snapshot(a, b):
    assert (a is None) == (b is None)
    if a is not None:
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def test_spec_example(backend):
    analyzer = MinMaxEncodingAnalyzer((1,))
    analyzer.update_stats(backend.asarray([-2.0, 3.0], "float32"))
    analyzer.update_stats(backend.asarray([9.0, 0.5], "float32"))
    lo, hi = analyzer.compute_encodings(7, True)
    backend.check(lo, (1,), "float32")
    backend.check(hi, (1,), "float32")
    assert backend.to_numpy(lo).tolist() == [-12.0] and backend.to_numpy(hi).tolist() == [9.0]


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_matches_numpy_float64_reference(backend, rng, layout, grid):
    input_shape, shape, block = layout
    n, sym = grid
    batches = [rng.standard_normal(input_shape) * s + m for s, m in ((1.0, 0.5), (3.0, -1.0))]
    analyzer = MinMaxEncodingAnalyzer(shape, block_size=block)
    for b in batches:
        analyzer.update_stats(backend.asarray(b))
    lo, hi = analyzer.compute_encodings(n, sym)
    want_shape = (shape,) if isinstance(shape, int) else shape
    backend.check(lo, want_shape, "float64")
    backend.check(hi, want_shape, "float64")
    both = np.concatenate([b[None] for b in batches])
    ref_lo = reference.reduce_to_shape(both, want_shape, block, np.min)
    ref_hi = reference.reduce_to_shape(both, want_shape, block, np.max)
    want = reference.minmax_encoding(ref_lo, ref_hi, n, sym)
    np.testing.assert_allclose(backend.to_numpy(lo), want[0], rtol=1e-14)
    np.testing.assert_allclose(backend.to_numpy(hi), want[1], rtol=1e-14)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16"])
def test_float_dtypes_are_kept(backend, rng, dtype):
    values = rng.standard_normal((4, 10))
    if dtype == "bfloat16" and not backend.name.startswith("torch"):
        pytest.skip("bfloat16 is a torch dtype")
    if dtype == "float16" and backend.name == "array_api_strict":
        pytest.skip("float16 is not in the array API standard")
    if dtype == "bfloat16":
        import torch

        x = backend.asarray(values, "float32").to(torch.bfloat16)
        want_dtype, to_np = torch.bfloat16, (lambda a: backend.to_numpy(a.float()))
    else:
        x = backend.asarray(values, dtype)
        want_dtype, to_np = dtype, backend.to_numpy
    analyzer = MinMaxEncodingAnalyzer((4, 1))
    stats = analyzer.update_stats(x)
    backend.check(stats.min, (4, 1), want_dtype)
    lo, hi = analyzer.compute_encodings(255, False)
    backend.check(lo, (4, 1), want_dtype)
    backend.check(hi, (4, 1), want_dtype)
    xs = to_np(x).astype(np.float64)
    want = reference.minmax_encoding(
        xs.min(axis=1, keepdims=True), xs.max(axis=1, keepdims=True), 255, False
    )
    np.testing.assert_array_equal(to_np(lo).astype(np.float64), want[0])
    np.testing.assert_array_equal(to_np(hi).astype(np.float64), want[1])


@pytest.mark.parametrize("dtype", ["int8", "int32", "int64", "uint8", "bool"])
def test_integer_and_bool_inputs_use_default_float(backend, dtype):
    if dtype == "bool":
        values = np.array([[True, False, True], [True, True, True]])
    else:
        values = np.array([[-3, 7, 2], [0, 1, 5]])
        values = np.abs(values) if dtype.startswith("uint") else values
    analyzer = MinMaxEncodingAnalyzer((2, 1))
    analyzer.update_stats(backend.asarray(values, dtype))
    lo, hi = analyzer.compute_encodings(255, False)
    info = backend.xp.__array_namespace_info__()
    default = info.default_dtypes(device=backend.device)["real floating"]
    backend.check(lo, (2, 1), default)
    want = reference.minmax_encoding(
        values.min(axis=1, keepdims=True), values.max(axis=1, keepdims=True), 255, False
    )
    np.testing.assert_allclose(backend.to_numpy(lo), want[0], rtol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(hi), want[1], rtol=1e-6)


def test_nan_ignored_counted_and_warned(backend):
    analyzer = MinMaxEncodingAnalyzer((2, 1))
    x = backend.asarray([[1.0, np.nan, -2.0], [np.nan, np.nan, np.nan]], "float32")
    stats = analyzer.update_stats(x)
    assert backend.to_numpy(stats.num_nan).tolist() == [[1], [3]]
    with pytest.raises(StatisticsNotFoundError, match="1 of 2 encoding elements"):
        analyzer.compute_encodings(255, False)
    analyzer.update_stats(backend.asarray([[0.5, 0.5, 0.5], [np.nan, 4.0, 1.0]], "float32"))
    with pytest.warns(RuntimeWarning, match="5 NaN values"):
        lo, hi = analyzer.compute_encodings(255, False)
    np.testing.assert_array_equal(backend.to_numpy(lo), [[-2.0], [0.0]])
    np.testing.assert_array_equal(backend.to_numpy(hi), [[1.0], [4.0]])


def test_infinities_are_values_then_clamped(backend):
    analyzer = MinMaxEncodingAnalyzer((1,))
    analyzer.update_stats(backend.asarray([1.0, np.inf, -3.0], "float32"))
    with pytest.warns(RuntimeWarning, match="clamped"):
        lo, hi = analyzer.compute_encodings(255, False)
    assert backend.to_numpy(lo).tolist() == [-3.0]
    assert backend.to_numpy(hi).tolist() == [float(np.finfo(np.float32).max)]


def test_empty_input_is_a_no_op(backend, rng):
    analyzer = MinMaxEncodingAnalyzer((1, 3))
    analyzer.update_stats(backend.asarray(np.zeros((0, 3)), "float32"))
    with pytest.raises(StatisticsNotFoundError, match="3 of 3"):
        analyzer.compute_encodings(255, False)
    data = rng.standard_normal((5, 3)).astype(np.float32)
    analyzer.update_stats(backend.asarray(data))
    before = snapshot(backend, analyzer.get_stats())
    batch = analyzer.update_stats(backend.asarray(np.zeros((0, 3)), "float32"))
    assert_same_snapshot(snapshot(backend, analyzer.get_stats()), before)
    assert np.all(backend.to_numpy(batch.min) == np.inf)


def test_compute_before_update():
    with pytest.raises(StatisticsNotFoundError, match="update_stats"):
        MinMaxEncodingAnalyzer((1,)).compute_encodings(255, False)
    assert issubclass(StatisticsNotFoundError, RuntimeError)


def test_update_returns_batch_stats_and_reset(backend):
    analyzer = MinMaxEncodingAnalyzer((1,))
    assert analyzer.get_stats() is None
    analyzer.update_stats(backend.asarray([-5.0, 5.0]))
    batch = analyzer.update_stats(backend.asarray([1.0, 2.0]))
    assert isinstance(batch, MinMaxRange)
    assert backend.to_numpy(batch.min).tolist() == [1.0]
    assert backend.to_numpy(analyzer.get_stats().min).tolist() == [-5.0]
    analyzer.reset_stats()
    assert analyzer.get_stats() is None


def test_dynamic_encodings_leave_running_stats(backend):
    analyzer = MinMaxEncodingAnalyzer((1,))
    analyzer.update_stats(backend.asarray([-1.0, 1.0]))
    before = snapshot(backend, analyzer.get_stats())
    lo, hi = analyzer.compute_dynamic_encodings(backend.asarray([-4.0, 2.0]), 255, False)
    assert backend.to_numpy(lo).tolist() == [-4.0] and backend.to_numpy(hi).tolist() == [2.0]
    assert_same_snapshot(snapshot(backend, analyzer.get_stats()), before)


def test_compute_from_hand_built_stats(backend):
    analyzer = MinMaxEncodingAnalyzer((2,))
    stats = MinMaxRange(backend.asarray([-1.0, 0.5]), backend.asarray([2.0, 1.0]))
    lo, hi = analyzer.compute_encodings_from_stats(stats, 255, False)
    assert backend.to_numpy(lo).tolist() == [-1.0, 0.0]
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        analyzer.compute_encodings_from_stats(
            MinMaxRange(backend.asarray([0.0] * 3), backend.asarray([1.0] * 3)), 255, False
        )
    with pytest.raises(TypeError, match="MinMaxRange"):
        analyzer.compute_encodings_from_stats((stats.min, stats.max), 255, False)


def _bad_calls(backend):
    """(description, callable on the analyzer, exception, message pattern)."""
    calls = [
        (
            "shape",
            lambda a: a.update_stats(backend.asarray(np.ones((4, 5)))),
            ValueError,
            r"\(3, 1\).*\(4, 5\)",
        ),
        (
            "complex",
            lambda a: a.update_stats(backend.asarray(np.ones((3, 2)), "complex64")),
            TypeError,
            "complex",
        ),
        ("list", lambda a: a.update_stats([[1.0, 2.0]] * 3), TypeError, "pass an array"),
        ("scalar", lambda a: a.update_stats(3.0), TypeError, "pass an array"),
        ("num_steps", lambda a: a.compute_encodings(0, False), ValueError, "num_steps"),
        ("symmetric", lambda a: a.compute_encodings(1, True), ValueError, "symmetric"),
        (
            "dynamic",
            lambda a: a.compute_dynamic_encodings(backend.asarray(np.ones(3)), 255, False),
            ValueError,
            r"\(3, 1\).*\(3,\)",
        ),
        (
            "namespace",
            lambda a: a.update_stats(_other_namespace_array(backend)),
            TypeError,
            "arrays but the input is",
        ),
    ]
    if backend.name == "numpy":
        calls.append(
            (
                "strings",
                lambda a: a.update_stats(np.array([["a"], ["b"], ["c"]])),
                TypeError,
                "non-numeric",
            )
        )
    return calls


def _other_namespace_array(backend):
    if backend.name == "numpy":
        import array_api_strict

        return array_api_strict.ones((3, 2))
    return np.ones((3, 2))


def test_every_error_leaves_stats_unchanged(backend, rng):
    analyzer = MinMaxEncodingAnalyzer((3, 1))
    analyzer.update_stats(backend.asarray(rng.standard_normal((3, 7)), "float32"))
    before = snapshot(backend, analyzer.get_stats())
    for name, call, exc, pattern in _bad_calls(backend):
        with pytest.raises(exc, match=pattern):
            call(analyzer)
        assert_same_snapshot(snapshot(backend, analyzer.get_stats()), before), name
    lo, _ = analyzer.compute_encodings(255, False)
    np.testing.assert_array_equal(backend.to_numpy(lo), np.minimum(before[0], 0))


def test_seed_example_runs_as_written(backend):
    # The reference documentation's example with encanalyze in place of the reference module.
    if not backend.name.startswith("torch"):
        pytest.skip("the seed example is written with torch")
    import torch

    encoding_analyzer = MinMaxEncodingAnalyzer(shape=(1,))
    encoding_analyzer.update_stats(torch.randn(100))
    lo, hi = encoding_analyzer.compute_encodings(num_steps=math.pow(2, 8), is_symmetric=False)
    assert isinstance(lo, torch.Tensor) and lo.shape == (1,) and lo < 0 < hi
    encoding_analyzer.reset_stats()
    x = torch.randn(100)
    stats = encoding_analyzer.update_stats(x)
    assert stats.min == x.min() and stats.max == x.max()
    lo, hi = encoding_analyzer.compute_encodings(num_steps=math.pow(2, 8), is_symmetric=False)
    assert lo == x.min() and hi == x.max()  # the min-max property (zero already inside)


finite = st.floats(-1e6, 1e6, width=32)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    a=hnp.arrays(np.float32, (5, 3), elements=finite),
    b=hnp.arrays(np.float32, st.tuples(st.integers(0, 6), st.just(3)), elements=finite),
    n=st.sampled_from([3, 15, 254, 255, 65535]),
    sym=st.booleans(),
)
def test_properties(backend, a, b, n, sym):
    one = MinMaxEncodingAnalyzer((1, 3))
    one.update_stats(backend.asarray(a))
    one.update_stats(backend.asarray(b))
    whole = MinMaxEncodingAnalyzer((1, 3))
    whole.update_stats(backend.asarray(np.concatenate([a, b])))
    assert_same_snapshot(snapshot(backend, one.get_stats()), snapshot(backend, whole.get_stats()))
    lo, hi = one.compute_encodings(n, sym)
    backend.check(lo, (1, 3), "float32")
    backend.check(hi, (1, 3), "float32")
    lo, hi = backend.to_numpy(lo), backend.to_numpy(hi)
    assert np.all(lo <= 0) and np.all(hi >= 0) and np.all(lo < hi)
    both = np.concatenate([a, b])
    ulp = 2.0**-22  # symmetric grids are pos * (hi / pos) in float32: within an ulp or two
    # XLA on the CPU flushes subnormals to zero: JAX may see -5e-43 as -0
    tiny = float(np.finfo(np.float32).tiny) if backend.name == "jax" else 0.0
    assert np.all(lo <= both.min(axis=0) * (1 - ulp) + tiny)
    if not (sym and n == 3):  # SPEC: the 2-bit symmetric grid divides hi by 2 steps, not 1
        assert np.all(hi >= both.max(axis=0) * (1 - ulp) - tiny)


def test_warnings_point_at_the_callers_line():
    analyzer = MinMaxEncodingAnalyzer((1,))
    analyzer.update_stats(np.array([1.0, np.nan, np.inf]))
    with pytest.warns(RuntimeWarning) as record:
        analyzer.compute_encodings(255, False)
    assert len(record) == 2 and all(w.filename == __file__ for w in record)
