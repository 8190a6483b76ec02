"""Moving-average min-max calibration (PyTorch's ``MovingAverage*MinMaxObserver``)."""

from __future__ import annotations

from .._analyzer import EncodingAnalyzer
from .._encoding import minmax_encoding
from .._observers import EmaObserver, EmaState
from .._stats import MinMaxRange
from .._xp import Array, Namespace

__all__ = ["EmaMinMaxEncodingAnalyzer", "ema_rule"]


def ema_rule(
    xp: Namespace, state: EmaState, num_steps: int, is_symmetric: bool
) -> tuple[Array, Array]:
    """Apply the min-max encoding rules to the moving-average range."""
    return minmax_encoding(xp, state.min, state.max, num_steps, is_symmetric)


class EmaMinMaxEncodingAnalyzer(EncodingAnalyzer[MinMaxRange]):
    """Moving-average min-max calibration: ranges that follow recent batches.

    A row's first batch sets its min and max; each later batch moves them by
    ``averaging_constant * (batch min/max - running min/max)``: the running values of PyTorch's
    ``MovingAverageMinMaxObserver`` (per tensor) and ``MovingAveragePerChannelMinMaxObserver``
    (per channel) for the same batch sequence, here for any ``shape`` and ``block_size``. NaN
    values are ignored, and a batch with no value for an element leaves it as it was.

    Merging (:meth:`merge`, :func:`encanalyze.distributed.all_reduce_stats`) is not exact: a
    moving average depends on the order of the batches, which workers do not share. Where
    several workers hold statistics of an element, the merge averages their min and max
    weighted by the number of batches each saw; an element held by one worker keeps its values.
    (:func:`encanalyze.merge_stats` of the public :class:`~encanalyze.MinMaxRange` statistics
    takes their union instead.)

    Parameters
    ----------
    shape
        Shape of the encodings.
    averaging_constant
        Weight of each new batch, in (0, 1] (PyTorch's default 0.01).
    block_size
        Optional block size for block-wise encodings.

    Examples
    --------
    >>> import numpy as np
    >>> from encanalyze import EmaMinMaxEncodingAnalyzer
    >>> analyzer = EmaMinMaxEncodingAnalyzer(shape=(1,), averaging_constant=0.5)
    >>> for batch in ([-1.0, 2.0], [-3.0, 4.0]):
    ...     _ = analyzer.update_stats(np.array(batch))
    >>> analyzer.get_stats().min, analyzer.get_stats().max
    (array([-2.]), array([3.]))
    """

    rule = staticmethod(ema_rule)

    def __init__(self, shape, averaging_constant: float = 0.01, block_size=None) -> None:
        super().__init__(EmaObserver(shape, block_size, averaging_constant))

    @property
    def averaging_constant(self) -> float:
        """Weight of each new batch."""
        return self.observer.averaging_constant

    def params(self) -> dict:
        """Return the constructor arguments of this analyzer (JSON-compatible)."""
        return {**super().params(), "averaging_constant": self.averaging_constant}
