"""Float element formats (FP8, FP6, FP4) as value sets, and their quantize-dequantize.

Each :class:`FloatFormat` is a sign, ``E`` exponent bits (bias ``2**(E-1) - 1``) and ``M``
mantissa bits with subnormals, as the OCP 8-bit floating point and OCP Microscaling (MX v1.0)
specifications define them: :data:`E4M3FN` (max 448, no infinity), :data:`E5M2` (max 57344,
IEEE-like), :data:`E3M2` (28), :data:`E2M3` (7.5) and :data:`E2M1` (6; the FP4 of MXFP4 and
NVFP4). :func:`quantize` rounds to the nearest value of a format, ties to even, saturating:
values beyond the largest finite one (infinities included) become it, as Model Optimizer,
torchao and the MX conversions do; NaN stays NaN. Every function is written against the array
API standard and returns arrays of the input's namespace, device and (floating) dtype.

Examples
--------
>>> import numpy as np
>>> from encanalyze.formats import E2M1, E4M3FN, quantize, quantize_scaled
>>> quantize(np.array([0.3, 2.6, 5.1, 100.0], dtype=np.float32), E2M1).tolist()
[0.5, 3.0, 6.0, 6.0]
>>> E4M3FN.max, len(E4M3FN.values())
(448.0, 127)
>>> w = np.array([[0.02, -0.5, 1.3], [4.0, 0.1, -7.0]], dtype=np.float32)
>>> q = quantize_scaled(w, E4M3FN, axis=1)  # one FP32 scale per row: amax / 448
>>> bool(np.all(np.abs(q - w) <= np.abs(w) / 16))  # 3 mantissa bits: half an ulp at most
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np

from ._backends import analyzer_input, primitives, quiet, to_numpy
from ._errors import StatisticsNotFoundError
from ._rules.minmax import MinMaxEncodingAnalyzer
from ._rules.percentile import PercentileEncodingAnalyzer, percentile_range, validate_percentile
from ._rules.sqnr import midpoints, occupied_first, occupied_width
from ._stats import Histogram, MinMaxRange
from ._xp import Array, device_of, div, in_row_blocks, namespace_of, on_host, take_rows

__all__ = [
    "E2M1",
    "E2M3",
    "E3M2",
    "E4M3FN",
    "E5M2",
    "BLOCK_METHODS",
    "BLOCK_SIZES",
    "BlockEncoding",
    "FLOAT_METHODS",
    "FORMATS",
    "INT4",
    "INT8",
    "INT_BLOCK",
    "INT_BLOCK_MODES",
    "IntFormat",
    "MX_BLOCK",
    "NVFP4_BLOCK",
    "NUMBER_FORMATS",
    "NVFP4_MODES",
    "SEARCH_METHODS",
    "FixedFormat",
    "FloatEncodingAnalyzer",
    "FloatFormat",
    "NumberFormat",
    "amax_scale",
    "block_encode",
    "SCALE_KINDS",
    "check_scales",
    "compute_scale",
    "from_json",
    "int_block_dequantize",
    "int_block_quantize",
    "mx_dequantize",
    "mx_exponents",
    "mx_quantize",
    "no_worse_than_amax",
    "nvfp4_dequantize",
    "nvfp4_quantize",
    "nvfp4_tensor_scale",
    "quantize",
    "quantize_scaled",
    "search_scale",
    "to_json",
]


@dataclass(frozen=True)
class FloatFormat:
    """A sign-magnitude float element format with subnormals.

    Parameters
    ----------
    name
        The format's name (``float8_e4m3fn``, ...).
    exponent_bits, mantissa_bits
        ``E`` and ``M``; the exponent bias is ``2**(E - 1) - 1``.
    max
        The largest finite value (448 for E4M3FN, whose top code is NaN; 57344 for E5M2, whose
        top exponent is infinity and NaN; the all-ones code for the MX formats, which have no
        special values).
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    max: float

    @property
    def bias(self) -> int:
        """The exponent bias ``2**(E - 1) - 1``."""
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def min_exponent(self) -> int:
        """The exponent of the smallest normal value, ``1 - bias`` (the subnormals' too)."""
        return 1 - self.bias

    @property
    def max_exponent(self) -> int:
        """The exponent of :attr:`max` (``emax`` of the MX specification: 8 for E4M3FN)."""
        return math.floor(math.log2(self.max))

    @property
    def smallest(self) -> float:
        """The smallest positive (subnormal) value, ``2**(min_exponent - M)``."""
        return 2.0 ** (self.min_exponent - self.mantissa_bits)

    def values(self) -> np.ndarray:
        """Return every non-negative finite value, ascending (float64)."""
        m = 2**self.mantissa_bits
        sub = np.arange(m) * self.smallest
        exps = np.arange(self.min_exponent, self.max_exponent + 1)
        normal = (2.0 ** exps[:, None] * (1 + np.arange(m)[None, :] / m)).ravel()
        return np.concatenate([sub, normal[normal <= self.max]])


@dataclass(frozen=True)
class FixedFormat:
    """A signed fixed-point element format: ``bits``-bit integers times ``2**-(bits - 2)``.

    The MXINT8 element of OCP MX v1.0: 8-bit two's complement with an implicit scale of
    ``2**-6``, here symmetric (``-127 .. 127``, as Model Optimizer and microxcaling clamp),
    so the values are ``k / 64`` up to ``127 / 64``; rounding is to nearest, ties to even.
    """

    name: str
    bits: int

    @property
    def smallest(self) -> float:
        """The spacing of the values, ``2**-(bits - 2)``."""
        return 2.0 ** -(self.bits - 2)

    @property
    def max(self) -> float:
        """The largest value, ``(2**(bits - 1) - 1) * smallest``."""
        return (2 ** (self.bits - 1) - 1) * self.smallest

    @property
    def max_exponent(self) -> int:
        """``emax`` of the MX specification: 0 (the largest value is below 2)."""
        return math.floor(math.log2(self.max))

    def values(self) -> np.ndarray:
        """Return every non-negative value, ascending (float64)."""
        return np.arange(2 ** (self.bits - 1)) * self.smallest


@dataclass(frozen=True)
class IntFormat:
    """A signed integer element format of ``bits`` bits: ``-2**(bits-1) .. 2**(bits-1) - 1``.

    The grid of integer groups (:func:`int_block_quantize`): each block's FP32 scale maps its
    largest magnitude to :attr:`max` (the project's symmetric grid, AIMET's and ONNX
    Runtime's: ``amax / (2**(bits-1) - 1)``), and the extra negative level stays available to
    the least-error scales.
    """

    name: str
    bits: int

    @property
    def max(self) -> float:
        """The largest value, ``2**(bits - 1) - 1``."""
        return float(2 ** (self.bits - 1) - 1)

    @property
    def min(self) -> float:
        """The smallest value, ``-2**(bits - 1)``."""
        return float(-(2 ** (self.bits - 1)))

    def values(self) -> np.ndarray:
        """Return every non-negative value, ascending (float64)."""
        return np.arange(2 ** (self.bits - 1), dtype=np.float64)


E4M3FN = FloatFormat("float8_e4m3fn", 4, 3, 448.0)
E5M2 = FloatFormat("float8_e5m2", 5, 2, 57344.0)
E3M2 = FloatFormat("float6_e3m2", 3, 2, 28.0)
E2M3 = FloatFormat("float6_e2m3", 2, 3, 7.5)
E2M1 = FloatFormat("float4_e2m1", 2, 1, 6.0)
INT8 = FixedFormat("int8", 8)
INT4 = IntFormat("int4", 4)
FORMATS = {f.name: f for f in (E4M3FN, E5M2, E3M2, E2M3, E2M1, INT8, INT4)}
"""The element formats by name (:data:`INT8` only as MXINT8's element, :data:`INT4` only as
the integer groups')."""

ElementFormat = FloatFormat | FixedFormat | IntFormat
"""An element format: a float one, MXINT8's fixed-point one, or an integer groups' one."""


def _work(xp, x: Array) -> Array:
    """``x`` in the arithmetic dtype: float64 stays, every other dtype becomes float32."""
    if x.dtype == xp.float64:
        return x
    return xp.astype(x, xp.float32)


_FEW_BINADES = 8
"""Formats with at most this many binades find a value's spacing by comparisons, not log2."""


def _round_magnitudes(xp, a: Array, fmt: ElementFormat) -> Array:
    """Round non-negative ``a`` (at most ``fmt.max``, or NaN) to ``fmt``, ties to even.

    The spacing of ``fmt``'s values in ``a``'s binade is ``2**(e - M)``, ``e`` the binade's
    exponent (the subnormals share the smallest normal binade's spacing); dividing by it is
    exact (a power of two), the rounding is the standard's ``round`` (ties to even), and the
    product back is exact too: one rounding, the format's own.
    """
    if isinstance(fmt, FloatFormat) and (native := primitives(xp).round_magnitudes) is not None:
        out = native(a, fmt.mantissa_bits, fmt.min_exponent)  # by the bits: no log2
        if out is not None:
            return out
    dev = device_of(a)
    two = xp.asarray(2.0, dtype=a.dtype, device=dev)
    if isinstance(fmt, FixedFormat):  # one spacing, a power of two
        return xp.round(a / fmt.smallest) * fmt.smallest
    if fmt.max_exponent - fmt.min_exponent <= _FEW_BINADES:  # FP4, FP6: a few comparisons
        spacing = xp.full(a.shape, fmt.smallest, dtype=a.dtype, device=dev)
        for k in range(fmt.min_exponent + 1, fmt.max_exponent + 1):
            spacing = xp.where(a >= 2.0**k, 2.0 ** (k - fmt.mantissa_bits), spacing)
        return xp.round(a / spacing) * spacing
    tiny = xp.asarray(fmt.smallest, dtype=a.dtype, device=dev)
    e = xp.floor(xp.log2(xp.maximum(a, tiny)))  # a binade's exponent, corrected below
    e = xp.where(xp.pow(two, e) > a, e - 1, e)  # log2 may round up just below a power of 2
    e = xp.where(xp.pow(two, e + 1) <= a, e + 1, e)  # ... or down just above one
    e = xp.maximum(e, xp.asarray(float(fmt.min_exponent), dtype=a.dtype, device=dev))
    spacing = xp.pow(two, e - fmt.mantissa_bits)
    return xp.round(a / spacing) * spacing


def quantize(x: Array, fmt: ElementFormat) -> Array:
    """Return ``x`` rounded to the nearest value of ``fmt`` (ties to even), saturating.

    Values beyond ``+-fmt.max`` (infinities too) become ``+-fmt.max``; NaN stays NaN; signed
    zeros keep their sign. The result has ``x``'s namespace, device and floating dtype (integer
    inputs: float32); arithmetic is in float32 (float64 for float64 inputs), where every step
    but the one rounding is exact, so the result is the format's value nearest to ``x`` itself.
    """
    fmt = _check_format(fmt)
    x = analyzer_input(x)
    xp = namespace_of(x)
    _check_real(xp, x, f"quantize to {fmt.name}")
    out = x.dtype if xp.isdtype(x.dtype, "real floating") else xp.float32
    w = _work(xp, x)
    big = xp.asarray(fmt.max, dtype=w.dtype, device=device_of(w))
    q = _round_magnitudes(xp, xp.minimum(xp.abs(w), big), fmt)  # NaN propagates
    return xp.astype(xp.copysign(q, w), out)


def amax_scale(x: Array, fmt: ElementFormat, axis: int | tuple[int, ...] | None = None) -> Array:
    """Return the FP32 scale ``amax / fmt.max`` of ``x`` over ``axis`` (kept as size-1 axes).

    ``amax`` is the largest finite magnitude (NaN and infinities are left out, as the integer
    grids leave them out of a range: they saturate), the scaling of Model Optimizer's and
    torchao's FP8 (``amax / 448``); an all-zero slice gets scale 1 (any scale maps it to zero).
    float64 data has its amax and quotient in float64: a scale below float32's smallest
    subnormal becomes that subnormal (such a slice quantizes to zero), one beyond float32's
    range is a ``ValueError``.
    """
    x = analyzer_input(x)
    xp = namespace_of(x)
    fmt = _check_format(fmt)
    a = _finite_magnitudes(xp, _work(xp, x))  # float64 data: its amax in float64
    amax = xp.max(a, axis=axis, keepdims=True)
    scale = div(xp, amax, xp.asarray(fmt.max, dtype=amax.dtype, device=device_of(a)))
    return xp.where(
        amax > 0, _fp32_scale(xp, scale, amax > 0), xp.ones_like(scale, dtype=xp.float32)
    )


def quantize_scaled(
    x: Array, fmt: ElementFormat, axis: int | tuple[int, ...] | None = None, scale: Array = None
) -> Array:
    """Quantize-dequantize ``x`` with an FP32 scale: ``quantize(x / scale, fmt) * scale``.

    ``scale`` defaults to :func:`amax_scale` over ``axis`` (``None``: per tensor; ``1``:
    one scale per row of a 2-D weight; ...). The result has ``x``'s namespace, device and
    floating dtype.
    """
    fmt = _check_format(fmt)
    x = analyzer_input(x)
    xp = namespace_of(x)
    if scale is None:
        scale = amax_scale(x, fmt, axis)
    w = _work(xp, x)  # float64 data stays float64
    with quiet(xp):
        q = quantize(div(xp, w, scale), fmt) * scale
    out = x.dtype if xp.isdtype(x.dtype, "real floating") else xp.float32
    return xp.astype(q, out)


def no_worse_than_amax(
    x: Array, fmt: ElementFormat, scale: Array, axis: int | tuple[int, ...] | None = None
) -> Array:
    """Return ``scale`` where it quantizes ``x`` with no more squared error than amax scaling.

    ``scale`` is one FP32 scale per slice of ``x`` over ``axis`` (the shape
    :func:`amax_scale` returns); each slice keeps it where ``quantize_scaled(x, fmt,
    scale=scale)`` has no more squared error (NaN values left out) than with
    :func:`amax_scale`, and takes the amax scale elsewhere. A search on a histogram scores
    each bin's values at one point, so on the values themselves its scale can lose a little
    (FP8's grid near zero is finer than the bins); with the values at hand (weights) this makes
    the searches never worse than amax scaling on them.
    """
    x = analyzer_input(x)
    xp = namespace_of(x)
    amax = amax_scale(x, fmt, axis)
    scale = xp.reshape(xp.astype(scale, xp.float32), tuple(amax.shape))
    w = xp.astype(x, xp.float32)
    finite = xp.isfinite(w)

    def error(s: Array) -> Array:
        d = xp.astype(quantize_scaled(w, fmt, scale=s), xp.float64) - xp.astype(w, xp.float64)
        return xp.sum(xp.where(finite, d * d, xp.zeros_like(d)), axis=axis, keepdims=True)

    return xp.where(error(scale) <= error(amax), scale, amax)


# -- OCP MX: blocks of 32 with a shared power-of-two (E8M0) scale -------------------------------
MX_BLOCK = 32
"""The MX block size (OCP MX v1.0)."""

E8M0_BIAS = 127
E8M0_NAN = 255
_F32_MIN_NORMAL = 2.0**-126
_F32_TINY = 2.0**-149  # float32's smallest subnormal
MX_MODES = ("floor", "ceil", "even", "rceil", "mse")
"""How a block's shared exponent is chosen: from its largest magnitude, ``floor`` (the OCP
specification's and torchao's default, ``floor(log2(amax)) - emax``) or ``ceil`` (rounded up
where ``amax`` is not a power of two); or ``mse``: of ``floor - 1``, ``floor`` and
``floor + 1`` the one whose quantize-dequantize of the block's own values has the least
squared error (``floor`` on ties), so never worse than ``floor`` or ``ceil``."""


def _check_format(fmt) -> ElementFormat:
    """Return ``fmt``; ``TypeError`` unless it is an element format (``E4M3FN``, ``E2M1``, ...)."""
    if not isinstance(fmt, (FloatFormat, FixedFormat)):
        raise TypeError(
            f"fmt must be an element format such as encanalyze.formats.E2M1 (FloatFormat or "
            f"FixedFormat), got {fmt!r}"
        )
    return fmt


def _finite_magnitudes(xp, x: Array) -> Array:
    """``|x|`` with NaN and infinities as 0: what an amax is taken over."""
    a = xp.abs(x)
    return xp.where(xp.isfinite(a), a, xp.zeros_like(a))


def _fp32_scale(xp, scale: Array, positive: Array) -> Array:
    """Return ``scale`` (float32 or float64) as float32 scales.

    float64 ones beyond float32's range are a ``ValueError`` (the check syncs: float64 only);
    a ``positive`` scale below float32's smallest subnormal becomes that subnormal.
    """
    with quiet(xp):  # an overflow is the error below
        out = xp.astype(scale, xp.float32)
    if scale.dtype == xp.float64:
        if bool(xp.any(xp.isinf(out) & xp.isfinite(scale))):
            raise ValueError(
                "the data's largest magnitude needs a scale beyond float32's range: FP32 "
                "scales cannot reach it"
            )
        tiny = xp.asarray(_F32_TINY, dtype=xp.float32, device=device_of(out))
        out = xp.where(positive & (out == 0), tiny, out)
    return out


def _check_real(xp, x: Array, what: str) -> None:
    """Raise ``TypeError`` unless ``x`` is real (floating, integer or bool)."""
    if not xp.isdtype(x.dtype, ("real floating", "integral", "bool")):
        raise TypeError(f"cannot {what} an array of dtype {x.dtype}")


SCALE_KINDS = ("exponents", "block_scales", "tensor_scale")
"""What :func:`check_scales` checks: MX's E8M0 exponents, NVFP4's E4M3 block scales and its FP32
tensor scale."""


def check_scales(kind: str, values, blocks: tuple[int, ...] | None = None):
    """Return given scales checked: ``ValueError`` (``TypeError`` for a dtype) naming ``kind``.

    ``exponents``: integers in ``[0, 255]`` (biased E8M0; 255 is NaN), returned as int64;
    ``block_scales``: E4M3 values in ``[0, 448]``, returned as float32; both of exactly the
    ``blocks`` shape (the block grid, ``(..., K / block_size)``; no broadcasting) where given.
    ``tensor_scale``: one finite number > 0, returned as a 0-d float32 array. ``values`` stay in
    their namespace and device (a list or a number: NumPy).
    """
    if kind not in SCALE_KINDS:
        raise ValueError(f"kind must be one of {SCALE_KINDS}, got {kind!r}")
    if kind == "tensor_scale" and isinstance(values, (bool, np.bool_)):
        raise TypeError(f"tensor_scale must be a number, got {values!r}")
    if isinstance(values, (int, float, list, tuple, np.generic)):
        try:
            values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{kind} must be numbers, got {values!r}") from None
    v = analyzer_input(values)
    xp = namespace_of(v)
    if not xp.isdtype(v.dtype, ("real floating", "integral")):
        raise TypeError(f"{kind} must be real numbers, got dtype {v.dtype}")
    w = xp.astype(v, xp.float64)
    if kind == "tensor_scale":
        if w.ndim > 1 or (w.ndim == 1 and w.shape[0] != 1):
            raise ValueError(f"tensor_scale must be one number, got shape {tuple(w.shape)}")
        w = xp.reshape(w, ())
        if not bool(xp.isfinite(w) & (w > 0)):
            raise ValueError(f"tensor_scale must be a finite number > 0, got {float(w)!r}")
        return xp.astype(w, xp.float32)
    if blocks is not None and tuple(w.shape) != tuple(blocks):
        raise ValueError(
            f"{kind} of shape {tuple(w.shape)} do not match the blocks {tuple(blocks)}"
        )
    if kind == "exponents":
        ok = (w >= 0) & (w <= E8M0_NAN) & (xp.round(w) == w)  # NaN fails every comparison
        if not bool(xp.all(ok)):
            raise ValueError(f"exponents must be integers in [0, {E8M0_NAN}] (biased E8M0)")
        return xp.astype(w, xp.int64)
    f = xp.astype(w, xp.float32)
    exact = (xp.astype(f, xp.float64) == w) & (quantize(f, E4M3FN) == f)
    if not bool(xp.all((w >= 0) & (w <= E4M3FN.max) & exact)):
        raise ValueError(f"block_scales must be E4M3 values in [0, {E4M3FN.max:g}]")
    return f


def _blocks(xp, x: Array, block_size: int) -> Array:
    """``x`` as float32 ``(..., K / block_size, block_size)`` blocks along its last axis."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    _check_real(xp, x, "quantize")
    x = xp.astype(x, xp.float32)
    if x.ndim == 0 or x.shape[-1] % block_size:
        raise ValueError(
            f"the last axis ({x.shape[-1] if x.ndim else 'none'}) must be a multiple of the "
            f"block size {block_size}"
        )
    return xp.reshape(x, (*x.shape[:-1], x.shape[-1] // block_size, block_size))


def _block_amax(xp, blocks: Array) -> Array:
    """Each block's largest magnitude, NaN where the block holds a NaN ``(..., K/bs)``.

    The standard's ``max`` propagates NaN.
    """
    return xp.max(xp.abs(blocks), axis=-1)


def _float32_exponent(xp, a: Array, round_up: bool) -> Array:
    """Return the unbiased exponent float32's bits hold for ``a >= 0`` (float64, integral).

    ``floor(log2(a))`` for normal values, -127 for zero and subnormals, 128 for infinity and
    NaN; with ``round_up``, one more where the mantissa bits are not all zero.
    """
    dev = device_of(a)
    tiny = xp.asarray(_F32_MIN_NORMAL, dtype=a.dtype, device=dev)
    two = xp.asarray(2.0, dtype=a.dtype, device=dev)
    special = ~xp.isfinite(a)
    normal = (a >= tiny) & ~special
    safe = xp.where(normal, a, tiny)
    e = xp.floor(xp.log2(safe))
    e = xp.where(xp.pow(two, e) > safe, e - 1, e)
    e = xp.where(xp.pow(two, e + 1) <= safe, e + 1, e)
    if round_up:
        e = xp.where(xp.pow(two, e) < safe, e + 1, e)
    sub = (a > 0) & (a < tiny)  # exponent bits 0; with round_up, mantissa bits not 0
    e = xp.where(normal, e, -126.0 if round_up else -127.0)
    e = xp.where(normal | sub, e, -127.0)
    return xp.astype(xp.where(special, 128.0, e), xp.float64)


def _rounded_up_to_mantissa(xp, a: Array, e: Array, mbits: int) -> Array:
    """Return ``e`` (:func:`_float32_exponent`'s floor) of ``a`` rounded half up to ``mbits``.

    torchao's EVEN mode adds half a unit of the element's last mantissa place to the float32
    bits of ``a``: the exponent grows by one where that carries out of the mantissa, that is
    where ``a >= (2 - 2**-(mbits + 1)) * 2**e`` (from the subnormals: ``(1 - ...) * 2**-126``).
    """
    dev = device_of(a)
    a64 = xp.astype(a, xp.float64)
    half = 2.0 ** -(mbits + 1)
    two = xp.asarray(2.0, dtype=xp.float64, device=dev)
    normal = (e > -127) & (e < 128)
    carry = normal & (a64 >= (2 - half) * xp.pow(two, xp.where(normal, e, 0.0)))
    carry = carry | ((e == -127) & (a64 > 0) & (a64 >= (1 - half) * _F32_MIN_NORMAL))
    return xp.where(carry, e + 1, e)


def _rceil_exponents(xp, amax: Array, fmt: ElementFormat) -> Array:
    """Return RCEIL's biased exponents: ``ceil(log2(amax / max))`` in ``[-127, 127]`` + 127.

    ``amax / max`` in float32 (as torchao divides), its exponent rounded up exactly; 254 where
    it is infinite, 255 where NaN, 0 for zero. torchao's eager fallback takes ``log2`` in
    float32, which can round a quotient just above a power of two down to it (NVIDIA's
    hardware conversion, like this, does not).
    """
    dev = device_of(amax)
    d = div(xp, amax, xp.asarray(fmt.max, dtype=xp.float32, device=dev))
    d64 = xp.astype(d, xp.float64)
    live = xp.isfinite(d64) & (d64 > 0)
    safe = xp.where(live, d64, xp.ones_like(d64))
    two = xp.asarray(2.0, dtype=xp.float64, device=dev)
    k = xp.ceil(xp.log2(safe))
    k = xp.where(xp.pow(two, k - 1) >= safe, k - 1, k)
    k = xp.where(xp.pow(two, k) < safe, k + 1, k)
    k = xp.where(live, xp.clip(k, -float(E8M0_BIAS), float(E8M0_BIAS)), -float(E8M0_BIAS))
    biased = xp.where(xp.isinf(d64), 254.0, k + E8M0_BIAS)
    return xp.where(xp.isnan(d64), float(E8M0_NAN), biased)


def mx_exponents(
    x: Array, fmt: ElementFormat, block_size: int = MX_BLOCK, mode: str = "floor"
) -> Array:
    """Return the biased E8M0 shared exponents ``(..., K / block_size)`` of ``x``'s blocks.

    Blocks run along the last axis. ``mode`` (:data:`MX_MODES`, torchao's
    ``ScaleCalculationMode`` and the least-error search): ``"floor"``, the OCP rule
    ``floor(log2(amax)) - emax``; ``"ceil"``, the exponent of ``amax`` rounded up;
    ``"even"``, ``amax`` first rounded half up to the element's mantissa bits, then floor;
    these are clamped to ``[-127, 128]`` and biased by 127. ``"rceil"``, NVIDIA's rule,
    ``ceil(log2(amax / max))`` clamped to ``[-127, 127]`` (254 for an infinite amax);
    ``"mse"``, each block's least-error exponent. A block holding NaN gets 255 (E8M0's NaN).
    The values are torchao's ``to_mx`` scales (int64 here).
    """
    if mode not in MX_MODES:
        raise ValueError(f"mode must be one of {MX_MODES}, got {mode!r}")
    if mode == "even" and not isinstance(fmt, FloatFormat):
        raise ValueError(f"mode 'even' rounds to a float element's mantissa, not {fmt.name}'s")
    fmt = _check_format(fmt)
    x = analyzer_input(x)
    xp = namespace_of(x)
    blocks = _blocks(xp, x, block_size)
    amax = _block_amax(xp, blocks)
    if mode == "rceil":
        return xp.astype(_rceil_exponents(xp, amax, fmt), xp.int64)
    exponent = _float32_exponent(xp, amax, mode == "ceil")
    if mode == "even":
        exponent = _rounded_up_to_mantissa(xp, amax, exponent, fmt.mantissa_bits)
    unbiased = exponent - fmt.max_exponent
    unbiased = xp.clip(unbiased, -float(E8M0_BIAS), float(E8M0_BIAS + 1))
    biased = xp.where(xp.isnan(amax), float(E8M0_NAN), unbiased + E8M0_BIAS)
    if mode == "mse":  # row by row: host backends in cache-sized pieces
        flat = xp.reshape(blocks, (-1, *blocks.shape[-2:]))
        rows = max(1, 2**18 // (flat.shape[1] * flat.shape[2])) if on_host(flat) else flat.shape[0]
        search = partial(_least_error_exponents, xp, fmt=fmt)
        best = in_row_blocks(xp, search, (flat, xp.reshape(biased, flat.shape[:2])), rows)
        biased = xp.reshape(best, biased.shape)
    return xp.astype(biased, xp.int64)


def _mx_elements(
    xp, blocks: Array, biased: Array, fmt: ElementFormat, rceil: bool = False
) -> tuple[Array, Array]:
    """Return ``blocks``' elements and scales ``2**(e - 127)`` under biased exponents ``e``.

    ``e`` is float64 ``(..., K/bs)``; the elements are divided by at least 2**-126, as torchao
    does; with ``rceil``, multiplied by ``2**(127 - e)`` (by 1 where ``e`` is 0, NaN where
    255), as torchao's RCEIL path does.
    """
    dev = device_of(blocks)
    scale = _pow2(xp, biased - E8M0_BIAS, dev)
    with quiet(xp):
        if rceil:
            factor = _pow2(xp, E8M0_BIAS - xp.where(biased == E8M0_NAN, 0.0, biased), dev)
            factor = xp.where(biased == 0, xp.ones_like(factor), factor)
            factor = xp.where(biased == E8M0_NAN, xp.full_like(factor, xp.nan), factor)
            return quantize(blocks * factor[..., None], fmt), scale
        tiny = xp.asarray(_F32_MIN_NORMAL, dtype=xp.float32, device=dev)
        return quantize(div(xp, blocks, xp.maximum(scale, tiny)[..., None]), fmt), scale


def _mx_qdq(xp, blocks: Array, biased: Array, fmt: ElementFormat) -> Array:
    """Quantize-dequantize ``blocks`` with biased exponents (float64 ``(..., K/bs)``)."""
    q, scale = _mx_elements(xp, blocks, biased, fmt)
    with quiet(xp):
        return q * scale[..., None]


def _least_error_exponents(xp, blocks: Array, floor: Array, *, fmt: ElementFormat) -> Array:
    """Return each block's exponent of least squared quantize-dequantize error.

    The candidates are ``floor``, ``floor + 1`` and ``floor - 1`` (biased, float64); the first
    of them wins ties.
    """
    candidates = (
        xp.where(floor == E8M0_NAN, floor, xp.clip(floor + step, 0.0, 254.0))
        for step in (0.0, 1.0, -1.0)
    )
    return _least_error(xp, blocks, candidates, lambda e: _mx_qdq(xp, blocks, e, fmt))


def _least_error(xp, blocks: Array, candidates, qdq) -> Array:
    """Return, per block, the first of ``candidates`` whose ``qdq(candidate)`` errs least.

    The error is the block's sum of squared differences (float64) between ``blocks`` and their
    quantize-dequantize; a block with an infinite value errs infinitely under every candidate
    and keeps the first.
    """
    x64 = xp.astype(blocks, xp.float64)
    best = best_err = None
    for cand in candidates:
        with quiet(xp):
            d = x64 - xp.astype(qdq(cand), xp.float64)
            err = xp.sum(d * d, axis=-1)
        if best is None:
            best, best_err = cand, err
            continue
        better = err < best_err
        best, best_err = xp.where(better, cand, best), xp.where(better, err, best_err)
    return best


def _pow2(xp, exponent: Array, dev) -> Array:
    """``2**exponent`` in float32 for integral float64 ``exponent`` in [-149, 128] (128: inf)."""
    big = exponent > 127
    p = xp.pow(xp.asarray(2.0, dtype=xp.float64, device=dev), xp.where(big, 0.0, exponent))
    return xp.where(big, xp.inf, xp.astype(p, xp.float32))


def mx_quantize(
    x: Array,
    fmt: ElementFormat,
    block_size: int = MX_BLOCK,
    mode: str = "floor",
    exponents: Array | None = None,
) -> tuple[Array, Array]:
    """Return ``(elements, exponents)``: ``x`` in OCP MX blocks of ``fmt`` elements.

    ``elements`` (float32, ``x``'s shape) are values of ``fmt``: ``x`` divided by its block's
    scale ``2**(exponent - 127)`` (at least 2**-126, as torchao divides; ``mode="rceil"``: as
    torchao's RCEIL path, a block of exponent 0 is not scaled), saturated and rounded to
    nearest even; ``exponents`` are :func:`mx_exponents` of ``mode`` (or the given
    ``exponents``, e.g. read back with :func:`from_json`, taken as ``"floor"`` takes its own).
    Bit-exact with torchao's ``to_mx`` on the CPU for each of its modes (its elements decoded
    to float32), NaN blocks aside (torchao's FP4 / FP6 codes of NaN are not defined; here
    they are NaN).
    """
    x = analyzer_input(x)
    xp = namespace_of(x)
    fmt = _check_format(fmt)
    blocks = _blocks(xp, x, block_size)
    if exponents is None:
        biased = mx_exponents(x, fmt, block_size, mode)
    else:
        biased = check_scales("exponents", exponents, tuple(blocks.shape[:-1]))
        biased = xp.asarray(biased, device=device_of(blocks))
    rceil = exponents is None and mode == "rceil"
    q, _ = _mx_elements(xp, blocks, xp.astype(biased, xp.float64), fmt, rceil)
    return xp.reshape(q, tuple(x.shape)), biased


def mx_dequantize(elements: Array, exponents: Array, block_size: int = MX_BLOCK) -> Array:
    """Return ``elements * 2**(exponent - 127)`` block by block (float32; NaN where 255).

    torchao's ``to_dtype``: its scale is ``2**(e - 127)`` even for ``e = 0`` (2**-127), where
    quantization divided by 2**-126, so such blocks (all magnitudes below ``2**(emax - 127)``)
    come back halved, as in torchao.
    """
    xp = namespace_of(elements)
    blocks = _blocks(xp, elements, block_size)
    exponents = check_scales("exponents", exponents, tuple(blocks.shape[:-1]))
    e = xp.astype(exponents, xp.float64) - E8M0_BIAS
    scale = _pow2(xp, e, device_of(blocks))
    scale = xp.where(exponents == E8M0_NAN, xp.full_like(scale, xp.nan), scale)
    with quiet(xp):  # a huge block scale overflows to infinity, as in torchao
        return xp.reshape(blocks * scale[..., None], tuple(elements.shape))


# -- NVFP4: blocks of 16 FP4 values, an E4M3 block scale and an FP32 tensor scale ------------
NVFP4_BLOCK = 16
"""The NVFP4 block size."""


def nvfp4_tensor_scale(x: Array) -> Array:
    """Return the per-tensor FP32 scale ``amax / (448 * 6)`` (torchao, Model Optimizer)."""
    x = analyzer_input(x)
    xp = namespace_of(x)
    amax = xp.max(_finite_magnitudes(xp, _work(xp, x)))  # NaN, inf: left out; float64 stays
    big = xp.asarray(E4M3FN.max * E2M1.max, dtype=amax.dtype, device=device_of(amax))
    return _fp32_scale(xp, div(xp, amax, big), amax > 0)


NVFP4_MODES = ("amax", "mse")
"""How NVFP4 block scales are chosen: ``amax`` (``amax / 6`` rounded to E4M3, the references'),
or ``mse``: of that E4M3 value, the three below it and the one above, the one whose
quantize-dequantize of the block has the least squared error (``amax``'s on ties)."""

_NVFP4_STEPS = (0, -1, -2, -3, 1)
"""The E4M3 neighbours the ``mse`` mode tries, in order of preference on ties."""


def nvfp4_quantize(
    x: Array,
    tensor_scale: Array | None = None,
    block_scales: Array | None = None,
    mode: str = "amax",
) -> tuple[Array, Array]:
    """Return ``(elements, block_scales)``: ``x`` in NVFP4 blocks of 16 along its last axis.

    Each block's scale is ``amax / 6``, divided by ``tensor_scale`` (two-level scaling; None:
    one level) and rounded to E4M3 (clamped to ``[2**-6, 448]``); elements are ``x`` times
    the reciprocal of the combined scale, saturated and rounded to E2M1 (float32 values).
    ``block_scales`` are the E4M3 values (float32, ``(..., K / 16)``; given, e.g. read back with
    :func:`from_json`, they are used as they are). ``mode="mse"`` searches each block's scale
    among E4M3 neighbours of the amax one (:data:`NVFP4_MODES`). Bit-exact with torchao's
    ``nvfp4_quantize`` on the CPU (``mode="amax"``), whose arithmetic this follows step by step.
    """
    if mode not in NVFP4_MODES:
        raise ValueError(f"mode must be one of {NVFP4_MODES}, got {mode!r}")
    x = analyzer_input(x)
    xp = namespace_of(x)
    blocks = _blocks(xp, x, NVFP4_BLOCK)
    dev = device_of(blocks)
    six = xp.asarray(E2M1.max, dtype=xp.float32, device=dev)
    block_scale = div(xp, xp.max(_finite_magnitudes(xp, blocks), axis=-1), six)
    eps = float(2.0**E4M3FN.min_exponent)  # E4M3's smallest normal value
    ts = None
    if tensor_scale is not None:
        ts = xp.asarray(check_scales("tensor_scale", tensor_scale), device=dev)
    if block_scales is not None:
        fp8 = check_scales("block_scales", block_scales, tuple(block_scale.shape))
        fp8 = xp.asarray(fp8, device=dev)
    else:
        wanted = block_scale if ts is None else div(xp, block_scale, ts)
        fp8 = quantize(xp.clip(wanted, eps, E4M3FN.max), E4M3FN)
        if mode == "mse":
            fp8 = _least_error_block_scales(xp, blocks, ts, fp8, eps)
    return xp.reshape(_nvfp4_elements(xp, blocks, ts, fp8), tuple(x.shape)), fp8


def _nvfp4_elements(xp, blocks: Array, ts: Array | None, fp8: Array) -> Array:
    """Return ``blocks``' E2M1 elements under E4M3 block scales ``fp8`` (and ``ts``)."""
    one = xp.asarray(1.0, dtype=xp.float32, device=device_of(blocks))
    reciprocal = div(xp, one, fp8) if ts is None else div(xp, div(xp, one, ts), fp8)
    with quiet(xp):
        scaled = xp.clip(blocks * reciprocal[..., None], -E2M1.max, E2M1.max)
    return quantize(scaled, E2M1)


def _least_error_block_scales(xp, blocks: Array, ts, fp8: Array, eps: float) -> Array:
    """Return each block's E4M3 scale of least squared error among ``fp8``'s neighbours."""
    dev = device_of(blocks)
    table = xp.asarray(E4M3FN.values(), dtype=xp.float32, device=dev)
    lowest = int(np.searchsorted(E4M3FN.values(), eps))
    idx = xp.searchsorted(table, xp.reshape(fp8, (-1,)))
    candidates = (
        xp.reshape(xp.take(table, xp.clip(idx + step, lowest, table.shape[0] - 1)), fp8.shape)
        for step in _NVFP4_STEPS
    )

    def qdq(cand: Array) -> Array:
        scale = cand if ts is None else ts * cand
        return _nvfp4_elements(xp, blocks, ts, cand) * scale[..., None]

    return _least_error(xp, blocks, candidates, qdq)


def nvfp4_dequantize(
    elements: Array, block_scales: Array, tensor_scale: Array | None = None
) -> Array:
    """Return ``elements * (tensor_scale * block_scale)`` block by block (float32)."""
    xp = namespace_of(elements)
    blocks = _blocks(xp, elements, NVFP4_BLOCK)
    scale = check_scales("block_scales", block_scales, tuple(blocks.shape[:-1]))
    scale = xp.asarray(scale, device=device_of(blocks))
    if tensor_scale is not None:
        ts = check_scales("tensor_scale", tensor_scale)
        scale = xp.asarray(ts, device=device_of(scale)) * scale
    return xp.reshape(blocks * scale[..., None], tuple(elements.shape))


# -- integer groups: signed integers with one FP32 scale per block ------------------------------
INT_BLOCK = 128
"""The integer groups' block size (INT4 weights in groups of 128, as GPTQ, AWQ and torchao)."""

INT_BLOCK_MODES = ("amax", "mse")
"""How an integer block's scale is chosen: ``amax`` (``amax / (2**(bits-1) - 1)``), or
``mse``: of ``amax`` shrunk by ``1 - k / 64`` for ``k = 0 .. 31``, the scale whose
quantize-dequantize of the block has the least squared error (the larger on ties)."""

_INT_SHRINK = 32


def _int_elements(xp, blocks: Array, scale: Array, fmt: IntFormat) -> Array:
    with quiet(xp):
        scaled = div(xp, blocks, scale[..., None])
    return xp.clip(xp.round(scaled), fmt.min, fmt.max)


def int_block_quantize(
    x: Array,
    fmt: IntFormat = INT4,
    block_size: int = INT_BLOCK,
    mode: str = "amax",
    scales: Array | None = None,
) -> tuple[Array, Array]:
    """Return ``(elements, scales)``: ``x`` in signed integer blocks along its last axis.

    Each block of ``block_size`` values gets one FP32 scale (``mode``:
    :data:`INT_BLOCK_MODES`); elements are ``x / scale`` rounded to the nearest integer (ties
    to even) and clamped to ``[fmt.min, fmt.max]`` (float32 values). A block of zeros gets the
    scale 1 (its elements are 0). ``x`` must be finite; ``scales`` is ``(..., K / block_size)``
    (given, e.g. read back with :func:`from_json`, they are used as they are).

    Examples
    --------
    >>> import numpy as np
    >>> from encanalyze.formats import int_block_dequantize, int_block_quantize
    >>> x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(2, 128)
    >>> q, s = int_block_quantize(x)
    >>> s.tolist() == [np.float32(1 / 7), np.float32(1 / 7)], float(q.max()), float(q.min())
    (True, 7.0, -7.0)
    >>> float(np.abs(int_block_dequantize(q, s) - x).max()) <= 0.5 / 7
    True
    """
    if mode not in INT_BLOCK_MODES:
        raise ValueError(f"mode must be one of {INT_BLOCK_MODES}, got {mode!r}")
    if not isinstance(fmt, IntFormat):
        raise TypeError(f"integer blocks take an IntFormat, got {fmt!r}")
    x = analyzer_input(x)
    xp = namespace_of(x)
    blocks = _blocks(xp, x, block_size)
    if not bool(xp.all(xp.isfinite(blocks))):
        raise ValueError("integer blocks take finite values only")
    if scales is not None:
        scale = xp.astype(xp.asarray(scales, device=device_of(blocks)), xp.float32)
        if tuple(scale.shape) != tuple(blocks.shape[:-1]) or not bool(xp.all(scale > 0)):
            raise ValueError(
                f"scales must be numbers > 0 of the blocks' shape {tuple(blocks.shape[:-1])}"
            )
        return xp.reshape(_int_elements(xp, blocks, scale, fmt), tuple(x.shape)), scale
    amax = xp.max(xp.abs(blocks), axis=-1)
    top = xp.asarray(fmt.max, dtype=xp.float32, device=device_of(blocks))
    scale = xp.where(amax > 0, div(xp, amax, top), xp.ones_like(amax))
    if mode == "mse":
        candidates = [scale * float(np.float32(1 - k / 64)) for k in range(_INT_SHRINK)]
        scale = _least_error(
            xp, blocks, candidates, lambda s: _int_elements(xp, blocks, s, fmt) * s[..., None]
        )
    q = _int_elements(xp, blocks, scale, fmt)
    return xp.reshape(q, tuple(x.shape)), scale


def int_block_dequantize(elements: Array, scales: Array, block_size: int = INT_BLOCK) -> Array:
    """Return ``elements * scale`` block by block (float32)."""
    xp = namespace_of(elements)
    blocks = _blocks(xp, elements, block_size)
    if tuple(scales.shape) != tuple(blocks.shape[:-1]):
        raise ValueError(
            f"scales of shape {tuple(scales.shape)} do not match the blocks "
            f"{tuple(blocks.shape[:-1])}"
        )
    return xp.reshape(blocks * xp.astype(scales, xp.float32)[..., None], tuple(elements.shape))


BLOCK_SIZES = {"mx": MX_BLOCK, "nvfp4": NVFP4_BLOCK, "int_groups": INT_BLOCK}
"""Each block scheme's block size."""

BLOCK_METHODS = ("minmax", "mse")
"""The block formats' methods: the references' amax scales (MX: the floor exponent; NVFP4:
``amax / 6`` in E4M3), or each block's least-error scale (``mode="mse"``)."""


@dataclass(frozen=True)
class BlockEncoding:
    """A tensor in blocks along its last axis (:func:`block_encode`).

    ``elements``: the element values (float32, the tensor's shape); ``scales``: each block's
    FP32 scale, the product an element is multiplied by (``(..., K / block_size)``, NaN for an
    MX block of NaN exponent); ``dequantized``: ``elements`` times their scales (float32);
    ``export``: :func:`to_json`'s dict of the encodings (``block_axis`` as given).
    """

    elements: Array
    scales: Array
    dequantized: Array
    export: dict


def block_encode(
    x: Array, scheme: str, fmt: ElementFormat, method: str = "minmax", block_axis: int = -1
) -> BlockEncoding:
    """Return ``x`` in blocks of ``scheme`` (:data:`BLOCK_SIZES`) along its last axis.

    ``method`` (:data:`BLOCK_METHODS`): ``"minmax"``, the references' amax scales (MX: the
    floor exponent; NVFP4: ``amax / 6`` in E4M3 under the tensor scale; integer groups:
    ``amax / qmax``), or ``"mse"``, each block's least-error scale. ``fmt``: the element
    format (NVFP4's is E2M1 whatever is given). ``block_axis`` is written into ``export``
    only: the axis the blocks run along in the caller's tensor.

    Examples
    --------
    >>> import numpy as np
    >>> from encanalyze.formats import E2M1, block_encode
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    >>> enc = block_encode(x, "mx", E2M1)
    >>> enc.scales.tolist(), enc.export["scales"]
    ([[0.25], [0.25]], [[125], [125]])
    >>> bool(np.all(enc.dequantized == enc.elements * 0.25))
    True
    """
    if method not in BLOCK_METHODS:
        raise ValueError(f"block method must be one of {BLOCK_METHODS}, got {method!r}")
    x = analyzer_input(x)
    xp = namespace_of(x)
    mode = "mse" if method == "mse" else None
    if scheme == "mx":
        elements, exps = mx_quantize(x, fmt, mode=mode or "floor")
        dequantized = mx_dequantize(elements, exps)
        e = xp.astype(exps, xp.float64) - E8M0_BIAS
        scales = _pow2(xp, e, device_of(elements))
        scales = xp.where(exps == E8M0_NAN, xp.full_like(scales, xp.nan), scales)
        export = to_json("mx", exps, fmt, block_axis=block_axis)
    elif scheme == "int_groups":
        elements, scales = int_block_quantize(x, fmt, INT_BLOCK, mode=mode or "amax")
        dequantized = int_block_dequantize(elements, scales)
        export = to_json("int_groups", scales, fmt, block_axis=block_axis)
    elif scheme == "nvfp4":
        ts = nvfp4_tensor_scale(x)
        elements, block_scales = nvfp4_quantize(x, ts, mode=mode or "amax")
        dequantized = nvfp4_dequantize(elements, block_scales, ts)
        scales = xp.astype(ts, xp.float32) * block_scales
        export = to_json("nvfp4", block_scales, tensor_scale=ts, block_axis=block_axis)
    else:
        raise ValueError(f"scheme must be one of {tuple(BLOCK_SIZES)}, got {scheme!r}")
    return BlockEncoding(elements, scales, dequantized, export)


# -- choosing an FP32 scale from histograms: the least expected noise on the format's grid -----
SEARCH_CANDIDATES = 128
"""Candidate scales per encoding: ``amax * k / 128`` for ``k = 1..128``, over ``fmt.max``."""


def search_scale(stats, fmt: ElementFormat, *, num_candidates: int = SEARCH_CANDIDATES, gamma=1.0):
    """Return the FP32 scale of least expected noise on ``fmt``'s grid, per encoding.

    ``stats`` is a :class:`~encanalyze.Histogram` (any analyzer's histogram statistics:
    streamed, merged, saved). Each bin's count sits at its midpoint, as in the integer SQNR
    search; a candidate ``amax * k / num_candidates`` (``amax`` the observed largest magnitude)
    scores ``sum(count * (quantize(m / s) * s - m)**2)`` with ``s = candidate / fmt.max``, the
    clipped bins (``|m|`` beyond the candidate) weighted by ``gamma``, over the format's real,
    non-uniform grid. The least noise wins (the largest candidate on ties, so never more
    noise than amax scaling on the histogram). Encodings that saw only zeros get scale 1.
    Returns an array of the encoding shape, float32, in the statistics' namespace and device.
    """
    xp = namespace_of(stats.histogram)
    shape, num_bins = tuple(stats.shape), stats.histogram.shape[-1]
    rows = math.prod(shape)
    counts = xp.reshape(stats.histogram, (rows, num_bins))
    points = midpoints(xp.reshape(xp.astype(stats.bin_edges, xp.float32), (rows, num_bins + 1)))
    width = occupied_width(xp, counts)
    if 4 * width <= num_bins:  # weights: a few values in many bins, their occupied bins only
        counts, points = occupied_first(xp, counts, points, width)
    amax = xp.reshape(_stats_amax(xp, stats), (rows,))
    dev = device_of(amax)
    k = xp.arange(1, num_candidates + 1, dtype=xp.float32, device=dev)
    cands = div(xp, amax[:, None] * k[None, :], float(num_candidates))  # (E, C)
    step = max(1, 2**22 // max(1, num_candidates * counts.shape[1])) if on_host(counts) else rows
    search = partial(_least_noise, xp, fmt=fmt, gamma=float(gamma))
    best = in_row_blocks(xp, search, (counts, points, cands), step)
    scale = div(xp, best, xp.asarray(fmt.max, dtype=xp.float32, device=dev))
    return xp.reshape(xp.where(best > 0, scale, xp.ones_like(scale)), shape)


def _least_noise(xp, counts: Array, points: Array, cands: Array, *, fmt, gamma: float) -> Array:
    """Return each row's candidate amax of least noise (the last one on ties), ``(E,)``."""
    noise = candidate_noise(xp, counts, points, cands, fmt, gamma)
    num = cands.shape[1]
    last = num - 1 - xp.argmin(xp.flip(noise, axis=1), axis=1)  # the largest of the least
    return take_rows(xp, cands, xp.astype(last, xp.int64))


def candidate_noise(xp, counts: Array, points: Array, cands: Array, fmt, gamma: float) -> Array:
    """Return :func:`search_scale`'s score ``(E, C)`` (float64) of every candidate.

    Masses ``counts`` at ``points`` (both ``(E, P)``), candidate amax ``cands`` ``(E, C)``.
    """
    m = points[:, None, :]
    a = cands[:, :, None]
    s = div(xp, a, xp.asarray(fmt.max, dtype=xp.float32, device=device_of(a)))
    safe = xp.where(s > 0, s, xp.ones_like(s))
    with quiet(xp):
        q = quantize(div(xp, m, safe), fmt) * safe
    err = xp.astype(q - m, xp.float64)
    err = err * err
    if gamma != 1:
        err = xp.where(xp.abs(m) > a, err * gamma, err)
    return xp.sum(xp.astype(counts, xp.float64)[:, None, :] * err, axis=-1)


def _stats_amax(xp, stats) -> Array:
    """Each encoding's largest observed magnitude (float32); 0 where it saw no finite value."""
    lo, hi = xp.astype(stats.min, xp.float32), xp.astype(stats.max, xp.float32)
    amax = xp.maximum(xp.abs(lo), xp.abs(hi))
    return xp.where(xp.isfinite(amax) & (lo <= hi), amax, xp.zeros_like(amax))


FLOAT_METHODS = ("minmax", "percentile", "mse", "sqnr")
"""The range methods on float grids (:func:`compute_scale`)."""

SEARCH_METHODS = ("mse", "sqnr")
"""The methods of :data:`FLOAT_METHODS` that search the scale on the format's grid."""


def compute_scale(
    stats,
    fmt: ElementFormat,
    method: str = "minmax",
    *,
    percentile: float = 99.99,
    gamma: float = 3.0,
    num_candidates: int = SEARCH_CANDIDATES,
) -> Array:
    """Return each encoding's FP32 scale for ``fmt`` by ``method``, from statistics.

    ``stats`` are any analyzer's statistics (streamed, merged, saved or all-reduced):
    :class:`~encanalyze.MinMaxRange` for ``"minmax"``, :class:`~encanalyze.Histogram` for
    every method. ``"minmax"``: ``amax / fmt.max`` (Model Optimizer's and torchao's amax
    scaling); ``"percentile"``: the largest magnitude of the percentile range (the integer
    percentile method's clipping of each tail) over ``fmt.max``; ``"mse"``: the least squared
    error on the format's grid (:func:`search_scale` with ``gamma=1``); ``"sqnr"``: the same
    search with the clipped bins' noise weighted by ``gamma`` (3, the integer SQNR search's
    default). Encodings that saw only zeros (or nothing) get scale 1. Returns float32 scales of
    the encoding shape in the statistics' namespace and device.
    """
    if method not in FLOAT_METHODS:
        raise ValueError(f"method must be one of {FLOAT_METHODS}, got {method!r}")
    if not isinstance(stats, (Histogram, MinMaxRange)):
        raise TypeError(f"not statistics: {type(stats).__name__} (a Histogram or MinMaxRange)")
    if method != "minmax" and not isinstance(stats, Histogram):
        raise TypeError(f"method {method!r} needs Histogram statistics, got {type(stats).__name__}")
    xp = namespace_of(stats.min)
    if method == "mse":
        return search_scale(stats, fmt, num_candidates=num_candidates, gamma=1.0)
    if method == "sqnr":
        if not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
        return search_scale(stats, fmt, num_candidates=num_candidates, gamma=gamma)
    amax = _stats_amax(xp, stats)
    if method == "percentile" and validate_percentile(percentile) < 100:
        rows, num_bins = math.prod(stats.shape), stats.histogram.shape[-1]
        counts = xp.reshape(stats.histogram, (rows, num_bins))
        edges = xp.reshape(xp.astype(stats.bin_edges, xp.float32), (rows, num_bins + 1))
        lo, hi = percentile_range(xp, counts, edges, percentile)
        clipped = xp.reshape(xp.maximum(xp.abs(lo), xp.abs(hi)), stats.shape)
        amax = xp.minimum(clipped, amax)
    scale = div(xp, amax, xp.asarray(fmt.max, dtype=xp.float32, device=device_of(amax)))
    return xp.where(amax > 0, scale, xp.ones_like(scale))


class FloatEncodingAnalyzer:
    """Streaming calibration of FP32 scales for a float element format.

    A thin layer over an ordinary analyzer (:attr:`analyzer`: min-max statistics for
    ``"minmax"``, a histogram for the other methods), so its statistics stream, merge, save,
    load and all-reduce as every analyzer's do; :meth:`compute_scale` applies
    :func:`compute_scale` to them.

    Parameters
    ----------
    fmt
        The element format (:data:`E4M3FN`, ...).
    shape, block_size
        The encoding shape and block size, as for every analyzer (``(64, 1)``: one scale per
        row of a ``(64, K)`` weight).
    method
        One of :data:`FLOAT_METHODS`.
    num_bins, percentile, gamma
        The histogram's bins and the methods' parameters.

    Examples
    --------
    >>> import numpy as np
    >>> from encanalyze.formats import E4M3FN, FloatEncodingAnalyzer
    >>> analyzer = FloatEncodingAnalyzer(E4M3FN, (2, 1), method="minmax")
    >>> _ = analyzer.update_stats(np.array([[0.5, -896.0], [1.0, 2.0]], np.float32))
    >>> analyzer.compute_scale().ravel().tolist()
    [2.0, 0.004464285913854837]
    """

    def __init__(
        self,
        fmt: ElementFormat,
        shape,
        method: str = "sqnr",
        *,
        block_size=None,
        num_bins: int = 2048,
        percentile: float = 99.99,
        gamma: float = 3.0,
    ) -> None:
        if not isinstance(fmt, (FloatFormat, FixedFormat)):
            raise TypeError(f"fmt must be a FloatFormat or FixedFormat, got {type(fmt).__name__}")
        if method not in FLOAT_METHODS:
            raise ValueError(f"method must be one of {FLOAT_METHODS}, got {method!r}")
        if not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
        self.fmt, self.method = fmt, method
        self.percentile, self.gamma = validate_percentile(percentile), float(gamma)
        if method == "minmax":
            self.analyzer = MinMaxEncodingAnalyzer(shape, block_size=block_size)
        else:
            self.analyzer = PercentileEncodingAnalyzer(shape, num_bins, block_size=block_size)

    def __repr__(self) -> str:
        return f"FloatEncodingAnalyzer({self.fmt.name}, {self.analyzer.shape}, {self.method!r})"

    def update_stats(self, x: Array):
        """Add ``x`` to the statistics; return this batch's statistics."""
        return self.analyzer.update_stats(x)

    def get_stats(self):
        """Return the running statistics (``None`` before the first update)."""
        return self.analyzer.get_stats()

    def reset_stats(self) -> None:
        """Forget the statistics."""
        self.analyzer.reset_stats()

    def merge(self, *others: FloatEncodingAnalyzer) -> FloatEncodingAnalyzer:
        """Merge the statistics of ``others`` (same method and parameters); return ``self``."""
        self.analyzer.merge(*(o.analyzer for o in others))
        return self

    def compute_scale(self) -> Array:
        """Return the FP32 scales of the statistics (``StatisticsNotFoundError`` before any)."""
        stats = self.analyzer.get_stats()
        if stats is None:
            raise StatisticsNotFoundError("no statistics: call update_stats first")
        return self.compute_scale_from_stats(stats)

    def compute_scale_from_stats(self, stats) -> Array:
        """Return the FP32 scales of ``stats`` (e.g. merged from several processes)."""
        return compute_scale(
            stats, self.fmt, self.method, percentile=self.percentile, gamma=self.gamma
        )


# -- a JSON layout for block encodings ------------------------------------------------------
JSON_VERSION = 1
"""Version of :func:`to_json`'s layout."""


def to_json(
    scheme: str,
    scales: Array,
    fmt: ElementFormat = E2M1,
    tensor_scale=None,
    block_axis: int = -1,
) -> dict:
    """Return block encodings as a JSON-compatible dict (the documented layout).

    ``scheme`` ``"mx"``: ``scales`` are :func:`mx_exponents` (biased E8M0 integers), ``fmt``
    the element format, blocks of 32; ``"nvfp4"``: ``scales`` are the E4M3 block scales of
    :func:`nvfp4_quantize` (E2M1 elements, blocks of 16) and ``tensor_scale`` the optional FP32
    tensor scale. Blocks run along ``block_axis`` of the tensor; ``scales`` is a nested list of
    the block grid ``(..., K / block_size)`` of the tensor with that axis moved last (as the
    quantize functions take it). See ``docs/formats.rst``.
    """
    values = to_numpy(scales)
    if scheme == "mx":
        out = {"scheme": "mx", "element_format": fmt.name, "block_size": MX_BLOCK}
        out |= {"scale_format": "e8m0", "scale_bias": E8M0_BIAS}
        out["scales"] = np.asarray(values, dtype=np.int64).tolist()
    elif scheme == "nvfp4":
        out = {"scheme": "nvfp4", "element_format": E2M1.name, "block_size": NVFP4_BLOCK}
        out |= {"scale_format": E4M3FN.name}
        out["scales"] = np.asarray(values, dtype=np.float32).astype(float).tolist()
        out["tensor_scale"] = None if tensor_scale is None else float(to_numpy(tensor_scale))
    elif scheme == "int_groups":
        out = {"scheme": "int_groups", "element_format": fmt.name, "block_size": INT_BLOCK}
        out |= {"scale_format": "float32"}
        out["scales"] = np.asarray(values, dtype=np.float32).astype(float).tolist()
    else:
        raise ValueError(f"scheme must be 'mx', 'nvfp4' or 'int_groups', got {scheme!r}")
    if isinstance(block_axis, bool) or not isinstance(block_axis, int):
        raise TypeError(f"block_axis must be an integer, got {block_axis!r}")
    return {"format_version": JSON_VERSION, "block_axis": block_axis, **out}


def from_json(data: dict) -> dict:
    """Return :func:`to_json`'s dict checked, with ``scales`` as a NumPy array and ``format``.

    The result's keys: ``scheme``, ``format`` (a :class:`FloatFormat`), ``block_size``,
    ``block_axis``, ``scales`` and, for NVFP4, ``tensor_scale``: what :func:`mx_quantize`
    (``exponents=``) and :func:`nvfp4_quantize` (``block_scales=``, ``tensor_scale=``) take.
    ``ValueError`` for a dict of another layout or version.
    """
    try:
        version, scheme, name = data["format_version"], data["scheme"], data["element_format"]
        block_size, scales = data["block_size"], data["scales"]
    except (KeyError, TypeError):
        raise ValueError("not a block-encodings dict (see encanalyze.formats.to_json)") from None
    if version != JSON_VERSION:
        raise ValueError(f"unsupported block-encodings version {version!r}")
    if scheme not in BLOCK_SIZES or name not in FORMATS:
        raise ValueError(f"unknown scheme {scheme!r} or element format {name!r}")
    if BLOCK_SIZES.get(scheme) != block_size:
        raise ValueError(f"{scheme} blocks are not {block_size!r} values long")
    try:
        array = np.asarray(scales, dtype=np.float64)  # 127.9 is no exponent: not truncated
    except (TypeError, ValueError, OverflowError):
        raise ValueError("block-encodings scales must be a nested list of numbers") from None
    if scheme == "int_groups":
        if not isinstance(FORMATS[name], IntFormat):
            raise ValueError(f"integer groups hold integers, not {name!r}")
        if not np.all(np.isfinite(array) & (array > 0)):
            raise ValueError("integer group scales must be finite numbers > 0")
        array = array.astype(np.float32)
    else:
        array = check_scales("exponents" if scheme == "mx" else "block_scales", array)
    axis = data.get("block_axis", -1)
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ValueError(f"block_axis must be an integer, got {axis!r}")
    out = {"scheme": scheme, "format": FORMATS[name], "block_size": block_size, "scales": array}
    out["block_axis"] = axis
    if scheme == "nvfp4":
        ts = data.get("tensor_scale")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
            raise ValueError(f"tensor_scale must be a number, got {ts!r}")
        out["tensor_scale"] = None if ts is None else np.float32(check_scales("tensor_scale", ts))
    return out


# -- the number formats: one registry ----------------------------------------------------------
@dataclass(frozen=True)
class NumberFormat:
    """A number format a tensor is quantized to, by name (``--number-format``).

    ``scheme``: ``"int"`` (the integer grids of a bit width), ``"scaled"`` (an element format
    with one FP32 scale per tensor or channel: FP8, FP6, FP4), ``"mx"`` (OCP MX blocks of
    :data:`MX_BLOCK` with E8M0 scales), ``"nvfp4"`` (blocks of :data:`NVFP4_BLOCK` with E4M3
    scales and an FP32 tensor scale) or ``"int_groups"`` (INT4 weights in blocks of
    :data:`INT_BLOCK` with FP32 scales); ``element``: the element format (``None`` for ``int``);
    ``methods``: the range methods it has; ``onnx_type``: the ``TensorProto`` type an ONNX
    ``QuantizeLinear`` produces for it (``None``: ONNX has none); ``block_size``: its block
    (``None``: not a block format).
    """

    name: str
    scheme: str
    element: ElementFormat | None
    methods: tuple[str, ...]
    onnx_type: str | None = None
    block_size: int | None = None


def _number_formats() -> dict[str, NumberFormat]:
    out = {"int": NumberFormat("int", "int", None, ())}
    for element, onnx_type in (
        (E4M3FN, "FLOAT8E4M3FN"), (E5M2, "FLOAT8E5M2"), (E3M2, None), (E2M3, None), (E2M1, None)
    ):  # fmt: skip
        out[element.name] = NumberFormat(element.name, "scaled", element, FLOAT_METHODS, onnx_type)
    for name, element in (
        ("mxfp8_e4m3", E4M3FN), ("mxfp8_e5m2", E5M2), ("mxfp6_e3m2", E3M2),
        ("mxfp6_e2m3", E2M3), ("mxfp4", E2M1), ("mxint8", INT8),
    ):  # fmt: skip
        out[name] = NumberFormat(name, "mx", element, BLOCK_METHODS, None, MX_BLOCK)
    out["nvfp4"] = NumberFormat("nvfp4", "nvfp4", E2M1, BLOCK_METHODS, None, NVFP4_BLOCK)
    out["int4_g128"] = NumberFormat("int4_g128", "int_groups", INT4, BLOCK_METHODS, None, INT_BLOCK)
    return out


NUMBER_FORMATS = _number_formats()
"""Every number format by name: :class:`NumberFormat` (``int``, the FP8 / FP6 / FP4 element
formats with FP32 scales, the MX formats, NVFP4, INT4 groups of 128)."""
