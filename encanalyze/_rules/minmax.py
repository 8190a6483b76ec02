"""Min-max calibration: the encoding covers every value seen."""

from __future__ import annotations

from .._analyzer import EncodingAnalyzer
from .._encoding import minmax_encoding
from .._observers import MinMaxObserver
from .._stats import MinMaxRange
from .._xp import Array, Namespace

__all__ = ["MinMaxEncodingAnalyzer", "minmax_rule"]


def minmax_rule(
    xp: Namespace, state: MinMaxRange, num_steps: int, is_symmetric: bool
) -> tuple[Array, Array]:
    """Apply the min-max encoding rules to the running range."""
    return minmax_encoding(xp, state.min, state.max, num_steps, is_symmetric)


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

    rule = staticmethod(minmax_rule)

    def __init__(self, shape, block_size=None) -> None:
        super().__init__(MinMaxObserver(shape, block_size))
