"""CuPy fast paths (``cupy.bincount``); min/max use the portable, sync-free path."""

from __future__ import annotations

import cupy

__all__ = ["bincount_rows", "histogram_rows"]


def bincount_rows(idx, num_bins: int, weights=None):
    """One ``cupy.bincount`` over row-offset keys."""
    rows = idx.shape[0]
    keys = idx if rows == 1 else idx + (cupy.arange(rows, dtype=idx.dtype) * num_bins)[:, None]
    counts = cupy.bincount(
        keys.ravel(), None if weights is None else weights.ravel(), minlength=rows * num_bins
    )
    dtype = cupy.int64 if weights is None else weights.dtype
    return counts.astype(dtype, copy=False).reshape(rows, num_bins)


def histogram_rows(rows, lo, hi, num_bins: int, may_have_nan: bool):
    """Apply the portable formula in place, fold in row offsets, count with ``cupy.bincount``."""
    num_rows = rows.shape[0]
    t = cupy.subtract(rows, lo[:, None])
    t /= (hi - lo)[:, None]
    t *= num_bins
    cupy.floor(t, out=t)
    cupy.clip(t, 0, num_bins - 1, out=t)
    nbins = num_bins + 1 if may_have_nan else num_bins
    if may_have_nan:
        t = cupy.where(cupy.isnan(t), num_bins, t)
    if num_rows > 1:
        t += (cupy.arange(num_rows, dtype=t.dtype) * nbins)[:, None]
    counts = cupy.bincount(t.astype(cupy.int64).ravel(), minlength=num_rows * nbins)
    return counts.astype(cupy.int64, copy=False).reshape(num_rows, nbins)[:, :num_bins]
