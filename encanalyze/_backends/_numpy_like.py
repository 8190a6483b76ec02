"""NumPy and CuPy fast paths: one implementation over the module (``numpy`` or ``cupy``)."""

from __future__ import annotations

from functools import partial

import array_api_compat
import array_api_compat.numpy as np_xp
import numpy as np

from .._grid import minimum_scale, symmetric_steps, warn_clamped
from . import _compiled, _portable

__all__ = [
    "bincount_rows",
    "clean_minmax",
    "clip",
    "histogram_rows",
    "minmax",
    "primitives",
    "rebin_rows",
    "round_magnitudes",
]


def primitives(m, host: bool) -> dict:
    """Return the native primitives over module ``m``; ``host``: NumPy (cache-sized blocks).

    On the host, ``minmax`` checks its (small) reduced result before choosing the masking path;
    CuPy keeps the portable, sync-free one.
    """
    out = {
        "clip": partial(clip, m),
        "bincount_rows": partial(bincount_rows, m, host),
        "histogram_rows": partial(histogram_rows, m, host),
        "round_magnitudes": partial(round_magnitudes, m),
    }
    if host:
        out["rebin"] = rebin_rows
        out["minmax"] = partial(minmax, m)
        out["minmax_encoding"] = minmax_encoding
        out["minmax_rows"] = partial(minmax_rows, m)
        if _compiled.LIBRARY is not None:
            out["noise_by_cells"] = _compiled.noise_by_cells
            out["histogram_rows"] = _compiled_histogram_rows
            out["rebin"] = _compiled_rebin
            out["count_checked"] = _compiled.count_checked
    return out


def _compiled_histogram_rows(rows, lo, hi, num_bins: int, may_have_nan: bool):
    """Count float rows by the compiled kernel (threads), others by the ufunc path."""
    found = _compiled.count_rows(rows, lo, hi, num_bins)
    if found is None:
        return histogram_rows(np, True, rows, lo, hi, num_bins, may_have_nan)
    return found


def _compiled_rebin(counts, lo, hi, new_lo, new_hi, whole: bool = False):
    """Re-bin by the compiled kernel (threads over rows), else by the ufunc path."""
    found = _compiled.rebin_rows(counts, lo, hi, new_lo, new_hi)
    if found is None:
        return rebin_rows(counts, lo, hi, new_lo, new_hi, whole)
    return found


def clean_minmax(m, x, axis, finite: bool = False):
    """Return one ``min`` and one ``max`` pass over ``axis``, or None where not clean.

    Not clean: a NaN, or with ``finite`` an infinity (those need the masking path).
    """
    lo, hi = m.minimum.reduce(x, axis=axis), m.maximum.reduce(x, axis=axis)
    if x.dtype.kind == "f":
        clean = m.isfinite(lo).all() and m.isfinite(hi).all() if finite else not m.isnan(lo).any()
        if not clean:
            return None
    return m.asarray(lo), m.asarray(hi)


def minmax_rows(m, x, view_shape: tuple, axes: tuple, num_rows: int):
    """``(E,)`` min and max of ``x`` viewed as ``view_shape`` and reduced over ``axes``.

    ``None`` where a row holds NaN (the caller then takes the NaN-counting path): the
    observers' ``batch_minmax`` in one host call (methods, not the array API's wrappers).
    """
    found = clean_minmax(m, x.reshape(view_shape), axes, False)
    return None if found is None else (found[0].reshape(num_rows), found[1].reshape(num_rows))


def minmax(m, x, axes: tuple[int, ...], finite: bool = False) -> tuple:
    """One ``min`` and one ``max`` pass; the masking path only when the result is not clean."""
    found = clean_minmax(m, x, None if len(axes) == x.ndim else axes, finite)
    if found is None:
        return _portable.minmax(np_xp, x, axes, finite)
    return (*found, None)


_FINITE_MAX: dict = {}


def minmax_encoding(lo, hi, num_steps: int, is_symmetric: bool, out_dtype, two_bit_step: bool):
    """Apply the min-max encoding rules in raw NumPy ufuncs (``_encoding.minmax_encoding``).

    The same operations on the same dtypes as the portable rule, so the same bits (and the
    same floating-point warnings: the analyzers call the rules in ``quiet``); what is saved is
    the per-call cost of the array API layer, which is all a small tensor's encoding costs.
    """
    out_dtype = lo.dtype if out_dtype is None else np.dtype(out_dtype)
    wd = np.float64 if np.float64 in (lo.dtype, out_dtype) else np.float32
    if lo.shape == (1,) and lo[0] == lo[0] and hi[0] == hi[0]:  # one encoding, no NaN
        return _one_encoding(
            wd(lo[0]), wd(hi[0]), num_steps, is_symmetric, out_dtype, two_bit_step, wd
        )
    zero = wd(0.0)
    lo = np.minimum(lo.astype(wd, copy=False), zero)
    hi = np.maximum(hi.astype(wd, copy=False), zero)
    s = minimum_scale(num_steps)
    neg, pos = symmetric_steps(num_steps)
    narrow = (hi - lo) / num_steps < s
    any_narrow = narrow.any()
    if is_symmetric:
        if any_narrow:
            hi = np.where(narrow, hi + pos * s, hi)
            lo = np.where(narrow, lo - neg * s, lo)
        pos_delta = pos + 1 if num_steps == 3 and two_bit_step else pos
        delta = np.maximum(hi / pos_delta, -lo / neg)
        lo, hi = -neg * delta, pos * delta
    elif any_narrow:
        hi = np.where(narrow, hi + num_steps * s, hi)
    big = _FINITE_MAX.get(out_dtype)
    if big is None:
        big = _FINITE_MAX[out_dtype] = float(np.finfo(out_dtype).max)
    lo_c = np.minimum(np.maximum(lo, -big), big)
    hi_c = np.minimum(np.maximum(hi, -big), big)
    if ((lo_c != lo) | (hi_c != hi)).any():
        warn_clamped(out_dtype, big)
    return np.asarray(lo_c.astype(out_dtype, copy=False)), np.asarray(
        hi_c.astype(out_dtype, copy=False)
    )


def _one_encoding(lo, hi, num_steps, is_symmetric, out_dtype, two_bit_step, wd):
    """:func:`minmax_encoding` of one NaN-free encoding on NumPy scalars of dtype ``wd``.

    Scalars round as arrays do (IEEE operations in ``wd``, Python numbers converted to it),
    and ``np.minimum(a, b)`` / ``np.maximum(a, b)`` are ``a if a < b else b`` /
    ``a if a > b else b`` where neither is NaN (``b`` on ties: signed zeros included).
    """
    zero = wd(0.0)
    lo = lo if lo < zero else zero
    hi = hi if hi > zero else zero
    s = minimum_scale(num_steps)
    neg, pos = symmetric_steps(num_steps)
    narrow = (hi - lo) / num_steps < s
    if is_symmetric:
        if narrow:
            hi, lo = hi + pos * s, lo - neg * s
        pos_delta = pos + 1 if num_steps == 3 and two_bit_step else pos
        up, down = hi / pos_delta, -lo / neg
        delta = up if up > down else down
        lo, hi = -neg * delta, pos * delta
    elif narrow:
        hi = hi + num_steps * s
    big = _FINITE_MAX.get(out_dtype)
    if big is None:
        big = _FINITE_MAX[out_dtype] = float(np.finfo(out_dtype).max)
    top, bottom = wd(big), wd(-big)
    lo_c, hi_c = (v if v > bottom else bottom for v in (lo, hi))
    lo_c, hi_c = (v if v < top else top for v in (lo_c, hi_c))
    if lo_c != lo or hi_c != hi:
        warn_clamped(out_dtype, big)
    return np.array([lo_c], dtype=wd).astype(out_dtype, copy=False), np.array(
        [hi_c], dtype=wd
    ).astype(out_dtype, copy=False)


def clip(m, x, lo=None, hi=None):
    """``m.clip`` in ``x``'s dtype."""
    return m.clip(x, lo, hi).astype(x.dtype, copy=False)


def _count(m, host: bool, keys, length: int):
    """``bincount(keys, minlength=length)`` as int64, ``keys`` all in ``[0, length)``.

    ``cupy.bincount`` reads the largest key back to the host to size its result (a device
    sync); on CuPy the keys are scattered into ``length`` counters instead.
    """
    if host:
        return m.bincount(keys, minlength=length)
    out = m.zeros(length, dtype=m.uint64)  # CUDA's atomicAdd has uint64, not int64
    m.add.at(out, keys, m.broadcast_to(m.ones((), dtype=m.uint64), keys.shape))
    return out.view(m.int64)


def bincount_rows(m, host: bool, idx, num_bins: int, weights=None):
    """One ``bincount`` over row-offset keys (CuPy: sync-free; sums by the portable sort)."""
    rows = idx.shape[0]
    if weights is not None and not host:
        return _portable.bincount_rows(
            array_api_compat.array_namespace(idx), idx, num_bins, weights
        )
    keys = idx if rows == 1 else idx + (m.arange(rows, dtype=idx.dtype) * num_bins)[:, None]
    if weights is None:
        counts = _count(m, host, keys.ravel(), rows * num_bins)
    else:
        counts = m.bincount(keys.ravel(), weights.ravel(), minlength=rows * num_bins)
        counts = counts.astype(weights.dtype, copy=False)
    return counts.reshape(rows, num_bins)


VALUE_CHUNK = 1 << 20
"""Host binning works on at most this many values at a time (its temporaries stay small)."""


def histogram_rows(m, host: bool, rows, lo, hi, num_bins: int, may_have_nan: bool):
    """Apply the portable formula in place; count with ``bincount``, a block of rows at a time.

    On the host, blocks of rows small enough for the temporaries and the counts to stay in cache
    are about twice as fast as one pass over all rows; on a GPU one block holds every row.
    """
    num_rows, num_values = rows.shape
    nbins = num_bins + 1 if may_have_nan else num_bins
    step = max(1, min(2**17 // max(num_values, 1), 2**16 // nbins)) if host else num_rows
    step = max(step, 1)
    out = m.empty((num_rows, num_bins), dtype=m.float64)  # each block's int64 counts, exact
    offsets = (m.arange(min(step, num_rows), dtype=rows.dtype) * nbins)[:, None]
    width = (hi - lo)[:, None]
    cols = max(1, VALUE_CHUNK // step) if host else max(num_values, 1)  # bounded temporaries
    for a in range(0, num_rows, step):
        b = min(a + step, num_rows)
        counts = None
        for c in range(0, max(num_values, 1), cols):
            t = m.subtract(rows[a:b, c : c + cols], lo[a:b, None])
            t /= width[a:b]
            t *= num_bins
            m.floor(t, out=t)
            m.clip(t, 0, num_bins - 1, out=t)
            if may_have_nan:
                t = m.where(m.isnan(t), num_bins, t)
            if b - a > 1:
                t += offsets[: b - a]
            counted = _count(m, host, t.astype(m.int64).ravel(), (b - a) * nbins)
            counts = counted if counts is None else counts + counted
        out[a:b] = counts.reshape(b - a, nbins)[:, :num_bins]
    return out


REBIN_BLOCK = 2**14
"""Host re-binning works through blocks of rows of about this many bins (cache-sized)."""


def rebin_rows(counts, lo, hi, new_lo, new_hi, whole: bool = False):
    """Re-bin like ``_histograms.rebin`` on the host: the same operations, dtypes and counts.

    They run in place on cache-sized blocks of rows, with one ``bincount`` per block. Where no
    count reaches 2**24 the wide split (which then equals the narrow one) is skipped; where
    every old bin is wider than 0 and the counts are ``whole`` (non-negative integers), the
    fraction ``before / w_old`` clipped to [0, 1] and the split without ``minimum`` are the
    rule's (the division is monotonic, and ``round(f c) <= c`` for ``f <= 1``).
    """
    num_rows, num_bins = counts.shape
    wd = np.float64 if lo.dtype == np.float64 else np.float32
    valid = lo <= hi
    lo_w = np.where(valid, lo.astype(wd), wd(0))
    hi_w = np.where(valid, hi.astype(wd), wd(1))
    nlo = np.where(valid, new_lo.astype(wd), wd(0))[:, None]
    nhi = np.where(valid, new_hi.astype(wd), wd(1))[:, None]
    w_old = ((hi_w - lo_w) / wd(num_bins))[:, None]
    w_new = (nhi - nlo) / wd(num_bins)
    k = np.arange(num_bins, dtype=wd)
    big = bool((counts >= 2**24).any()) and wd != np.float64
    # every old bin wider than 0 and whole counts (an observer's): the short formulas below
    positive = bool((w_old > 0).all()) and whole
    out = np.empty((num_rows, num_bins), dtype=np.float64)
    step = max(1, REBIN_BLOCK // num_bins)
    offsets = (np.arange(step) * num_bins)[:, None]
    for a in range(0, num_rows, step):
        b = min(a + step, num_rows)
        sl = slice(a, b)
        start = np.multiply(w_old[sl], k)
        start += lo_w[sl, None]
        j = np.subtract(start, nlo[sl])
        j /= w_new[sl]
        np.floor(j, out=j)
        np.clip(j, 0, num_bins - 1, out=j)
        before = np.add(j, 1)
        before *= w_new[sl]
        before += nlo[sl]
        before -= start
        if positive:  # before / w_old is then the fraction wherever it lies in [0, 1]
            fraction = np.divide(before, w_old[sl])
            np.clip(fraction, 0, 1, out=fraction)
        else:
            inside = (before > 0) & (before < w_old[sl])
            ratio = np.divide(np.where(inside, before, 0), np.where(inside, w_old[sl], 1))
            fraction = np.where(inside, ratio, (before >= w_old[sl]).astype(wd))
        rows, size = b - a, (b - a) * num_bins
        c_wide = counts[sl].astype(np.float64, copy=False)
        part = np.multiply(fraction, counts[sl], dtype=wd, casting="same_kind")  # c in wd
        np.round(part, out=part)
        if not positive:  # else fraction <= 1 and whole counts: part <= c already
            np.minimum(part, c_wide.astype(wd), out=part)
        if big:
            high = c_wide >= 2**24
            part_wide = np.minimum(np.round(fraction.astype(np.float64) * c_wide), c_wide)
            part = np.where(high, part_wide, part)
        # one bincount: each part at its bin j, the rest at min(j + 1, B - 1), rows apart
        keys = np.empty(2 * size, dtype=np.intp)
        idx, following = keys[:size].reshape(rows, num_bins), keys[size:].reshape(rows, num_bins)
        np.copyto(idx, j, casting="unsafe")  # j is whole and in [0, B - 1]
        idx += offsets[:rows]
        np.add(idx, 1, out=following)
        np.minimum(following, offsets[:rows] + (num_bins - 1), out=following)
        weights = np.empty(2 * size, dtype=np.float64)
        np.copyto(weights[:size].reshape(rows, num_bins), part)
        np.subtract(c_wide.reshape(-1), weights[:size], out=weights[size:])
        counted = np.bincount(keys, weights, minlength=size)
        out[sl] = counted.reshape(rows, num_bins)
    return out


_BITS = {"float32": ("uint32", 23), "float64": ("uint64", 52)}
"""Each float dtype's unsigned twin and mantissa width."""


def round_magnitudes(m, a, mantissa_bits: int, min_exponent: int):
    """Return ``formats._round_magnitudes`` of ``a`` computed on its bits.

    ``a``: non-negative float32 or float64, at most the format's largest value, or NaN; the
    result has ``mantissa_bits`` bits, ties to even. Normal values round their mantissa in the
    integer twin (add half an ulp less one, plus the kept part's last bit, then cut); values
    below ``2**min_exponent`` (the format's subnormals) round by adding and taking back
    ``2**(min_exponent - mantissa_bits + W)``, ``W`` the dtype's mantissa width, whose ulp is
    their spacing. None for other dtypes.
    """
    twin = _BITS.get(str(a.dtype))
    if twin is None:
        return None
    unsigned, width = twin
    drop = width - mantissa_bits
    bits = a.view(unsigned)
    magic = a.dtype.type(2.0 ** (min_exponent - mantissa_bits + width))
    if m is not np:  # CuPy: whole-array passes, no boolean indexing (a device sync)
        kept = (bits >> drop) & 1
        rounded = (((bits + ((1 << (drop - 1)) - 1) + kept) >> drop) << drop).view(a.dtype)
        out = m.where(a < 2.0**min_exponent, (a + magic) - magic, rounded)
        return m.where(m.isnan(a), a, out)
    r = bits >> drop  # in place from here: one array
    r &= 1
    r += np.dtype(unsigned).type((1 << (drop - 1)) - 1)
    r += bits
    r >>= drop
    r <<= drop
    out = r.view(a.dtype)
    other = ~(a >= a.dtype.type(2.0**min_exponent))  # the format's subnormals, and NaN
    if other.any():
        few = a[other]
        out[other] = np.where(np.isnan(few), few, (few + magic) - magic)
    return out
