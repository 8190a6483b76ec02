"""JAX fast paths: ``jnp.bincount`` with a static ``length`` (min/max use the portable path)."""

from __future__ import annotations

import jax.numpy as jnp

from .._xp import index_dtype, wide_dtype

__all__ = ["PRIMITIVES", "bincount_rows", "histogram_rows"]


def bincount_rows(idx, num_bins: int, weights=None):
    """One ``jnp.bincount`` over row-offset keys, its length fixed by the shapes."""
    rows = idx.shape[0]
    keys = idx + (jnp.arange(rows, dtype=idx.dtype) * num_bins)[:, None]
    flat_weights = None if weights is None else jnp.reshape(weights, (-1,))
    counts = jnp.bincount(jnp.reshape(keys, (-1,)), flat_weights, length=rows * num_bins)
    dtype = idx.dtype if weights is None else weights.dtype
    return jnp.reshape(counts.astype(dtype), (rows, num_bins))


def histogram_rows(rows, lo, hi, num_bins: int, may_have_nan: bool):
    """Apply the portable bin formula, then count with :func:`bincount_rows`."""
    t = (rows - lo[:, None]) / jnp.broadcast_to((hi - lo)[:, None], rows.shape) * num_bins
    t = jnp.clip(jnp.floor(t), 0, num_bins - 1)
    nbins = num_bins + 1 if may_have_nan else num_bins
    if may_have_nan:
        t = jnp.where(jnp.isnan(t), num_bins, t)
    counts = bincount_rows(t.astype(index_dtype(jnp)), nbins)[:, :num_bins]
    return counts.astype(wide_dtype(jnp, None))  # float64 with x64, else float32


PRIMITIVES = {"bincount_rows": bincount_rows, "histogram_rows": histogram_rows}
