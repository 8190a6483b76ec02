"""The moving-average min-max observer (PyTorch's ``MovingAverage*MinMaxObserver``)."""

from __future__ import annotations

import numbers
from typing import NamedTuple

from .._histograms import add_counts, wide_dtype
from .._stats import MinMaxRange
from .._xp import Array, Namespace, device_of, index_dtype
from .base import check_array
from .minmax import MinMaxObserver, batch_minmax

__all__ = ["EmaObserver", "EmaState", "validate_averaging_constant"]


class EmaState(NamedTuple):
    """Moving-average ranges of ``E`` rows.

    ``min``/``max`` ``(E,)``, the number of batches ``count`` that updated each row (int64), and
    the dropped-NaN count.
    """

    min: Array
    max: Array
    count: Array
    num_nan: Array | None = None


def validate_averaging_constant(c: object) -> float:
    """Return the averaging constant as a float in (0, 1], else ``TypeError``/``ValueError``."""
    if isinstance(c, bool) or not isinstance(c, numbers.Real):
        raise TypeError(f"averaging_constant must be a number in (0, 1], got {c!r}")
    if not 0 < float(c) <= 1:  # also rejects NaN
        raise ValueError(f"averaging_constant must be in (0, 1], got {c!r}")
    return float(c)


def _moved(xp: Namespace, running: Array, new: Array, move: Array, c: float) -> Array:
    """Return ``running + c * (new - running)`` where ``move``, else ``running``.

    Equal values stay put: an infinity seen twice, where the difference would be NaN.
    """
    move = move & (new != running)
    zero = xp.zeros_like(running)
    step = xp.where(move, new, zero) - xp.where(move, running, zero)
    return xp.where(move, running + c * step, running)


class EmaObserver(MinMaxObserver):
    """Running min and max as exponential moving averages over batches.

    A row's first batch sets its min and max; each later batch moves them by
    ``averaging_constant * (batch value - running value)``, exactly as PyTorch's moving-average
    observers do. A batch with no value for a row leaves it as it was. The public view
    (:class:`~encanalyze.MinMaxRange`) is the min-max observer's.
    """

    kind = "ema"
    stats_type = MinMaxRange
    exact_ops = False  # the moving average rounds

    def __init__(self, shape, block_size=None, averaging_constant: float = 0.01) -> None:
        super().__init__(shape, block_size)
        self.averaging_constant = validate_averaging_constant(averaging_constant)

    def params(self) -> dict:
        return {**super().params(), "averaging_constant": self.averaging_constant}

    def update(self, xp: Namespace, x: Array, state: EmaState | None, want_batch=True):
        batch = batch_minmax(xp, x, self)
        seen = batch.min <= batch.max
        mine = EmaState(batch.min, batch.max, xp.astype(seen, index_dtype(xp)), batch.num_nan)
        if state is None:
            return mine, mine
        c = self.averaging_constant
        later = seen & (state.count > 0)
        lo, hi = (
            _moved(xp, state.min, batch.min, later, c),
            _moved(xp, state.max, batch.max, later, c),
        )
        first = seen & (state.count == 0)
        lo, hi = xp.where(first, batch.min, lo), xp.where(first, batch.max, hi)
        num_nan = add_counts(state.num_nan, batch.num_nan)
        return mine, EmaState(lo, hi, state.count + mine.count, num_nan)

    def merge(self, xp: Namespace, states: list[EmaState]) -> EmaState:
        """Average the parts' min and max, weighted by how many batches each part saw.

        Not the moving average of the concatenated batch sequence (no such thing exists without
        an order); with one part holding data it is that part's state exactly.
        """
        dtype = states[0].min.dtype
        wd = wide_dtype(xp, device_of(states[0].min))
        count = lo = hi = num_nan = None
        for s in states:  # sums of count * value, in float64 where the device has it
            c = xp.astype(s.count, wd)
            part_lo = c * xp.where(s.count > 0, xp.astype(s.min, wd), 0.0)
            part_hi = c * xp.where(s.count > 0, xp.astype(s.max, wd), 0.0)
            count = s.count if count is None else count + s.count
            lo = part_lo if lo is None else lo + part_lo
            hi = part_hi if hi is None else hi + part_hi
            num_nan = add_counts(num_nan, s.num_nan)
        held = count > 0
        weight = xp.astype(xp.where(held, count, 1), wd)
        lo = xp.astype(xp.where(held, lo / weight, xp.inf), dtype)
        hi = xp.astype(xp.where(held, hi / weight, -xp.inf), dtype)
        for s in states:  # a row held by one part keeps that part's values exactly
            only = (s.count == count) & held
            lo, hi = xp.where(only, s.min, lo), xp.where(only, s.max, hi)
        return EmaState(lo, hi, count, num_nan)

    def from_stats(self, xp: Namespace, stats: MinMaxRange) -> EmaState:
        rows = super().from_stats(xp, stats)  # one batch for each element that holds a range
        count = xp.astype(rows.min <= rows.max, index_dtype(xp))
        return EmaState(rows.min, rows.max, count, rows.num_nan)

    def arrays(self, state: EmaState) -> dict:
        out = {"min": state.min, "max": state.max, "count": state.count}
        if state.num_nan is not None:
            out["num_nan"] = state.num_nan
        return out

    def from_arrays(self, xp: Namespace, arrays: dict) -> EmaState:
        e = (self.num_rows,)
        lo = check_array(arrays, "min", e, "real floating")
        hi = check_array(arrays, "max", e, "real floating")
        count = check_array(arrays, "count", e, "integral")
        num_nan = check_array(arrays, "num_nan", e, "integral", optional=True)
        if lo.dtype != hi.dtype:
            raise ValueError(
                f"state arrays 'min' and 'max' differ in dtype: {lo.dtype}, {hi.dtype}"
            )
        num_nan = None if num_nan is None else xp.astype(num_nan, index_dtype(xp))
        return EmaState(lo, hi, xp.astype(count, index_dtype(xp)), num_nan)

    def num_empty(self, xp: Namespace, state: EmaState) -> int:
        return int(xp.count_nonzero(state.count == 0))
