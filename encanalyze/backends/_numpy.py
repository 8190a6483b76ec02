"""NumPy fast paths."""

from __future__ import annotations

import array_api_compat.numpy as xp
import numpy as np

from . import _portable

__all__ = ["minmax"]


def minmax(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """One ``min`` and one ``max`` pass; the NaN-masking path only when a NaN is present.

    NumPy lives on the host, so checking the (small) reduced result costs no device sync.
    """
    axis = None if len(axes) == x.ndim else axes
    lo, hi = np.min(x, axis=axis), np.max(x, axis=axis)
    if np.issubdtype(x.dtype, np.floating) and np.isnan(lo).any():
        return _portable.minmax(xp, x, axes)
    return np.asarray(lo), np.asarray(hi), None
