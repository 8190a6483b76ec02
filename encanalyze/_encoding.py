"""The min-max encoding rules and conversions between (min, max) and (scale, offset).

All functions are pure and work on all encodings at once.
"""

from __future__ import annotations

import math
import numbers

from ._backends import clip, primitives
from ._grid import EPS_FLOAT32, minimum_scale, symmetric_steps, warn_clamped
from ._xp import Array, Namespace, device_of, div, index_dtype, namespace_of, work_dtype

__all__ = [
    "EPS_FLOAT32",
    "clamp_to_finite",
    "minimum_scale",
    "minmax_encoding",
    "symmetric_steps",
    "to_scale_offset",
    "validate_num_steps",
]

MAX_NUM_STEPS = 2**32 - 1
"""The largest grid: 32-bit integers."""


def validate_num_steps(num_steps: object, is_symmetric: bool = False) -> int:
    """Return ``num_steps`` as an int after validating it.

    ``num_steps`` may be an int or an integral float (``math.pow(2, 8)``) and must be > 0;
    symmetric encodings need at least 2 steps.

    Raises
    ------
    TypeError
        If ``num_steps`` is not a real number (bools included).
    ValueError
        If it is zero, negative, non-integral, non-finite or above :data:`MAX_NUM_STEPS`, or
        < 2 for symmetric encodings.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Real):
        raise TypeError(f"num_steps must be an int or an integral float, got {num_steps!r}")
    try:
        value = float(num_steps)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value) or value != math.floor(value) or value <= 0:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if value > MAX_NUM_STEPS:
        raise ValueError(f"num_steps must be at most 2**32 - 1 (32-bit grids), got {num_steps!r}")
    steps = int(value)
    if is_symmetric and steps < 2:
        raise ValueError(f"symmetric encodings need num_steps >= 2, got {num_steps!r}")
    return steps


def minmax_encoding(
    xp: Namespace,
    lo: Array,
    hi: Array,
    num_steps: int,
    is_symmetric: bool,
    out_dtype=None,
    *,
    two_bit_step: bool = True,
) -> tuple[Array, Array]:
    """Apply the min-max encoding rules to a ``(lo, hi)`` pair of arrays.

    1. Zero is put into the range.
    2. Ranges narrower than ``num_steps * minimum_scale(num_steps)`` are widened.
    3. Symmetric encodings get ``ceil(n/2)`` negative and ``floor(n/2)`` positive steps of one
       delta. With ``two_bit_step`` (min-max's rule) the 2-bit grid, ``n == 3``, divides ``hi``
       by one extra positive step; the histogram methods pass ``False``, as the reference's
       percentile does: range (-10, 10), n = 3 gives (-10, 5) with it and (-20, 10) without.
    4. Infinities are clamped to the dtype's finite extremes (with a ``RuntimeWarning``).

    Arithmetic happens in float32 (float64 for float64 inputs); the result has ``out_dtype``
    (default: ``lo``'s dtype). A backend may fuse these steps (NumPy does: one host pass of
    raw ufuncs); this function is their specification and every backend's fallback.
    """
    fused = primitives(xp).minmax_encoding
    if fused is not None:
        return fused(lo, hi, num_steps, is_symmetric, out_dtype, two_bit_step)
    return portable_minmax_encoding(xp, lo, hi, num_steps, is_symmetric, out_dtype, two_bit_step)


def portable_minmax_encoding(
    xp: Namespace,
    lo: Array,
    hi: Array,
    num_steps: int,
    is_symmetric: bool,
    out_dtype=None,
    two_bit_step: bool = True,
) -> tuple[Array, Array]:
    """:func:`minmax_encoding` written with standard functions only (the fallback)."""
    out_dtype = lo.dtype if out_dtype is None else out_dtype
    wd = work_dtype(xp, xp.result_type(lo.dtype, out_dtype))
    lo = xp.minimum(xp.astype(lo, wd), xp.asarray(0.0, dtype=wd, device=device_of(lo)))
    hi = xp.maximum(xp.astype(hi, wd), xp.asarray(0.0, dtype=wd, device=device_of(hi)))
    s = minimum_scale(num_steps)
    neg, pos = symmetric_steps(num_steps)
    narrow = div(xp, hi - lo, num_steps) < s
    if is_symmetric:
        hi = xp.where(narrow, hi + pos * s, hi)
        lo = xp.where(narrow, lo - neg * s, lo)
        pos_delta = pos + 1 if num_steps == 3 and two_bit_step else pos
        delta = xp.maximum(div(xp, hi, pos_delta), div(xp, -lo, neg))
        lo, hi = -neg * delta, pos * delta
    else:
        hi = xp.where(narrow, hi + num_steps * s, hi)
    return clamp_to_finite(xp, lo, hi, out_dtype)


def clamp_to_finite(xp: Namespace, lo: Array, hi: Array, dtype) -> tuple[Array, Array]:
    """Return ``(lo, hi)`` in ``dtype``, clamped to its finite extremes (a warning if any was)."""
    big = float(xp.finfo(dtype).max)
    lo_c = clip(xp, lo, -big, big)
    hi_c = clip(xp, hi, -big, big)
    if bool(xp.any((lo_c != lo) | (hi_c != hi))):
        warn_clamped(dtype, big)
    return xp.astype(lo_c, dtype), xp.astype(hi_c, dtype)


def to_scale_offset(
    enc_min: Array, enc_max: Array, num_steps: int | float, is_symmetric: bool = False
) -> tuple[Array, Array]:
    """Turn encodings into ``scale = (max - min) / n`` and integer ``offset = round(min / scale)``.

    Symmetric encodings get their exact offset ``-ceil(n/2)`` (``-128`` for 8 bit). The offset
    is returned as int64.
    """
    xp = namespace_of(enc_min, enc_max)
    num_steps = validate_num_steps(num_steps, is_symmetric)
    wd = work_dtype(xp, enc_min.dtype)
    lo, hi = xp.astype(enc_min, wd), xp.astype(enc_max, wd)
    scale = div(xp, hi - lo, num_steps)
    if is_symmetric:
        offset = xp.full(
            lo.shape, -symmetric_steps(num_steps)[0], dtype=index_dtype(xp), device=device_of(lo)
        )
    else:
        offset = xp.astype(xp.round(lo / scale), index_dtype(xp))
    return xp.astype(scale, enc_min.dtype), offset
