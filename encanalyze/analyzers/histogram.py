"""Shared shell of the histogram-based analyzers (percentile, SQNR)."""

from __future__ import annotations

import math

from .._checks import int_at_least
from .._xp import Array, Namespace, device_of, float_dtype, namespace_of
from ..errors import EncodingAnalyzerError
from ..histograms import RowHistogram, bin_edges, histogram_update, merge_rows
from ..shapes import to_rows
from ..stats import Histogram
from .base import EncodingAnalyzer

__all__ = ["HistogramAnalyzer", "validate_num_bins"]


def validate_num_bins(num_bins: object) -> int:
    """Return ``num_bins`` as a positive int, else raise ``TypeError``/``ValueError``."""
    return int_at_least(num_bins, 1, "num_bins")


class HistogramAnalyzer(EncodingAnalyzer[Histogram]):
    """Keeps one histogram per encoding element (see :class:`~encanalyze.Histogram`).

    Parameters
    ----------
    shape
        Shape of the encodings.
    num_bins
        Bins per histogram.
    growth_limit
        How far the histogram range may grow after the first batch, in multiples of that
        batch's range (``g`` allows ``[lo0 - (hi0 - lo0) g / 2, hi0 + (hi0 - lo0) g / 2]``);
        values beyond count in the end bins. ``None``: unlimited.
    block_size
        Optional block size for block-wise encodings.
    """

    stats_type = Histogram

    def __init__(self, shape, num_bins: int = 2048, growth_limit=None, block_size=None) -> None:
        super().__init__(shape, block_size)
        self.num_bins = validate_num_bins(num_bins)
        if growth_limit is None:
            growth_limit = math.inf
        if isinstance(growth_limit, bool) or not isinstance(growth_limit, (int, float)):
            raise TypeError(f"histogram growth limit must be a number, got {growth_limit!r}")
        if math.isnan(growth_limit) or growth_limit < 1:
            raise EncodingAnalyzerError(
                f"histogram growth limit must be >= 1, got {growth_limit!r}"
            )
        self.growth_limit = float(growth_limit)

    # state: RowHistogram of the (E,) rows
    def _update(self, xp: Namespace, x: Array, state: RowHistogram | None):
        dtype = float_dtype(xp, x)
        p = self._plan(x)
        if p.values_per_encoding == 0:
            empty = self._empty_rows(xp, dtype, device_of(x))
            return self._to_stats(xp, empty), empty if state is None else state
        rows = to_rows(xp, x, p)
        if xp.isdtype(rows.dtype, "bool"):
            rows = xp.astype(rows, dtype)
        batch, merged = histogram_update(xp, rows, dtype, self.num_bins, state, self.growth_limit)
        return self._to_stats(xp, batch), merged

    def _empty_rows(self, xp: Namespace, dtype, device) -> RowHistogram:
        """Histograms that have seen nothing."""
        e = math.prod(self.shape)
        return RowHistogram(
            xp.zeros((e, self.num_bins), dtype=xp.float32, device=device),
            xp.full((e,), xp.inf, dtype=dtype, device=device),
            xp.full((e,), -xp.inf, dtype=dtype, device=device),
            None,
        )

    def _stats_of(self, state: RowHistogram) -> Histogram:
        return self._to_stats(namespace_of(state.counts), state)

    def _to_stats(self, xp: Namespace, h: RowHistogram) -> Histogram:
        shape = self.shape
        lo, hi = h.observed_range()
        return Histogram(
            xp.reshape(h.counts, (*shape, self.num_bins)),
            xp.reshape(bin_edges(xp, h.lo, h.hi, self.num_bins), (*shape, self.num_bins + 1)),
            xp.reshape(lo, shape),
            xp.reshape(hi, shape),
            None if h.num_nan is None else xp.reshape(h.num_nan, shape),
        )

    @staticmethod
    def _stats_array(stats: Histogram) -> Array:
        return stats.histogram

    def _check_stats(self, stats: Histogram) -> None:
        want = (*self.shape, self.num_bins)
        got = tuple(stats.histogram.shape)
        if got != want or tuple(stats.bin_edges.shape) != (*self.shape, self.num_bins + 1):
            raise ValueError(
                f"histogram of shape {got} (edges {tuple(stats.bin_edges.shape)}) does not match "
                f"the analyzer's {want} (edges {(*self.shape, self.num_bins + 1)})"
            )

    def _rows(self, xp: Namespace, stats: Histogram) -> tuple[Array, Array]:
        """Return ``(counts (E, B), edges (E, B + 1))`` of ``stats``."""
        e = math.prod(self.shape)
        return (
            xp.reshape(stats.histogram, (e, self.num_bins)),
            xp.reshape(stats.bin_edges, (e, self.num_bins + 1)),
        )

    def params(self) -> dict:
        """Return the constructor arguments of this analyzer (JSON-compatible)."""
        growth = None if math.isinf(self.growth_limit) else self.growth_limit
        return {**super().params(), "num_bins": self.num_bins, "growth_limit": growth}

    def _stats_params(self) -> dict:
        return HistogramAnalyzer.params(self)  # the subclasses' extra parameters do not count

    def _merge_states(self, xp: Namespace, states: list[RowHistogram]) -> RowHistogram:
        return merge_rows(xp, states)

    def _state_arrays(self, state: RowHistogram) -> dict:
        out = {"counts": state.counts, "lo": state.lo, "hi": state.hi}
        if state.num_nan is not None:
            out["num_nan"] = state.num_nan
        if state.limits is not None:
            out["limit_lo"], out["limit_hi"] = state.limits
        if state.observed is not None:
            out["min"], out["max"] = state.observed
        return out

    def _state_from_arrays(self, xp: Namespace, arrays: dict) -> RowHistogram:
        e = math.prod(self.shape)
        counts = self._check_array(arrays, "counts", (e, self.num_bins), "real floating")
        lo = self._check_array(arrays, "lo", (e,), "real floating")
        hi = self._check_array(arrays, "hi", (e,), "real floating")
        num_nan = self._check_array(arrays, "num_nan", (e,), "integral", optional=True)
        limit_lo = self._check_array(arrays, "limit_lo", (e,), "real floating", optional=True)
        limit_hi = self._check_array(arrays, "limit_hi", (e,), "real floating", optional=True)
        if (limit_lo is None) != (limit_hi is None) or (
            (limit_lo is None) != math.isinf(self.growth_limit)
        ):
            raise ValueError("state growth limits do not match the analyzer's growth_limit")
        # the observed range (files written before it was kept: the edge range)
        obs_lo = self._check_array(arrays, "min", (e,), "real floating", optional=True)
        obs_hi = self._check_array(arrays, "max", (e,), "real floating", optional=True)
        if (obs_lo is None) != (obs_hi is None):
            raise ValueError("state holds one of the arrays 'min' and 'max' without the other")
        if any(a is not None and a.dtype != lo.dtype for a in (hi, obs_lo, obs_hi)):
            raise ValueError(
                f"state arrays 'lo', 'hi', 'min' and 'max' differ in dtype: {lo.dtype}, "
                f"{hi.dtype}, {getattr(obs_lo, 'dtype', None)}, {getattr(obs_hi, 'dtype', None)}"
            )
        return RowHistogram(
            xp.astype(counts, xp.float32),
            lo,
            hi,
            None if num_nan is None else xp.astype(num_nan, xp.int64),
            None if limit_lo is None else (limit_lo, limit_hi),
            None if obs_lo is None else (obs_lo, obs_hi),
        )
