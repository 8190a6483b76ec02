"""The histogram observer: one histogram per encoding element, all rows at once."""

from __future__ import annotations

import math
import numbers

from .._checks import int_at_least
from .._errors import EncodingAnalyzerError
from .._histograms import (
    BatchRange,
    RowHistogram,
    batch_range,
    bin_counts,
    check_range_fits,
    counting_range,
    histogram_update,
    merge_rows,
    take_batch,
)
from .._shapes import to_rows
from .._stats import Histogram, histogram_of, histogram_rows
from .._xp import Array, Namespace, device_of, float_dtype, index_dtype, wide_dtype
from .base import Observer, check_array

__all__ = ["HistogramObserver", "validate_growth_limit", "validate_num_bins"]


MAX_BINS = 2**24
"""The most bins a histogram may have: bin positions stay exact integers in float32."""


def validate_num_bins(num_bins: object) -> int:
    """Return ``num_bins`` as an int in ``[1, MAX_BINS]``; else ``TypeError``/``ValueError``."""
    value = int_at_least(num_bins, 1, "num_bins")
    if value > MAX_BINS:
        raise ValueError(f"num_bins must be at most 2**24 = {MAX_BINS}, got {num_bins!r}")
    return value


def validate_growth_limit(growth_limit: object) -> float:
    """Return a growth limit as a float >= 1 (``None``: ``inf``).

    Raises
    ------
    TypeError
        If it is not a real number.
    EncodingAnalyzerError
        (a ``ValueError`` and a ``RuntimeError``, as the reference raises) if it is below 1.
    """
    if growth_limit is None:
        return math.inf
    if isinstance(growth_limit, bool) or not isinstance(growth_limit, numbers.Real):
        raise TypeError(f"histogram growth limit must be a number, got {growth_limit!r}")
    value = float(growth_limit)
    if math.isnan(value) or value < 1:
        raise EncodingAnalyzerError(f"histogram growth limit must be >= 1, got {growth_limit!r}")
    return value


class HistogramObserver(Observer[RowHistogram]):
    """One histogram of ``num_bins`` equal-width bins per encoding element.

    Parameters
    ----------
    shape, block_size
        The encodings.
    num_bins
        Bins per histogram.
    growth_limit
        How far the histogram range may grow after the first batch, in multiples of that
        batch's range (``g`` allows ``[lo0 - (hi0 - lo0) g / 2, hi0 + (hi0 - lo0) g / 2]``);
        values beyond count in the end bins. ``None``: unlimited.
    absolute
        Histogram ``|x|`` from 0 and count the negative values (the entropy method's input).
    """

    kind = "histogram"
    needs = "a finite value"  # infinities alone give no range
    stats_type = Histogram

    def __init__(
        self, shape, block_size=None, num_bins: int = 2048, growth_limit=None, absolute=False
    ) -> None:
        super().__init__(shape, block_size)
        self.num_bins = validate_num_bins(num_bins)
        self.growth_limit = validate_growth_limit(growth_limit)
        self.absolute = bool(absolute)

    def params(self) -> dict:
        growth = None if math.isinf(self.growth_limit) else self.growth_limit
        out = {**super().params(), "num_bins": self.num_bins, "growth_limit": growth}
        return out | {"absolute": True} if self.absolute else out

    def update(self, xp: Namespace, x: Array, state: RowHistogram | None, want_batch=True):
        dtype = float_dtype(xp, x)
        p = self.plan(x)
        if p.values_per_encoding == 0:
            empty = self.empty(xp, dtype, device_of(x))
            return empty, empty if state is None else state
        rows = to_rows(xp, x, p)
        if xp.isdtype(rows.dtype, "bool"):
            rows = xp.astype(rows, dtype)
        return histogram_update(
            xp, rows, dtype, self.num_bins, state, self.growth_limit, self.absolute, want_batch
        )

    # -- an update in steps, for ranks that replay one process's order (distributed.Lockstep)
    def batch_range(self, xp: Namespace, x: Array) -> tuple[Array, BatchRange] | None:
        """Return the rows to count and the range of batch ``x`` (None: ``x`` holds no values).

        With :meth:`counting_range`, :meth:`count` and :meth:`take`: :meth:`update` in steps,
        the same numbers.
        """
        p = self.plan(x)
        if p.values_per_encoding == 0:
            return None
        rows = to_rows(xp, x, p)
        if xp.isdtype(rows.dtype, "bool"):
            rows = xp.astype(rows, float_dtype(xp, x))
        return batch_range(xp, rows, float_dtype(xp, x), self.absolute)

    def counting_range(self, xp: Namespace, state, batch: BatchRange):
        """Return the edge range a batch is counted on, and the edges after it (no counts)."""
        return counting_range(xp, state, batch, self.num_bins, self.growth_limit)

    def count(self, xp: Namespace, rows: Array, batch: BatchRange, lo: Array, hi: Array):
        """Return the ``(E, B)`` counts of a batch's rows on the edge range ``[lo, hi]``."""
        return bin_counts(xp, rows, lo, hi, self.num_bins, batch.num_nan is not None)

    def take(self, xp: Namespace, state, batch: BatchRange, counts: Array) -> RowHistogram:
        """Return the state after a batch whose counts on its counting range are ``counts``."""
        return take_batch(xp, state, batch, counts, self.growth_limit)

    def empty(self, xp: Namespace, dtype, device) -> RowHistogram:
        """Histograms that have seen nothing (the merge identity)."""
        e = self.num_rows
        return RowHistogram(
            xp.zeros((e, self.num_bins), dtype=wide_dtype(xp, device), device=device),
            xp.full((e,), xp.inf, dtype=dtype, device=device),
            xp.full((e,), -xp.inf, dtype=dtype, device=device),
        )

    def merge(self, xp: Namespace, states: list[RowHistogram]) -> RowHistogram:
        return merge_rows(xp, states)

    def stats(self, xp: Namespace, state: RowHistogram) -> Histogram:
        return histogram_of(xp, state, self.shape)

    def from_stats(self, xp: Namespace, stats: Histogram) -> RowHistogram:
        want = (*self.shape, self.num_bins)
        got = tuple(stats.histogram.shape)
        if got != want or tuple(stats.bin_edges.shape) != (*self.shape, self.num_bins + 1):
            raise ValueError(
                f"histogram of shape {got} (edges {tuple(stats.bin_edges.shape)}) does not match "
                f"the analyzer's {want} (edges {(*self.shape, self.num_bins + 1)})"
            )
        return histogram_rows(xp, stats)

    def arrays(self, state: RowHistogram) -> dict:
        out = {"counts": state.counts, "lo": state.lo, "hi": state.hi}
        if state.num_nan is not None:
            out["num_nan"] = state.num_nan
        if state.limits is not None:
            out["limit_lo"], out["limit_hi"] = state.limits
        if state.observed is not None:
            out["min"], out["max"] = state.observed
        if state.num_negative is not None:
            out["num_negative"] = state.num_negative
        return out

    def from_arrays(self, xp: Namespace, arrays: dict) -> RowHistogram:
        e = self.num_rows
        counts = check_array(arrays, "counts", (e, self.num_bins), "real floating")
        if not bool(xp.all((counts >= 0) & (counts == xp.floor(counts)))):
            raise ValueError("state array 'counts' must hold whole numbers >= 0 (value counts)")
        lo = check_array(arrays, "lo", (e,), "real floating")
        hi = check_array(arrays, "hi", (e,), "real floating")
        num_nan = check_array(arrays, "num_nan", (e,), "integral", optional=True)
        limit_lo = check_array(arrays, "limit_lo", (e,), "real floating", optional=True)
        limit_hi = check_array(arrays, "limit_hi", (e,), "real floating", optional=True)
        if (limit_lo is None) != (limit_hi is None) or (
            (limit_lo is None) != math.isinf(self.growth_limit)
        ):
            raise ValueError("state growth limits do not match the analyzer's growth_limit")
        # the observed range (files written before it was kept: the edge range)
        obs_lo = check_array(arrays, "min", (e,), "real floating", optional=True)
        obs_hi = check_array(arrays, "max", (e,), "real floating", optional=True)
        if (obs_lo is None) != (obs_hi is None):
            raise ValueError("state holds one of the arrays 'min' and 'max' without the other")
        if any(a is not None and a.dtype != lo.dtype for a in (hi, obs_lo, obs_hi)):
            raise ValueError(
                f"state arrays 'lo', 'hi', 'min' and 'max' differ in dtype: {lo.dtype}, "
                f"{hi.dtype}, {getattr(obs_lo, 'dtype', None)}, {getattr(obs_hi, 'dtype', None)}"
            )
        num_negative = check_array(arrays, "num_negative", (e,), "integral", optional=True)
        if (num_negative is not None) != self.absolute:
            raise ValueError("state negative counts do not match the observer's absolute flag")
        return RowHistogram(
            xp.astype(counts, wide_dtype(xp, device_of(counts))),
            lo,
            hi,
            None if num_nan is None else xp.astype(num_nan, index_dtype(xp)),
            None if limit_lo is None else (limit_lo, limit_hi),
            None if obs_lo is None else (obs_lo, obs_hi),
            None if num_negative is None else xp.astype(num_negative, index_dtype(xp)),
        )

    def num_empty(self, xp: Namespace, state: RowHistogram) -> int:
        # no range: nothing or only infinities seen (those wait in the end bins); the counts
        # are non-negative, so a row's total is 0 in any order of summation (one GEMV)
        ones = xp.ones((self.num_bins,), dtype=state.counts.dtype, device=device_of(state.counts))
        no_count = xp.matmul(state.counts, ones) == 0
        return int(xp.count_nonzero(~(state.lo <= state.hi) | no_count))

    def check(self, xp: Namespace, state: RowHistogram) -> None:
        check_range_fits(xp, state.lo, state.hi)  # devices skip it at the update (no sync)

    def home(self, state: RowHistogram) -> Array:
        return state.counts
