"""NumPy fast paths."""

from __future__ import annotations

import array_api_compat.numpy as xp
import numpy as np

from . import _portable

__all__ = ["bincount_rows", "histogram_rows", "minmax"]


def minmax(x: np.ndarray, axes: tuple[int, ...], finite: bool = False) -> tuple:
    """One ``min`` and one ``max`` pass; the masking path only when the result is not clean.

    NumPy lives on the host, so checking the (small) reduced result costs no device sync.
    """
    axis = None if len(axes) == x.ndim else axes
    lo, hi = np.min(x, axis=axis), np.max(x, axis=axis)
    if np.issubdtype(x.dtype, np.floating):
        clean = (
            np.isfinite(lo).all() and np.isfinite(hi).all() if finite else not np.isnan(lo).any()
        )
        if not clean:
            return _portable.minmax(xp, x, axes, finite)
    return np.asarray(lo), np.asarray(hi), None


def bincount_rows(idx: np.ndarray, num_bins: int, weights: np.ndarray | None = None) -> np.ndarray:
    """One ``np.bincount`` over row-offset keys."""
    rows = idx.shape[0]
    keys = idx if rows == 1 else idx + (np.arange(rows, dtype=idx.dtype) * num_bins)[:, None]
    counts = np.bincount(
        keys.ravel(), None if weights is None else weights.ravel(), minlength=rows * num_bins
    )
    dtype = np.int64 if weights is None else weights.dtype
    return counts.astype(dtype, copy=False).reshape(rows, num_bins)


def histogram_rows(
    rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, num_bins: int, may_have_nan: bool
) -> np.ndarray:
    """Apply the portable formula in place, fold in row offsets, count with ``np.bincount``."""
    num_rows = rows.shape[0]
    t = np.subtract(rows, lo[:, None])
    t /= (hi - lo)[:, None]
    t *= num_bins
    np.floor(t, out=t)
    np.clip(t, 0, num_bins - 1, out=t)
    nbins = num_bins + 1 if may_have_nan else num_bins
    if may_have_nan:
        t[np.isnan(t)] = num_bins
    if num_rows > 1:
        t += (np.arange(num_rows, dtype=t.dtype) * nbins)[:, None]
    counts = np.bincount(t.astype(np.intp).ravel(), minlength=num_rows * nbins)
    return counts.astype(np.int64, copy=False).reshape(num_rows, nbins)[:, :num_bins]
