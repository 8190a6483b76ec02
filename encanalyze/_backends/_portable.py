"""Portable implementations written only with array API standard functions."""

from __future__ import annotations

from .._xp import Array, Namespace, device_of, div, index_dtype, wide_dtype

__all__ = ["bincount_rows", "clip", "histogram_rows", "minmax"]


def minmax(
    xp: Namespace, x: Array, axes: tuple[int, ...], finite: bool = False
) -> tuple[Array, Array, Array | None]:
    """NaN-ignoring min, max and NaN count over ``axes`` (see ``_backends.minmax``)."""
    if not xp.isdtype(x.dtype, "real floating"):
        return xp.min(x, axis=axes), xp.max(x, axis=axes), None
    nan = xp.isnan(x)
    keep = xp.isfinite(x) if finite else ~nan
    inf = xp.full((), xp.inf, dtype=x.dtype, device=device_of(x))  # no host-to-device copy
    lo = xp.min(xp.where(keep, x, inf), axis=axes)
    hi = xp.max(xp.where(keep, x, -inf), axis=axes)
    return lo, hi, xp.astype(xp.count_nonzero(nan, axis=axes), index_dtype(xp))


def clip(xp: Namespace, x: Array, lo=None, hi=None) -> Array:
    """``xp.clip``: each bound a Python number, an array broadcasting against ``x``, or None."""
    return xp.clip(x, lo, hi)


def bincount_rows(xp: Namespace, idx: Array, num_bins: int, weights: Array | None = None) -> Array:
    """Per-row bincount by sorting: searchsorted finds each bin's run in the sorted keys."""
    rows, n = idx.shape
    dev = device_of(idx)
    offsets = xp.arange(rows, dtype=idx.dtype, device=dev) * num_bins
    keys = xp.reshape(idx + offsets[:, None], (rows * n,))
    bounds = xp.arange(rows * num_bins + 1, dtype=idx.dtype, device=dev)
    if weights is None:
        pos = xp.searchsorted(xp.sort(keys), bounds)
        counts = xp.astype(pos[1:] - pos[:-1], index_dtype(xp))
    else:
        order = xp.argsort(keys)
        keys = xp.take(keys, order)
        csum = xp.cumulative_sum(
            xp.take(xp.reshape(weights, (rows * n,)), order), include_initial=True
        )
        pos = xp.searchsorted(keys, bounds)
        counts = xp.take(csum, pos[1:]) - xp.take(csum, pos[:-1])
    return xp.reshape(counts, (rows, num_bins))


def histogram_rows(
    xp: Namespace, rows: Array, lo: Array, hi: Array, num_bins: int, may_have_nan: bool
) -> Array:
    """Bin index by the formula, then :func:`bincount_rows` (NaN goes to a cut-off extra bin)."""
    t = div(xp, rows - lo[:, None], (hi - lo)[:, None]) * num_bins
    t = clip(xp, xp.floor(t), 0.0, float(num_bins - 1))
    nbins = num_bins
    if may_have_nan:
        t = xp.where(xp.isnan(t), float(num_bins), t)
        nbins += 1
    counts = bincount_rows(xp, xp.astype(t, index_dtype(xp)), nbins)
    counts = counts[:, :num_bins] if may_have_nan else counts
    return xp.astype(counts, wide_dtype(xp, device_of(rows)))
