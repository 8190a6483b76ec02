import math

import numpy as np
import pytest

from encanalyze._encoding import minmax_encoding, to_scale_offset, validate_num_steps
from tests import reference


@pytest.mark.parametrize("value, want", [(255, 255), (math.pow(2, 8), 256), (np.int32(15), 15)])
def test_num_steps_accepts_integral(value, want):
    assert validate_num_steps(value) == want


@pytest.mark.parametrize("value", [0, -3, 2.5, math.inf, math.nan])
def test_num_steps_rejects_bad_values(value):
    with pytest.raises(ValueError, match="num_steps"):
        validate_num_steps(value)


@pytest.mark.parametrize("value", ["8", None, True, 1 + 2j])
def test_num_steps_rejects_non_numbers(value):
    with pytest.raises(TypeError, match="num_steps"):
        validate_num_steps(value)


def test_symmetric_needs_two_steps():
    with pytest.raises(ValueError, match="symmetric"):
        validate_num_steps(1, True)
    assert validate_num_steps(1, False) == 1


def test_spec_example_symmetric(backend):
    xp = backend.xp
    lo, hi = minmax_encoding(
        xp, backend.asarray([-2.0], "float32"), backend.asarray([9.0], "float32"), 7, True
    )
    backend.check(lo, (1,), "float32")
    assert backend.to_numpy(lo).tolist() == [-12.0]
    assert backend.to_numpy(hi).tolist() == [9.0]


@pytest.mark.parametrize("n", [255, 15, 65535, 254, 3, 256])
@pytest.mark.parametrize("symmetric", [False, True])
def test_rules_match_reference(backend, rng, n, symmetric):
    lo = np.concatenate([rng.standard_normal(20) * 3, [0.0, 1.0, -1e-9, 0.0, 2.0, -1e-30]])
    hi = np.concatenate([lo[:20] + rng.random(20) * 4, [0.0, 1.0, 1e-9, 1e-12, 5.0, 1e-30]])
    got = minmax_encoding(backend.xp, backend.asarray(lo), backend.asarray(hi), n, symmetric)
    want = reference.minmax_encoding(lo, hi, n, symmetric)
    for g, w in zip(got, want):
        backend.check(g, lo.shape, "float64")
        np.testing.assert_allclose(backend.to_numpy(g), w, rtol=1e-12, atol=0)
        # zero inside and a non-empty range
    assert np.all(backend.to_numpy(got[0]) <= 0) and np.all(backend.to_numpy(got[1]) >= 0)
    assert np.all(backend.to_numpy(got[0]) < backend.to_numpy(got[1]))


def test_symmetric_grids():
    import array_api_compat.numpy as xp

    one = np.array([1.0])
    lo, hi = minmax_encoding(xp, -one, one, 255, True)
    assert (lo[0], hi[0]) == (-128 / 127, 1.0)  # 128 negative and 127 positive steps
    lo, hi = minmax_encoding(xp, -one, one, 254, True)
    assert (lo[0], hi[0]) == (-1.0, 1.0)  # strict: +-127 steps
    lo, hi = minmax_encoding(xp, -one, one, 3, True)
    assert (lo[0], hi[0]) == (-1.0, 0.5)  # 2-bit: delta = max(hi / 2, -lo / 2)


def test_degenerate_range_is_widened():
    import array_api_compat.numpy as xp

    zero = np.zeros(1, np.float32)
    lo, hi = minmax_encoding(xp, zero, zero, 255, False)
    assert lo[0] == 0 and hi[0] == np.float32(255 * reference.EPS32)
    lo, hi = minmax_encoding(xp, zero, zero, 255, True)
    assert lo[0] == np.float32(-128 * reference.EPS32) and hi[0] == np.float32(
        127 * reference.EPS32
    )


def test_infinities_clamped_with_warning(backend):
    lo = backend.asarray([-np.inf, -1.0], "float32")
    hi = backend.asarray([1.0, np.inf], "float32")
    with pytest.warns(RuntimeWarning, match="clamped"):
        got_lo, got_hi = minmax_encoding(backend.xp, lo, hi, 255, False)
    big = np.finfo(np.float32).max
    np.testing.assert_array_equal(backend.to_numpy(got_lo), [-big, -1.0])
    np.testing.assert_array_equal(backend.to_numpy(got_hi), [1.0, big])


def test_float16_overflow_is_clamped():
    import array_api_compat.numpy as xp

    big = np.finfo(np.float16).max
    with pytest.warns(RuntimeWarning, match="clamped"):
        lo, hi = minmax_encoding(
            xp, np.array([-big], np.float16), np.array([big], np.float16), 255, True
        )
    assert lo.dtype == np.float16 and lo[0] == -big and np.isfinite(hi[0])


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_scale_offset(backend, bits):
    n = 2**bits - 1
    lo = backend.asarray([-1.1, -0.5, 0.0], "float32")
    hi = backend.asarray([1.0, 3.0, 2.0], "float32")
    scale, offset = to_scale_offset(lo, hi, n)
    backend.check(scale, (3,), "float32")
    backend.check(offset, (3,), "int64")
    want_scale = (np.array([1.0, 3.0, 2.0]) - [-1.1, -0.5, 0.0]) / n
    np.testing.assert_allclose(backend.to_numpy(scale), want_scale, rtol=1e-6)
    np.testing.assert_array_equal(
        backend.to_numpy(offset), np.round(np.array([-1.1, -0.5, 0.0]) / want_scale)
    )
    sym_lo, sym_hi = minmax_encoding(backend.xp, lo, hi, n, True)
    _, sym_offset = to_scale_offset(sym_lo, sym_hi, n, True)
    assert backend.to_numpy(sym_offset).tolist() == [-(2 ** (bits - 1))] * 3
