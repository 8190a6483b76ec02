"""Min-max calibration: the encoding covers every value seen."""

from __future__ import annotations

from .. import backends
from .._xp import Array, Namespace, device_of, float_dtype
from ..encoding import minmax_encoding
from ..stats import MinMaxRange, empty_minmax, merge_minmax
from .base import EncodingAnalyzer

__all__ = ["MinMaxEncodingAnalyzer", "minmax_stats"]


def minmax_stats(xp: Namespace, x: Array, analyzer: EncodingAnalyzer) -> MinMaxRange:
    """Return the NaN-ignoring elementwise range of ``x`` reduced to ``analyzer``'s encodings."""
    dtype = float_dtype(xp, x)
    p = analyzer._plan(x)
    if p.values_per_encoding == 0:
        return empty_minmax(xp, analyzer.shape, dtype, device_of(x))
    if xp.isdtype(x.dtype, "bool"):
        x = xp.astype(x, dtype)
    lo, hi, num_nan = backends.minmax(xp, xp.reshape(x, p.view_shape), p.reduce_axes)
    if lo.dtype != dtype:
        lo, hi = xp.astype(lo, dtype), xp.astype(hi, dtype)
    shape = analyzer.shape
    if tuple(lo.shape) != shape:
        lo, hi = xp.reshape(lo, shape), xp.reshape(hi, shape)
        num_nan = None if num_nan is None else xp.reshape(num_nan, shape)
    return MinMaxRange(lo, hi, num_nan)


class MinMaxEncodingAnalyzer(EncodingAnalyzer[MinMaxRange]):
    """Min-max calibration: track the running minimum and maximum of every encoding element.

    Parameters
    ----------
    shape
        Shape of the encodings, aligned to the input from the right.
    block_size
        Optional block size for block-wise encodings.

    Examples
    --------
    >>> import math, numpy as np
    >>> from encanalyze import MinMaxEncodingAnalyzer
    >>> analyzer = MinMaxEncodingAnalyzer(shape=(1,))
    >>> _ = analyzer.update_stats(np.array([-2.0, 9.0]))
    >>> analyzer.compute_encodings(num_steps=7, is_symmetric=True)
    (array([-12.]), array([9.]))
    """

    stats_type = MinMaxRange

    @staticmethod
    def _stats_array(stats: MinMaxRange) -> Array:
        return stats.min

    def _update(self, xp: Namespace, x: Array, state: MinMaxRange | None):
        batch = minmax_stats(xp, x, self)
        return batch, batch if state is None else merge_minmax(state, batch, xp)

    def _encodings(
        self, xp: Namespace, stats: MinMaxRange, num_steps: int, is_symmetric: bool
    ) -> tuple[Array, Array]:
        return minmax_encoding(xp, stats.min, stats.max, num_steps, is_symmetric)

    def _merge_states(self, xp: Namespace, states: list[MinMaxRange]) -> MinMaxRange:
        merged = states[0]
        for other in states[1:]:
            merged = merge_minmax(merged, other, xp)
        return merged

    def _state_arrays(self, state: MinMaxRange) -> dict:
        out = {"min": state.min, "max": state.max}
        if state.num_nan is not None:
            out["num_nan"] = state.num_nan
        return out

    def _state_from_arrays(self, xp: Namespace, arrays: dict) -> MinMaxRange:
        lo = self._check_array(arrays, "min", self.shape, "real floating")
        hi = self._check_array(arrays, "max", self.shape, "real floating")
        num_nan = self._check_array(arrays, "num_nan", self.shape, "integral", optional=True)
        if lo.dtype != hi.dtype:
            raise ValueError(
                f"state arrays 'min' and 'max' differ in dtype: {lo.dtype}, {hi.dtype}"
            )
        return MinMaxRange(lo, hi, None if num_nan is None else xp.astype(num_nan, xp.int64))
