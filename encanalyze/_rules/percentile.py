"""Percentile calibration: clip the histogram's tails at a percentile."""

from __future__ import annotations

import numbers

from .._analyzer import HistogramAnalyzer
from .._encoding import minmax_encoding
from .._histograms import RowHistogram, wide_dtype
from .._xp import Array, Namespace, device_of, div, index_dtype, on_host, take_rows

__all__ = [
    "PercentileEncodingAnalyzer",
    "percentile_range",
    "percentile_rule",
    "validate_percentile",
]


def validate_percentile(percentile: object) -> float:
    """Return ``percentile`` as a float in [50, 100], else raise ``TypeError``/``ValueError``."""
    if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real):
        raise TypeError(f"percentile must be a number in [50, 100], got {percentile!r}")
    value = float(percentile)
    if not 50 <= value <= 100:  # also rejects NaN
        raise ValueError(f"percentile must be in [50, 100], got {percentile!r}")
    return value


def percentile_range(
    xp: Namespace, counts: Array, edges: Array, percentile: float
) -> tuple[Array, Array]:
    """Return the clipped ``(lo, hi)`` of ``E`` histograms: ``counts (E, B)``, ``edges (E, B+1)``.

    ``p == 100`` gives the first and last edge. Otherwise, with cumulative counts ``cs`` and total
    ``T``, ``hi`` is the lower edge of the first bin with ``cs >= T p / 100`` and ``lo`` the lower
    edge of the first bin with ``cs >= T (1 - p / 100)``. Both thresholds are evaluated in
    float32 as the reference does, ``(T * f32(p)) / 100`` and ``T * f32(1 - p / 100)``: exact
    hits are common (100 values, p = 99: the lower threshold is exactly 1.0).
    """
    i_lo, i_hi = percentile_bins(xp, counts, percentile)
    return take_rows(xp, edges, i_lo), take_rows(xp, edges, i_hi)


RUN_BLOCK = 64
"""Host backends find the percentile bins through running sums of blocks of this many bins."""


def percentile_bins(
    xp: Namespace, counts: Array, percentile: float, whole: bool = False
) -> tuple[Array, Array]:
    """Return the edge positions ``(E,)`` of :func:`percentile_range`'s ``lo`` and ``hi``.

    ``whole``: the counts are known to be whole and non-negative (an observer's own), so host
    backends may find the positions through running sums of blocks (:func:`_first_reaching`),
    which give the same positions as running sums of every bin without computing them all.
    """
    num_rows, num_bins = counts.shape
    if percentile == 100:
        first = xp.zeros((num_rows,), dtype=index_dtype(xp), device=device_of(counts))
        return first, first + num_bins
    wide = wide_dtype(xp, device_of(counts))
    # float32 running sums are exact below 2**24; host backends check that cheaply
    if counts.dtype != wide and not (
        on_host(counts) and float(xp.max(xp.sum(counts, axis=1))) < 2**24
    ):
        counts = xp.astype(counts, wide)
    blocks = num_bins // RUN_BLOCK
    if whole and on_host(counts) and blocks > 1 and num_bins % RUN_BLOCK == 0:
        # the blocks' sums as one matrix-vector product (whole counts: exact in any order)
        ones = xp.ones((RUN_BLOCK,), dtype=counts.dtype, device=device_of(counts))
        sums = xp.matmul(xp.reshape(counts, (num_rows * blocks, RUN_BLOCK)), ones)
        block_cs = xp.cumulative_sum(xp.reshape(sums, (num_rows, blocks)), axis=1)
        lower, upper = _thresholds(xp, block_cs[:, blocks - 1 :], percentile)
        found = _first_reaching(xp, counts, block_cs, xp.concat([lower, upper], axis=1))
        return found[0, :], found[1, :]
    cs = xp.cumulative_sum(counts, axis=1)
    lower, upper = _thresholds(xp, cs[:, num_bins - 1 :], percentile)
    i_hi = xp.count_nonzero(cs < xp.astype(upper, cs.dtype), axis=1)
    i_lo = xp.count_nonzero(cs < xp.astype(lower, cs.dtype), axis=1)
    return i_lo, i_hi


def _thresholds(xp: Namespace, total: Array, percentile: float) -> tuple[Array, Array]:
    """Return the ``(E, 1)`` thresholds ``T (1 - p / 100)`` and ``T p / 100``, as float32."""
    dev = device_of(total)
    total = xp.astype(total, xp.float32)
    upper = div(xp, total * xp.asarray(percentile, dtype=xp.float32, device=dev), 100)
    lower = total * xp.asarray(1 - percentile / 100, dtype=xp.float32, device=dev)
    return lower, upper


def _first_reaching(xp: Namespace, counts: Array, block_cs: Array, thresholds: Array) -> Array:
    """Return ``count_nonzero(cumulative_sum(counts) < t)`` per row, by blocks: ``(K, E)``.

    ``thresholds`` ``(E, K)``; ``block_cs`` ``(E, nb)`` the running sums of the blocks of
    :data:`RUN_BLOCK` bins. For whole non-negative counts (running sums exact in any order, and
    non-decreasing) the first block whose running sum reaches a threshold holds the first bin
    that does; only that block's running sums are computed.
    """
    num_rows, blocks = block_cs.shape
    kinds = thresholds.shape[1]
    t = xp.astype(thresholds, block_cs.dtype)  # (E, K)
    block = xp.minimum(xp.count_nonzero(block_cs[:, None, :] < t[:, :, None], axis=2), blocks - 1)
    before = take_rows(xp, block_cs, xp.maximum(block - 1, 0))
    before = xp.where(block > 0, before, xp.zeros_like(before))  # (E, K)
    step = xp.arange(RUN_BLOCK, dtype=block.dtype, device=device_of(counts))
    idx = xp.reshape(block[:, :, None] * RUN_BLOCK + step, (num_rows, kinds * RUN_BLOCK))
    inside = xp.reshape(take_rows(xp, counts, idx), (num_rows * kinds, RUN_BLOCK))
    upper = xp.astype(step[:, None] <= step[None, :], counts.dtype)  # running sums by a GEMM
    running = xp.matmul(inside, upper) + xp.reshape(before, (-1, 1))
    found = xp.count_nonzero(running < xp.reshape(t, (-1, 1)), axis=1)
    return xp.permute_dims(xp.reshape(found, (num_rows, kinds)) + block * RUN_BLOCK, (1, 0))


def percentile_rule(
    xp: Namespace, state: RowHistogram, num_steps: int, is_symmetric: bool, *, percentile: float
) -> tuple[Array, Array]:
    """Clip each histogram at ``percentile``, then the min-max rules without the 2-bit step."""
    i_lo, i_hi = percentile_bins(xp, state.counts, percentile, whole=state.edges is None)
    lo, hi = state.edges_at(xp, i_lo), state.edges_at(xp, i_hi)
    return minmax_encoding(
        xp, lo, hi, num_steps, is_symmetric, out_dtype=state.lo.dtype, two_bit_step=False
    )


class PercentileEncodingAnalyzer(HistogramAnalyzer):
    """Percentile calibration: the range keeps all but ``(100 - p)%`` of each tail.

    Parameters
    ----------
    shape
        Shape of the encodings.
    num_bins
        Bins per histogram.
    percentile
        In [50, 100]; 100 keeps the whole observed range.
    block_size
        Optional block size for block-wise encodings.

    Examples
    --------
    The reference documentation's example, with its histogram built by hand:

    >>> import numpy as np
    >>> from encanalyze import Histogram, PercentileEncodingAnalyzer
    >>> analyzer = PercentileEncodingAnalyzer(shape=(1,), num_bins=10, percentile=80)
    >>> counts = np.array([[1, 1, 8, 13, 19, 27, 16, 10, 3, 2]], np.float32)
    >>> edges = np.linspace(-2.5710, 2.1497, 11, dtype=np.float32)[None]
    >>> stats = Histogram(counts, edges, edges[:, 0], edges[:, -1])
    >>> lo, hi = analyzer.compute_encodings_from_stats(stats, num_steps=256, is_symmetric=False)
    >>> print(np.round(lo, 4), np.round(hi, 4))
    [-1.1548] [0.2614]
    """

    rule = staticmethod(percentile_rule)

    def __init__(self, shape, num_bins: int = 2048, percentile: float = 100, block_size=None):
        super().__init__(shape, num_bins, block_size=block_size)
        self.percentile = validate_percentile(percentile)

    def rule_params(self) -> dict:
        """Return the keyword arguments this analyzer passes to its rule."""
        return {"percentile": self.percentile}

    def params(self) -> dict:
        """Return the constructor arguments of this analyzer (JSON-compatible)."""
        return {**super().params(), "percentile": self.percentile}

    def set_percentile(self, percentile: float) -> None:
        """Set the percentile used by later ``compute_encodings`` calls (in [50, 100])."""
        self.percentile = validate_percentile(percentile)
