"""Float element formats: value sets and saturating round-to-nearest-even, against torch's
float8 casts and torchao's FP6 / FP4 conversions, on every backend."""

import numpy as np
import pytest

from encanalyze import formats
from encanalyze.formats import E2M1, E2M3, E3M2, E4M3FN, E5M2, quantize, quantize_scaled
from tests.conftest import make_backend

FP_ALL = [E4M3FN, E5M2, E3M2, E2M3, E2M1]


def _hard_values(rng, fmt, n=4000):
    """Random values over the format's whole range, its exact values, the midpoints between
    them (ties), their float32 neighbours, subnormals, beyond-max values and specials."""
    v = fmt.values()
    mids = (v[1:] + v[:-1]) / 2
    exact = np.concatenate([v, mids, [fmt.max * 1.01, fmt.max * 1.06, fmt.max * 4, 1e30]])
    exact = exact.astype(np.float32)
    near = np.concatenate(
        [np.nextafter(exact, np.float32(np.inf)), np.nextafter(exact, np.float32(0))]
    )
    logs = rng.uniform(math_log2(fmt.smallest) - 4, math_log2(fmt.max) + 2, n)
    rand = (2.0**logs).astype(np.float32)
    x = np.concatenate([exact, near, rand, [0.0, np.inf]]).astype(np.float32)
    return np.concatenate([x, -x, [np.nan]]).astype(np.float32)


def math_log2(v):
    return float(np.log2(v))


@pytest.mark.parametrize("fmt", FP_ALL, ids=lambda f: f.name)
def test_value_sets(fmt):
    v = fmt.values()
    assert v[0] == 0 and v[-1] == fmt.max and np.all(np.diff(v) > 0)
    assert v[1] == fmt.smallest
    count = {E4M3FN: 127, E5M2: 124, E3M2: 32, E2M3: 32, E2M1: 8}[fmt]  # non-negative finite
    assert len(v) == count
    assert fmt.max_exponent == {E4M3FN: 8, E5M2: 15, E3M2: 4, E2M3: 2, E2M1: 2}[fmt]


@pytest.mark.parametrize("fmt", [E4M3FN, E5M2], ids=lambda f: f.name)
def test_float8_equals_torch_casts(rng, fmt):
    torch = pytest.importorskip("torch")
    x = _hard_values(rng, fmt)
    dtype = {E4M3FN: torch.float8_e4m3fn, E5M2: torch.float8_e5m2}[fmt]
    t = torch.from_numpy(x)
    want = torch.clamp(t, -fmt.max, fmt.max).to(dtype).to(torch.float32).numpy()
    got = quantize(x, fmt)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
    assert np.all(np.isin(np.abs(got[~np.isnan(got)]), fmt.values()))


@pytest.mark.parametrize("fmt", [E3M2, E2M3, E2M1], ids=lambda f: f.name)
def test_fp6_fp4_equal_torchao(rng, fmt):
    torch = pytest.importorskip("torch")
    kernels = pytest.importorskip("torchao.prototype.mx_formats.kernels")
    x = _hard_values(rng, fmt)
    x = x[~np.isnan(x)]  # torchao's sub-byte conversions have no NaN
    to_bits, from_bits = {
        E3M2: (kernels.f32_to_f6_e3m2_unpacked, kernels.f6_e3m2_unpacked_to_f32),
        E2M3: (kernels.f32_to_f6_e2m3_unpacked, kernels.f6_e2m3_unpacked_to_f32),
        E2M1: (kernels.f32_to_f4_unpacked, kernels.f4_unpacked_to_f32),
    }[fmt]
    want = from_bits(to_bits(torch.from_numpy(x))).numpy()
    np.testing.assert_array_equal(quantize(x, fmt), want)


@pytest.mark.parametrize("fmt", FP_ALL, ids=lambda f: f.name)
def test_every_backend_rounds_alike(backend, rng, fmt):
    x = _hard_values(rng, fmt, n=500)
    want = quantize(x, fmt)
    for dtype in ("float32", "float64"):
        got = quantize(backend.asarray(x, dtype), fmt)
        backend.check(got, x.shape, dtype)
        np.testing.assert_array_equal(backend.to_numpy(got), want)


def test_scaled_quantization_per_channel(backend, rng):
    """Amax FP8 scaling: scale = amax / 448 per row, x / scale cast (torch's float8 cast),
    times scale; an all-zero row keeps scale 1 and stays zero."""
    torch = pytest.importorskip("torch")
    w = (rng.standard_t(4, (6, 64)) * rng.uniform(0.01, 10, (6, 1))).astype(np.float32)
    w[2] = 0.0
    t = torch.from_numpy(w)
    amax = t.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
    want = (torch.clamp(t / scale, -448, 448).to(torch.float8_e4m3fn).float() * scale).numpy()
    got = quantize_scaled(backend.asarray(w), E4M3FN, axis=1)
    backend.check(got, w.shape, "float32")
    np.testing.assert_array_equal(backend.to_numpy(got), want)
    s = formats.amax_scale(backend.asarray(w), E4M3FN, axis=1)
    backend.check(s, (6, 1), "float32")
    np.testing.assert_array_equal(backend.to_numpy(s), scale.numpy())


def test_bad_input_is_a_clear_error():
    with pytest.raises(TypeError, match="cannot quantize"):
        quantize(np.array([1 + 2j]), E4M3FN)
    with pytest.raises(TypeError, match="cannot quantize"):
        formats.mx_quantize(np.ones((2, 32), np.complex64), E2M1)
    with pytest.raises(ValueError, match="multiple of the block size 32"):
        formats.mx_quantize(np.ones((2, 48), np.float32), E2M1)
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        formats.mx_exponents(np.ones((2, 32), np.float32), E2M1, block_size=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        formats.mx_exponents(np.ones((2, 32), np.float32), E2M1, mode="round")
    with pytest.raises(ValueError, match="multiple of the block size 16"):
        formats.nvfp4_quantize(np.ones(24, np.float32))


def _mx_data(rng, rows=8, k=256):
    """Weights with the edge blocks: all zero, one huge value, subnormal-only, a power-of-two
    amax, an infinity, and blocks far below and above 1."""
    x = (rng.standard_t(3, (rows, k)) * rng.uniform(1e-3, 30, (rows, 1))).astype(np.float32)
    x[0, :32] = 0.0
    x[0, 32:64] *= 1e-3
    x[0, 40] = 3e4  # one huge value
    x[1, :32] = rng.uniform(-1, 1, 32).astype(np.float32) * np.float32(1e-39)  # subnormal
    x[1, 32:64] = np.float32(0.25) * rng.uniform(-1, 1, 32).astype(np.float32)
    x[1, 40] = 4.0  # amax exactly a power of two
    x[2, 64:96] *= 1e-30
    x[3, 96:128] *= 1e25
    return x


def _rounding_edges(fmt) -> np.ndarray:
    """Blocks whose amax sits on the modes' edges: EVEN's carry threshold
    ``(2 - 2**-(m + 1)) * 2**k`` and the float32 just below it (normal and subnormal), and
    ``amax / max`` exactly a power of two and just above one (RCEIL)."""
    m = fmt.mantissa_bits
    threshold = np.float32((2 - 2.0 ** -(m + 1)) * 8)
    sub = np.float32((1 - 2.0 ** -(m + 1)) * 2.0**-126)
    amaxes = [
        threshold,
        np.nextafter(threshold, np.float32(0)),
        sub,
        np.nextafter(sub, np.float32(0)),
        np.float32(fmt.max / 8),
        np.float32(fmt.max / 8 * (1 + 2.0**-20)),
    ]
    x = np.repeat(np.float32(amaxes), 32)[None, :] * np.float32(0.25)  # below each amax
    for i, a in enumerate(amaxes):
        x[0, 32 * i + 3] = -a
    return x


@pytest.mark.parametrize("fmt", FP_ALL, ids=lambda f: f.name)
@pytest.mark.parametrize("mode", ["floor", "ceil", "even", "rceil"])
def test_mx_equals_torchao(rng, fmt, mode):
    torch = pytest.importorskip("torch")
    mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2

    elem = {
        E4M3FN: torch.float8_e4m3fn,
        E5M2: torch.float8_e5m2,
        E3M2: DTYPE_FP6_E3M2,
        E2M3: DTYPE_FP6_E2M3,
        E2M1: torch.float4_e2m1fn_x2,
    }[fmt]
    x = np.concatenate([_mx_data(rng), np.resize(_rounding_edges(fmt), (1, 256))])
    t = torch.from_numpy(x)
    scale, data = mx.to_mx(t, elem, 32, getattr(ScaleCalculationMode, mode.upper()))
    want = mx.to_dtype(data, scale, elem, 32, torch.float32).numpy()
    elements, exponents = formats.mx_quantize(x, fmt, mode=mode)
    np.testing.assert_array_equal(exponents, scale.view(torch.uint8).numpy().astype(np.int64))
    np.testing.assert_array_equal(formats.mx_dequantize(elements, exponents), want)
    assert np.all(np.isin(np.abs(elements), fmt.values()))


@pytest.mark.parametrize("mode", ["even", "rceil"])
def test_mx_rounding_modes_on_every_backend(backend, mode):
    """EVEN carries exactly from its threshold on (not one float32 below), RCEIL rounds
    ``amax / max`` up exactly (a power of two stays; just above it goes up), on every backend."""
    x = _rounding_edges(E2M1)
    elements, exponents = formats.mx_quantize(backend.asarray(x), E2M1, mode=mode)
    e = backend.to_numpy(exponents)[0]
    floor = formats.mx_exponents(x, E2M1)[0]
    if mode == "even":
        assert e[0] == floor[0] + 1 and e[1] == floor[1]  # the threshold, and just below
        assert e[2] == e[3] == 0  # a subnormal carry still clamps to E8M0's least
    else:
        assert e[4] == 127 - 3 and e[5] == 127 - 2  # max / 8, and just above
        # one float32 step above 2**5: exactly up to 2**6 (torchao's eager log2 in float32
        # rounds it down to 5 and gives 132; NVIDIA's conversion rounds up, as here)
        y = np.full((1, 32), 1.0, np.float32)
        y[0, 0] = np.nextafter(np.float32(32), np.float32(64)) * np.float32(448)
        assert formats.mx_exponents(backend.asarray(y), E4M3FN, mode="rceil")[0, 0] == 133
    np.testing.assert_array_equal(e, formats.mx_exponents(x, E2M1, mode=mode)[0])
    want = formats.mx_quantize(x, E2M1, mode=mode)[0]
    if backend.name != "jax":
        np.testing.assert_array_equal(backend.to_numpy(elements), want)


def test_mx_nan_blocks_and_every_backend(backend, rng):
    x = _mx_data(rng, rows=4, k=128)
    x[2, 70] = np.nan
    x[3, 5] = np.inf
    elements, exponents = formats.mx_quantize(backend.asarray(x), E2M1)
    backend.check(elements, x.shape, "float32")
    e = backend.to_numpy(exponents)
    assert e[2, 2] == 255 and e[3, 0] == 127 + 128 - E2M1.max_exponent  # infinity: exponent 128
    out = backend.to_numpy(formats.mx_dequantize(elements, exponents))
    assert np.isnan(out[2, 64:96]).all() and not np.isnan(np.delete(out, slice(64, 96), 1)).any()
    want_e, want_q = formats.mx_quantize(x, E2M1)[::-1]
    np.testing.assert_array_equal(e, want_e)
    np.testing.assert_array_equal(backend.to_numpy(elements), want_q)


@pytest.mark.parametrize("two_level", [False, True])
def test_nvfp4_equals_torchao(rng, two_level):
    torch = pytest.importorskip("torch")
    nv = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
    from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32, unpack_uint4

    x = _mx_data(rng)
    x[1, :32] = 0.0  # no subnormal-only blocks: E4M3's smallest scale floors them
    t = torch.from_numpy(x)
    ts = nv.per_tensor_amax_to_scale(t.abs().max()) if two_level else None
    scales, packed = nv.nvfp4_quantize(t, 16, ts)
    want_q = f4_unpacked_to_f32(unpack_uint4(packed)).reshape(x.shape).numpy()
    mine_ts = formats.nvfp4_tensor_scale(x) if two_level else None
    if two_level:
        np.testing.assert_array_equal(mine_ts, ts.numpy())
    elements, block_scales = formats.nvfp4_quantize(x, mine_ts)
    np.testing.assert_array_equal(elements, want_q)
    np.testing.assert_array_equal(block_scales, scales.to(torch.float32).numpy())
    hp = nv.NVFP4Tensor(packed, scales, 16, torch.float32, per_tensor_scale=ts).dequantize()
    got = formats.nvfp4_dequantize(elements, block_scales, mine_ts)
    np.testing.assert_array_equal(got, hp.numpy())


@pytest.mark.parametrize("fmt", [E2M1, E4M3FN, E3M2], ids=lambda f: f.name)
def test_mx_least_error_exponents_equal_a_brute_force(backend, rng, fmt):
    """mode="mse": each block's exponent is the least-error one of floor - 1 .. floor + 1
    (floor on ties), found block by block here, and never worse than floor or ceil."""
    x = _mx_data(rng, rows=6, k=128)
    if backend.name == "jax":  # XLA on the CPU flushes float32 subnormals to zero
        x[1, :32] = 0.0
    got = backend.to_numpy(formats.mx_exponents(backend.asarray(x), fmt, mode="mse"))
    floor = formats.mx_exponents(x, fmt, mode="floor")
    blocks = x.reshape(6, 4, 32)

    def error(e, r, b):
        q = formats.mx_dequantize(_quantized_with(blocks[r, b], e, fmt), np.array([[e]]))
        return float(np.sum((blocks[r, b].astype(np.float64) - q[0].astype(np.float64)) ** 2))

    for r in range(6):
        for b in range(4):
            cands = [int(np.clip(floor[r, b] + d, 0, 254)) for d in (0, 1, -1)]
            e = [error(c, r, b) for c in cands]
            assert got[r, b] == cands[int(np.argmin(e))], (r, b, cands, e)
    for mode in ("floor", "ceil"):
        q = formats.mx_dequantize(*formats.mx_quantize(x, fmt, mode=mode)).reshape(6, 4, 32)
        mine = formats.mx_dequantize(*formats.mx_quantize(x, fmt, mode="mse")).reshape(6, 4, 32)
        d_other = np.sum((blocks.astype(np.float64) - q) ** 2, axis=-1)
        d_mine = np.sum((blocks.astype(np.float64) - mine) ** 2, axis=-1)
        finite = np.isfinite(d_other)
        assert np.all(d_mine[finite] <= d_other[finite])


def _quantized_with(block, e, fmt):
    """The block's elements under biased exponent ``e``, as ``mx_quantize`` divides."""
    scale = max(2.0 ** (e - 127), 2.0**-126)
    return quantize((block / np.float32(scale)).astype(np.float32), fmt)[None]


@pytest.mark.parametrize("fmt", FP_ALL, ids=lambda f: f.name)
def test_torchao_tensors_hold_our_encodings(rng, fmt):
    """The torch side: torchao's MXTensor / NVFP4Tensor built from our blocks dequantize to
    our values (its scale layout: E8M0 bytes, E4M3 block scales, an FP32 tensor scale)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao.prototype.mx_formats")
    from encanalyze.torch import to_mx_tensor, to_nvfp4_tensor

    x = _mx_data(rng, rows=4, k=128)
    elements, exponents = formats.mx_quantize(x, fmt, mode="mse")
    mx = to_mx_tensor(elements, exponents, fmt)
    want = formats.mx_dequantize(elements, exponents)
    np.testing.assert_array_equal(mx.dequantize(torch.float32).numpy(), want)
    if fmt is E2M1:
        for ts in (None, formats.nvfp4_tensor_scale(x)):
            e, b = formats.nvfp4_quantize(x, ts)
            nv = to_nvfp4_tensor(e, b, ts)
            want = formats.nvfp4_dequantize(e, b, ts)
            np.testing.assert_array_equal(nv.dequantize(torch.float32).numpy(), want)


@pytest.mark.parametrize("two_level", [False, True])
def test_nvfp4_every_backend_equals_numpy(backend, rng, two_level):
    x = _mx_data(rng, rows=4, k=128)
    x[1, :32] = 0.0  # no subnormal-only block (JAX flushes subnormals to zero)
    xs = backend.asarray(x)
    ts = formats.nvfp4_tensor_scale(xs) if two_level else None
    want_ts = formats.nvfp4_tensor_scale(x) if two_level else None
    elements, scales = formats.nvfp4_quantize(xs, ts)
    want_e, want_s = formats.nvfp4_quantize(x, want_ts)
    backend.check(elements, x.shape, "float32")
    backend.check(scales, (4, 8), "float32")
    np.testing.assert_array_equal(backend.to_numpy(elements), want_e)
    np.testing.assert_array_equal(backend.to_numpy(scales), want_s)
    out = formats.nvfp4_dequantize(elements, scales, ts)
    np.testing.assert_array_equal(
        backend.to_numpy(out), formats.nvfp4_dequantize(want_e, want_s, want_ts)
    )


def _searched(backend, rng, fmt, rows=32, n=512):
    import encanalyze as ea

    w = (rng.standard_t(3, (rows, n)) * rng.uniform(0.005, 2, (rows, 1))).astype(np.float32)
    w[3] = 0.0  # a row of zeros: scale 1
    analyzer = ea.PercentileEncodingAnalyzer((rows, 1))  # any histogram statistics
    analyzer.update_stats(backend.asarray(w[:, : n // 2]))
    analyzer.update_stats(backend.asarray(w[:, n // 2 :] * 1.5))  # streamed: re-binned
    w[:, n // 2 :] *= 1.5
    return w, analyzer.get_stats()


@pytest.mark.parametrize("fmt", [E4M3FN, E2M1, E3M2], ids=lambda f: f.name)
@pytest.mark.parametrize("gamma", [1.0, 3.0])
def test_searched_scale_equals_a_brute_force_over_the_histogram(backend, rng, fmt, gamma):
    w, stats = _searched(backend, rng, fmt)
    got = formats.search_scale(stats, fmt, num_candidates=64, gamma=gamma)
    backend.check(got, (32, 1), "float32")
    got = backend.to_numpy(got)[:, 0]
    counts = backend.to_numpy(stats.histogram)[:, 0].astype(np.float64)
    edges = backend.to_numpy(stats.bin_edges)[:, 0].astype(np.float32)
    amax = np.maximum(np.abs(backend.to_numpy(stats.min)), np.abs(backend.to_numpy(stats.max)))
    mids = (edges[:, :-1] + edges[:, 1:]) / np.float32(2)
    for r in range(32):
        if amax[r, 0] == 0:
            assert got[r] == 1.0
            continue
        noise = []
        for k in range(1, 65):
            a = np.float32(amax[r, 0] * np.float32(k) / np.float32(64))
            s = np.float32(a / np.float32(fmt.max))
            q = quantize((mids[r] / s).astype(np.float32), fmt) * s
            err = (q.astype(np.float64) - mids[r]) ** 2
            err = np.where(np.abs(mids[r]) > a, err * gamma, err)  # the clipped bins
            noise.append(np.sum(counts[r] * err))
        k = 64 - int(np.argmin(noise[::-1]))  # the largest of the least
        want = np.float32(np.float32(amax[r, 0] * np.float32(k) / np.float32(64)) / fmt.max)
        assert got[r] == want, (r, k)
        assert noise[k - 1] <= noise[-1]  # never more noise than amax scaling, on the histogram


@pytest.mark.parametrize("fmt", [E4M3FN, E2M1], ids=lambda f: f.name)
def test_searched_scale_beats_amax_scaling_on_the_data(rng, fmt):
    """On heavy-tailed weights the searched scales give more SQNR than amax scaling (for FP4
    on every row; FP8's grid near zero is finer than 2048 bins, so rows can lose a little:
    no_worse_than_amax, below)."""
    w, stats = _searched(make_backend("numpy"), rng, fmt)
    ours = quantize_scaled(w, fmt, scale=formats.search_scale(stats, fmt))
    amax = quantize_scaled(w, fmt, axis=1)
    w64 = w.astype(np.float64)
    e_ours, e_amax = np.sum((w64 - ours) ** 2, axis=1), np.sum((w64 - amax) ** 2, axis=1)
    assert e_ours.sum() < e_amax.sum()
    if fmt is E2M1:
        assert np.all(e_ours <= e_amax)


@pytest.mark.parametrize("fmt", [E4M3FN, E5M2, E3M2, E2M1], ids=lambda f: f.name)
def test_searches_never_lose_to_amax_on_the_values(backend, rng, fmt):
    """With the values at hand, no_worse_than_amax keeps each row's searched scale where it
    quantizes the row with no more error than amax scaling, the amax scale elsewhere: never
    worse on any row, and it changes a row only where the search lost on it."""
    w, stats = _searched(backend, rng, fmt, rows=128, n=256)
    w[5, 7] = np.nan  # left out of the errors
    x = backend.asarray(w)
    w64 = np.where(np.isnan(w), 0, w).astype(np.float64)

    def error(scale):
        q = backend.to_numpy(quantize_scaled(x, fmt, scale=scale)).astype(np.float64)
        return np.sum(np.where(np.isnan(w), 0, (w64 - q) ** 2), axis=1)

    amax = formats.amax_scale(x, fmt, axis=1)
    e_amax = error(amax)
    for method in formats.SEARCH_METHODS:
        searched = formats.compute_scale(stats, fmt, method)
        kept = formats.no_worse_than_amax(x, fmt, searched, axis=1)
        backend.check(kept, (128, 1))
        e_searched, e_kept = error(searched), error(kept)
        assert np.all(e_kept <= e_amax)
        lost = e_searched > e_amax
        want = np.where(lost[:, None], backend.to_numpy(amax), backend.to_numpy(searched))
        np.testing.assert_array_equal(backend.to_numpy(kept), want)
        assert e_kept.sum() < e_amax.sum()
        if fmt is E4M3FN and method == "mse":  # these data have rows where the search loses
            assert lost.any()


def test_methods_on_float_grids(backend, rng):
    """minmax is amax scaling; percentile clips each tail as the integer method does; mse and
    sqnr are the grid search with gamma 1 and 3; all from the same streamed statistics."""
    import encanalyze as ea

    w, stats = _searched(backend, rng, E4M3FN)
    scales = {m: formats.compute_scale(stats, E4M3FN, m) for m in formats.FLOAT_METHODS}
    for s in scales.values():
        backend.check(s, (32, 1), "float32")
    got = {m: backend.to_numpy(s) for m, s in scales.items()}
    live = np.abs(w).max(axis=1) > 0  # row 3 is all zeros (its histogram spans [-0.5, 0.5])
    amax = formats.amax_scale(w, E4M3FN, axis=1)
    # (a re-binned histogram's range is its edges: within an ulp of the data's)
    np.testing.assert_allclose(got["minmax"][live], amax[live], rtol=2e-7)
    mm = ea.MinMaxEncodingAnalyzer((32, 1))
    mm.update_stats(backend.asarray(w))
    minmax = formats.compute_scale(mm.get_stats(), E4M3FN)
    np.testing.assert_array_equal(backend.to_numpy(minmax), amax)  # the zero row's scale is 1
    np.testing.assert_array_equal(got["mse"], backend.to_numpy(formats.search_scale(stats, E4M3FN)))
    want = formats.search_scale(stats, E4M3FN, gamma=3.0)
    np.testing.assert_array_equal(got["sqnr"], backend.to_numpy(want))
    # percentile, by hand: the lower edges of the bins where the cumulative count reaches
    # T (1 - p/100) and T p/100, in float32 as the reference computes its thresholds
    counts = backend.to_numpy(stats.histogram)[:, 0].astype(np.float64)
    edges = backend.to_numpy(stats.bin_edges)[:, 0].astype(np.float32)
    for p in (99.0, 99.99):
        got_p = backend.to_numpy(formats.compute_scale(stats, E4M3FN, "percentile", percentile=p))
        cs = np.cumsum(counts, axis=1)
        total = cs[:, -1:].astype(np.float32)
        hi = np.sum(cs < (total * np.float32(p)) / np.float32(100), axis=1)
        lo = np.sum(cs < total * np.float32(1 - p / 100), axis=1)
        rows = np.arange(32)
        amax = np.maximum(np.abs(edges[rows, lo]), np.abs(edges[rows, hi]))
        amax = np.minimum(amax, got["minmax"][:, 0] * np.float32(448))
        want = np.where(amax > 0, amax / np.float32(448), 1).astype(np.float32)
        np.testing.assert_array_equal(got_p[:, 0], want)
        assert np.all(got_p[live] <= got["minmax"][live])
    same = formats.compute_scale(stats, E4M3FN, "percentile", percentile=100)
    np.testing.assert_array_equal(backend.to_numpy(same), got["minmax"])


def test_float_analyzer_streams_merges_and_saves(tmp_path, rng):
    """The analyzer's statistics are an ordinary analyzer's: merged halves and a saved and
    loaded copy give the same scales as the statistics they hold."""
    import encanalyze as ea

    w = (rng.standard_t(4, (16, 256)) * 0.1).astype(np.float32)
    for method in formats.FLOAT_METHODS:
        whole = formats.FloatEncodingAnalyzer(E2M1, (16, 1), method)
        with pytest.raises(ea.StatisticsNotFoundError):
            whole.compute_scale()
        whole.update_stats(w)
        a, b = (formats.FloatEncodingAnalyzer(E2M1, (16, 1), method) for _ in range(2))
        a.update_stats(w[:, :128])
        b.update_stats(w[:, 128:])
        merged = a.merge(b).compute_scale()
        np.testing.assert_array_equal(merged, a.compute_scale_from_stats(a.get_stats()))
        if method == "minmax":  # min-max statistics merge exactly
            np.testing.assert_array_equal(merged, whole.compute_scale())
        ea.save(whole.analyzer, tmp_path / f"{method}.npz")
        again = formats.FloatEncodingAnalyzer(E2M1, (16, 1), method)
        again.analyzer = ea.load(tmp_path / f"{method}.npz")
        np.testing.assert_array_equal(again.compute_scale(), whole.compute_scale())
        q = quantize_scaled(w, E2M1, scale=whole.compute_scale())
        assert np.all(np.isfinite(q))
    whole.reset_stats()
    assert whole.get_stats() is None


def test_float_methods_reject_bad_parameters():
    import encanalyze as ea

    stats = ea.MinMaxEncodingAnalyzer((1,)).update_stats(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="method must be one of"):
        formats.compute_scale(stats, E4M3FN, "entropy")
    with pytest.raises(TypeError, match="needs Histogram statistics"):
        formats.compute_scale(stats, E4M3FN, "mse")
    with pytest.raises(TypeError, match="not statistics"):
        formats.compute_scale(np.ones(3), E4M3FN)
    with pytest.raises(ValueError, match="gamma"):
        formats.FloatEncodingAnalyzer(E4M3FN, (1,), "sqnr", gamma=-1)
    with pytest.raises(ValueError, match="percentile"):
        formats.FloatEncodingAnalyzer(E4M3FN, (1,), "percentile", percentile=20)
    with pytest.raises(TypeError, match="FloatFormat"):
        formats.FloatEncodingAnalyzer("e4m3", (1,))
    a = formats.FloatEncodingAnalyzer(E4M3FN, (2, 1), "minmax")
    a.update_stats(np.ones((2, 3), np.float32))
    before = a.get_stats()
    with pytest.raises(ValueError):
        a.update_stats(np.ones((3, 3), np.float32))  # wrong shape: statistics kept
    np.testing.assert_array_equal(a.get_stats().max, before.max)


def test_mxint8_is_ocp_fixed_point(backend, rng):
    """MXINT8: the block exponent floor(log2(amax)) (emax 0), elements k / 64 with |k| <= 127,
    rounded to nearest even, as OCP MX v1.0 defines them (written out here element by element)."""
    x = (rng.standard_t(3, (6, 128)) * 0.05).astype(np.float32)
    x[0, :32] = 0.0
    x[1, :32] = np.float32(2.0) ** -3  # amax exactly a power of two
    x[2, 5] = 1000.0
    elements, exponents = formats.mx_quantize(backend.asarray(x), formats.INT8)
    elements, exponents = backend.to_numpy(elements), backend.to_numpy(exponents)
    blocks = x.reshape(6, 4, 32)
    amax = np.abs(blocks).max(axis=-1)
    with np.errstate(divide="ignore"):
        want_e = np.where(amax > 0, np.floor(np.log2(amax)), -127) + 127
    np.testing.assert_array_equal(exponents, want_e)
    scale = (2.0 ** (want_e - 127)).astype(np.float32)[..., None]
    k = np.clip(np.round(blocks / np.maximum(scale, np.float32(2.0**-126)) * 64), -127, 127)
    np.testing.assert_array_equal(elements, (k / 64).reshape(x.shape).astype(np.float32))
    back = formats.mx_dequantize(elements, exponents)
    assert np.all(np.abs(back - x)[2:] <= np.abs(x[2:]).max() / 2**6)
    assert formats.INT8.max == 127 / 64 and len(formats.INT8.values()) == 128


@pytest.mark.parametrize("two_level", [True, False], ids=["two-level", "one-level"])
def test_nvfp4_least_error_block_scales(backend, rng, two_level):
    """mode="mse": each block's E4M3 scale is the least-error one of the amax scale, the three
    E4M3 values below it and the one above (a brute force, block by block), never worse."""
    x = (rng.standard_t(3, (4, 128)) * 0.05).astype(np.float32)
    x[0, :16] = 0.0
    ts = formats.nvfp4_tensor_scale(x) if two_level else None
    xs = backend.asarray(x)
    elements, scales = formats.nvfp4_quantize(xs, ts, mode="mse")
    backend.check(scales, (4, 8), "float32")
    elements, scales = backend.to_numpy(elements), backend.to_numpy(scales)
    floor_e, floor_s = formats.nvfp4_quantize(x, ts)
    table = E4M3FN.values().astype(np.float32)
    lowest = int(np.searchsorted(table, 2.0**-6))
    blocks = x.reshape(4, 8, 16).astype(np.float64)
    got = formats.nvfp4_dequantize(elements, scales, ts).reshape(4, 8, 16)
    amax = formats.nvfp4_dequantize(floor_e, floor_s, ts).reshape(4, 8, 16)
    for r in range(4):
        for b in range(8):
            i = int(np.searchsorted(table, floor_s[r, b]))
            errs = []
            for step in (0, -1, -2, -3, 1):
                cand = np.full((1, 1), table[min(max(i + step, lowest), 126)], np.float32)
                e, _ = formats.nvfp4_quantize(x[r : r + 1, 16 * b : 16 * b + 16], ts, cand)
                q = formats.nvfp4_dequantize(e, cand, ts).astype(np.float64)
                errs.append((np.sum((blocks[r, b] - q) ** 2), cand[0, 0]))
            best = errs[0]
            for err in errs[1:]:
                if err[0] < best[0]:
                    best = err
            assert scales[r, b] == best[1], (r, b)
    e_got = np.sum((blocks - got) ** 2, axis=-1)
    e_amax = np.sum((blocks - amax) ** 2, axis=-1)
    assert np.all(e_got <= e_amax) and e_got.sum() < e_amax.sum()


def test_model_optimizer_fp8_and_nvfp4_scaling(rng):
    """Model Optimizer's scale computations (tests/peers.py): FP8 amax / 448 per tensor and per
    channel, bit for bit; NVFP4's tensor and E4M3 block scales bit for bit wherever the block
    scale is an E4M3 normal (Model Optimizer keeps E4M3 subnormal scales and gives zero blocks
    1.0, torchao clamps them to 2**-6, as encanalyze), and so are its elements there (a division
    where torchao multiplies by the reciprocal: no element differs here, nor in 5.2 million
    elements of 20 such weights)."""
    torch = pytest.importorskip("torch")
    from tests.peers import modelopt_fp8, modelopt_nvfp4

    w = (rng.standard_t(4, (64, 256)) * 0.03).astype(np.float32)
    w[5, 32:48] = 1e-9  # a block far below the others: an E4M3 subnormal block scale
    for axis, ours_axis in ((None, None), (1, 1)):
        want_q, want_s = modelopt_fp8(torch.from_numpy(w), axis)
        scale = formats.amax_scale(w, E4M3FN, ours_axis)
        np.testing.assert_array_equal(scale, want_s.numpy())
        np.testing.assert_array_equal(
            quantize_scaled(w, E4M3FN, ours_axis), (want_q * want_s).numpy()
        )
    elements, scales, ts = modelopt_nvfp4(torch.from_numpy(w))
    ours_ts = formats.nvfp4_tensor_scale(w)
    assert np.float32(ts.item()) == ours_ts
    ours_e, ours_s = formats.nvfp4_quantize(w, ours_ts)
    normal = scales.numpy() >= 2.0**-6
    assert (~normal).sum() == 1  # the tiny block only
    np.testing.assert_array_equal(ours_s[normal], scales.numpy()[normal])
    rows = np.repeat(normal, 16, axis=1)
    np.testing.assert_array_equal(ours_e[rows], elements.numpy()[rows])


# -- given scales are checked (issue 32) -------------------------------------------------------


@pytest.mark.parametrize("bad", [300, -5, float("nan"), 127.5])
def test_given_mx_exponents_are_checked(bad):
    x = np.ones((2, 64), np.float32)
    exps = np.full((2, 2), 127.0)
    exps[0, 0] = bad
    with pytest.raises(ValueError, match="exponents must be integers"):
        formats.mx_quantize(x, formats.E2M1, exponents=exps)
    with pytest.raises(ValueError, match="exponents must be integers"):
        formats.mx_dequantize(x, exps)


def test_given_scales_of_the_wrong_shape_never_broadcast():
    x = np.ones((2, 64), np.float32)
    with pytest.raises(ValueError, match="do not match the blocks"):
        formats.mx_quantize(x, formats.E2M1, exponents=np.full((1, 2), 127))
    with pytest.raises(ValueError, match="do not match the blocks"):
        formats.nvfp4_quantize(x, block_scales=np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="do not match the blocks"):
        formats.nvfp4_dequantize(x, np.ones((4,), np.float32))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), 449.0, 0.3])
def test_given_nvfp4_block_scales_are_e4m3_values(bad):
    x = np.ones((1, 32), np.float32)
    scales = np.ones((1, 2), np.float32)
    scales[0, 1] = bad
    with pytest.raises(ValueError, match="block_scales must be E4M3 values"):
        formats.nvfp4_quantize(x, block_scales=scales)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), [1.0, 2.0]])
def test_given_tensor_scales_are_one_finite_positive_number(bad):
    with pytest.raises(ValueError, match="tensor_scale"):
        formats.nvfp4_quantize(np.ones((1, 16), np.float32), tensor_scale=bad)


def test_from_json_refuses_what_the_quantizers_would_refuse():
    x = np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32)
    _, exps = formats.mx_quantize(x, formats.E2M1)
    good = formats.to_json("mx", exps, formats.E2M1)
    assert formats.from_json(good)["scales"].dtype == np.int64
    for scales in ([[127.9, 127]], [[300, 127]], [["a", 1]], [[10**400, 1]]):
        with pytest.raises(ValueError):
            formats.from_json({**good, "scales": scales})
    ts = formats.nvfp4_tensor_scale(x)
    _, block_scales = formats.nvfp4_quantize(x, ts)
    nv = formats.to_json("nvfp4", block_scales, tensor_scale=ts)
    assert formats.from_json(nv)["tensor_scale"] == np.float32(ts)
    for change in ({"tensor_scale": [1.0]}, {"tensor_scale": float("nan")}, {"tensor_scale": -2}):
        with pytest.raises(ValueError, match="tensor_scale"):
            formats.from_json({**nv, **change})
    for scales in ([[-1.0] * 4] * 2, [[float("nan")] * 4] * 2, [[500.0] * 4] * 2):
        with pytest.raises(ValueError, match="block_scales"):
            formats.from_json({**nv, "scales": scales})


def test_a_format_name_is_no_format():
    with pytest.raises(TypeError, match="element format"):
        formats.mx_quantize(np.ones((1, 32), np.float32), "mxfp4")
    with pytest.raises(TypeError, match="element format"):
        formats.quantize(np.ones(3), "e4m3")


def test_non_finite_weights_never_poison_a_scale():
    x = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
    x[0, 3], x[1, 5] = np.nan, np.inf
    ts = formats.nvfp4_tensor_scale(x)
    assert np.isfinite(ts) and ts > 0
    _, block_scales = formats.nvfp4_quantize(x, ts)
    assert np.isfinite(block_scales).all() and (block_scales > 0).all()
    scale = formats.amax_scale(x, formats.E4M3FN, axis=1)
    assert np.isfinite(scale).all()
    q = formats.quantize_scaled(x, formats.E4M3FN, axis=1)
    assert np.isfinite(q[1]).all() and np.isnan(q[0, 3]) and np.isfinite(np.delete(q[0], 3)).all()


def test_float64_data_has_its_amax_in_float64():
    big = np.array([1e39, -2e39, 3.0])  # beyond float32: its amax was inf, left out
    assert formats.amax_scale(big, formats.E4M3FN)[0] == np.float32(2e39 / 448)
    assert formats.nvfp4_tensor_scale(big) == np.float32(2e39 / (448 * 6))
    q = formats.quantize_scaled(big, formats.E4M3FN)
    assert q.dtype == np.float64 and q[1] == pytest.approx(-2e39, rel=1e-6)
    tiny = np.array([1e-50, -3e-51, 0.0])  # below float32: its amax was 0, scale 1
    scale = formats.amax_scale(tiny, formats.E4M3FN)
    assert scale.dtype == np.float32 and scale[0] == np.float32(2.0**-149)
    assert np.array_equal(formats.quantize_scaled(tiny, formats.E4M3FN), [0.0, -0.0, 0.0])
    with pytest.raises(ValueError, match="beyond float32's range"):
        formats.amax_scale(np.array([1e300, 1.0]), formats.E4M3FN)
    with pytest.raises(ValueError, match="beyond float32's range"):
        formats.nvfp4_tensor_scale(np.array([1e300, 1.0]))
    x32 = np.array([1e38, 2.0], np.float32)  # float32 data: float32 arithmetic, as before
    assert formats.amax_scale(x32, formats.E4M3FN)[0] == np.float32(1e38) / np.float32(448)


def test_one_registry_of_number_formats_serves_the_command_and_the_onnx_frontend():
    from encanalyze.cli._parser import UsageError, build_parser

    pytest.importorskip("onnx")
    from encanalyze.onnx._float8 import FLOAT8_FORMATS

    registry = formats.NUMBER_FORMATS
    for name in registry:  # every name the command takes, and no other
        assert build_parser().parse_args(["calibrate", "--number-format", name]).number_format
    with pytest.raises(UsageError, match="invalid choice"):
        build_parser().parse_args(["calibrate", "--number-format", "float8_e4m3"])
    assert registry["int"].element is None and registry["mxint8"].element is formats.INT8
    assert registry["nvfp4"].block_size == formats.NVFP4_BLOCK == 16
    assert {n for n, f in registry.items() if f.scheme == "mx"} == {
        "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8"
    }  # fmt: skip
    for name, spec in registry.items():
        assert spec.name == name
        if spec.scheme == "scaled":
            assert spec.element is formats.FORMATS[name] and spec.methods == formats.FLOAT_METHODS
    assert FLOAT8_FORMATS == {"float8_e4m3fn": "FLOAT8E4M3FN", "float8_e5m2": "FLOAT8E5M2"}


@pytest.mark.parametrize(
    ("scheme", "fmt"),
    [("mx", E2M1), ("mx", E4M3FN), ("nvfp4", E2M1), ("int_groups", formats.INT4)],
    ids=["mxfp4", "mxfp8", "nvfp4", "int4_g128"],
)
@pytest.mark.parametrize("method", formats.BLOCK_METHODS)
def test_block_encode_is_each_schemes_quantizer(backend, rng, scheme, fmt, method):
    """One function serves the model and tensor jobs: its elements, scales, dequantized values
    and export are the scheme's own functions', and scales times elements are the values."""
    w = (rng.standard_t(4, (4, 256)) * rng.uniform(0.01, 10, (4, 1))).astype(np.float32)
    enc = formats.block_encode(backend.asarray(w), scheme, fmt, method, block_axis=1)
    size = formats.BLOCK_SIZES[scheme]
    backend.check(enc.elements, w.shape, "float32")
    backend.check(enc.dequantized, w.shape, "float32")
    scales = backend.to_numpy(enc.scales)
    assert scales.shape == (4, 256 // size)
    elements, dq = backend.to_numpy(enc.elements), backend.to_numpy(enc.dequantized)
    np.testing.assert_array_equal(dq, elements * np.repeat(scales, size, axis=1))
    mode = {"minmax": {"mx": "floor"}.get(scheme, "amax"), "mse": "mse"}[method]
    if scheme == "mx":
        want, exps = formats.mx_quantize(w, fmt, mode=mode)
        assert enc.export == formats.to_json("mx", exps, fmt, block_axis=1)
    elif scheme == "nvfp4":
        ts = formats.nvfp4_tensor_scale(w)
        want, block = formats.nvfp4_quantize(w, ts, mode=mode)
        assert enc.export == formats.to_json("nvfp4", block, tensor_scale=ts, block_axis=1)
    else:
        want, s = formats.int_block_quantize(w, fmt, mode=mode)
        assert enc.export == formats.to_json("int_groups", s, fmt, block_axis=1)
    np.testing.assert_array_equal(elements, want)
    assert formats.from_json(enc.export)["block_axis"] == 1
    with pytest.raises(ValueError, match="scheme"):
        formats.block_encode(w, "blocks", fmt)
    with pytest.raises(ValueError, match="block method"):
        formats.block_encode(w, scheme, fmt, "sqnr")


@pytest.mark.parametrize("fmt", FP_ALL, ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rounding_by_the_bits_equals_the_portable_rounding(backend, rng, fmt, dtype):
    """The backends' bit-level rounding (NumPy, CuPy, torch) gives the portable rounding's
    values bit for bit: ties, subnormals, the largest value, zero and NaN included."""
    import array_api_strict as strict

    from encanalyze._backends import primitives

    native = primitives(backend.xp).round_magnitudes
    if native is None:
        pytest.skip(f"{backend.name} rounds by the portable path")
    x = np.abs(_hard_values(rng, fmt)).astype(dtype)
    fine = rng.uniform(0, fmt.max, 2000) * rng.choice([1, 1e-3, 1e-6], 2000)  # float64 digits
    a = np.minimum(np.concatenate([x, fine.astype(dtype)]), fmt.max)  # NaN stays
    want = formats._round_magnitudes(strict, strict.asarray(a), fmt)
    got = native(backend.asarray(a, dtype), fmt.mantissa_bits, fmt.min_exponent)
    backend.check(got, a.shape, dtype)
    np.testing.assert_array_equal(backend.to_numpy(got), np.asarray(want))
