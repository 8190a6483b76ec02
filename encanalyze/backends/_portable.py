"""Portable implementations written only with array API standard functions."""

from __future__ import annotations

from .._xp import Array, Namespace, device_of

__all__ = ["minmax"]


def minmax(xp: Namespace, x: Array, axes: tuple[int, ...]) -> tuple[Array, Array, Array | None]:
    """NaN-ignoring min, max and NaN count over ``axes``; see :func:`encanalyze.backends.minmax`."""
    if not xp.isdtype(x.dtype, "real floating"):
        lo, hi = xp.min(x, axis=axes), xp.max(x, axis=axes)
        return lo, hi, None
    nan = xp.isnan(x)
    inf = xp.asarray(xp.inf, dtype=x.dtype, device=device_of(x))
    lo = xp.min(xp.where(nan, inf, x), axis=axes)
    hi = xp.max(xp.where(nan, -inf, x), axis=axes)
    return lo, hi, xp.astype(xp.count_nonzero(nan, axis=axes), xp.int64)
