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
    """Apply the portable formula in place; count with ``np.bincount``, a block of rows at a time.

    Blocks of rows small enough for the temporaries and the counts to stay in cache are about
    twice as fast as one pass over all rows at once.
    """
    num_rows, num_values = rows.shape
    nbins = num_bins + 1 if may_have_nan else num_bins
    step = max(1, min(2**17 // max(num_values, 1), 2**16 // nbins))
    out = np.empty((num_rows, num_bins), dtype=np.int64)
    offsets = (np.arange(min(step, num_rows), dtype=rows.dtype) * nbins)[:, None]
    width = (hi - lo)[:, None]
    for a in range(0, num_rows, step):
        b = min(a + step, num_rows)
        t = np.subtract(rows[a:b], lo[a:b, None])
        t /= width[a:b]
        t *= num_bins
        np.floor(t, out=t)
        np.clip(t, 0, num_bins - 1, out=t)
        if may_have_nan:
            t[np.isnan(t)] = num_bins
        if b - a > 1:
            t += offsets[: b - a]
        counts = np.bincount(t.astype(np.intp).ravel(), minlength=(b - a) * nbins)
        out[a:b] = counts.reshape(b - a, nbins)[:, :num_bins]
    return out
