"""The min-max observer: elementwise running minimum and maximum."""

from __future__ import annotations

from .._backends import primitives
from .._stats import MinMaxRange, empty_minmax, merge_minmax
from .._xp import Array, Namespace, device_of, float_dtype, index_dtype, namespace_of
from .base import Observer, check_array

__all__ = ["MinMaxObserver", "batch_minmax"]


def batch_minmax(xp: Namespace, x: Array, observer: Observer) -> MinMaxRange:
    """Return the NaN-ignoring range of ``x`` reduced to ``observer``'s encodings ``(E,)``."""
    dtype = float_dtype(xp, x)
    p = observer.plan(x)
    e = observer.num_rows
    if p.values_per_encoding == 0:
        return empty_minmax(xp, (e,), dtype, device_of(x))
    table = primitives(xp)
    if table.minmax_rows is not None and x.dtype == dtype:
        fused = table.minmax_rows(x, p.view_shape, p.reduce_axes, e)
        if fused is not None:
            return MinMaxRange(*fused)
    if x.dtype != dtype and xp.isdtype(x.dtype, "bool"):
        x = xp.astype(x, dtype)
    lo, hi, num_nan = table.minmax(xp.reshape(x, p.view_shape), p.reduce_axes)
    if lo.dtype != dtype:
        lo, hi = xp.astype(lo, dtype), xp.astype(hi, dtype)
    if lo.shape != (e,):
        lo, hi = xp.reshape(lo, (e,)), xp.reshape(hi, (e,))
        num_nan = None if num_nan is None else xp.reshape(num_nan, (e,))
    return MinMaxRange(lo, hi, num_nan)


class MinMaxObserver(Observer[MinMaxRange]):
    """Elementwise running min and max (:class:`~encanalyze.MinMaxRange` of ``E`` rows)."""

    kind = "minmax"
    stats_type = MinMaxRange
    exact_ops = True

    def update(self, xp: Namespace, x: Array, state: MinMaxRange | None, want_batch=True):
        batch = batch_minmax(xp, x, self)
        return batch, batch if state is None else merge_minmax(state, batch, xp)

    def merge(self, xp: Namespace, states: list[MinMaxRange]) -> MinMaxRange:
        merged = states[0]
        for other in states[1:]:
            merged = merge_minmax(merged, other, xp)
        return merged

    def stats(self, xp: Namespace, state: MinMaxRange) -> MinMaxRange:
        shape = self.shape
        if type(state) is MinMaxRange and state.min.shape == shape:  # rows are the encodings
            return state
        num_nan = None if state.num_nan is None else xp.reshape(state.num_nan, shape)
        return MinMaxRange(xp.reshape(state.min, shape), xp.reshape(state.max, shape), num_nan)

    def from_stats(self, xp: Namespace, stats: MinMaxRange) -> MinMaxRange:
        e = (self.num_rows,)
        num_nan = None if stats.num_nan is None else xp.reshape(stats.num_nan, e)
        return MinMaxRange(xp.reshape(stats.min, e), xp.reshape(stats.max, e), num_nan)

    def arrays(self, state: MinMaxRange) -> dict:  # shaped like the encodings
        stats = self.stats(namespace_of(state.min), state)
        out = {"min": stats.min, "max": stats.max}
        if stats.num_nan is not None:
            out["num_nan"] = stats.num_nan
        return out

    def from_arrays(self, xp: Namespace, arrays: dict) -> MinMaxRange:
        lo = check_array(arrays, "min", self.shape, "real floating")
        hi = check_array(arrays, "max", self.shape, "real floating")
        num_nan = check_array(arrays, "num_nan", self.shape, "integral", optional=True)
        if lo.dtype != hi.dtype:
            raise ValueError(
                f"state arrays 'min' and 'max' differ in dtype: {lo.dtype}, {hi.dtype}"
            )
        num_nan = None if num_nan is None else xp.astype(num_nan, index_dtype(xp))
        return self.from_stats(xp, MinMaxRange(lo, hi, num_nan))

    def num_empty(self, xp: Namespace, state: MinMaxRange) -> int:
        return int(xp.count_nonzero(state.min > state.max))

    def home(self, state: MinMaxRange) -> Array:
        return state.min
