"""SQNR calibration: the grid with the least expected quantization noise on the histogram."""

from __future__ import annotations

import math
import numbers

from .._checks import int_at_least
from .._xp import Array, Namespace, device_of, work_dtype
from ..encoding import minimum_scale
from ..histograms import wide_dtype
from ..sqnr import (
    asymmetric_candidates,
    noise_brute_force,
    noise_by_cells,
    symmetric_candidates,
    use_cells,
)
from ..stats import Histogram
from .histogram import HistogramAnalyzer

__all__ = ["SqnrEncodingAnalyzer", "TfEnhancedEncodingAnalyzer", "first_least", "sqnr_search"]


def sqnr_search(
    xp: Namespace,
    counts: Array,
    edges: Array,
    lo: Array,
    hi: Array,
    num_steps: int,
    is_symmetric: bool,
    *,
    asymmetric_delta_candidates: int = 17,
    symmetric_delta_candidates: int = 101,
    offset_candidates: int = 21,
    gamma: float = 3.0,
    max_parallelism: int = 64,
    method: str = "auto",
) -> tuple[Array, Array]:
    """Return the least-noise encodings ``(min, max)`` ``(E,)`` of ``E`` histograms.

    ``counts (E, B)``, ``edges (E, B + 1)``, ``lo``/``hi`` ``(E,)`` the histograms' ranges.
    Encodings are searched ``max_parallelism`` at a time; ``method`` is ``"auto"`` (the cheaper
    exact method), ``"cells"`` or ``"brute"``. Results are in ``lo``'s dtype.
    """
    n = num_steps
    num_rows, num_bins = counts.shape
    cd = work_dtype(xp, lo.dtype)  # candidates in float32 (float64 for float64 stats)
    zero = xp.asarray(0.0, dtype=cd, device=device_of(lo))
    lo = xp.minimum(xp.astype(lo, cd), zero)
    hi = xp.maximum(xp.astype(hi, cd), zero)
    hi = xp.maximum(hi, lo + minimum_scale(n) * n)
    if is_symmetric:
        deltas, offsets = symmetric_candidates(xp, lo, hi, n, symmetric_delta_candidates)
    else:
        deltas, offsets = asymmetric_candidates(
            xp, lo, hi, n, asymmetric_delta_candidates, offset_candidates
        )
    nd = wide_dtype(xp, device_of(lo))
    cells = method == "cells" or (method == "auto" and use_cells(xp, n, num_bins, nd))
    noise_fn = noise_by_cells if cells else noise_brute_force
    best = []
    for start in range(0, num_rows, max_parallelism):  # bounded memory, not a loop per channel
        sl = slice(start, min(start + max_parallelism, num_rows))
        noise = noise_fn(
            xp,
            xp.astype(counts[sl, :], nd),
            xp.astype(edges[sl, :], nd),
            xp.astype(deltas[sl, :], nd),
            xp.astype(offsets[sl, :], nd),
            n,
            gamma,
        )
        best.append(first_least(xp, noise))
    choice = xp.concat(best) if len(best) > 1 else best[0]
    num_cand = deltas.shape[1]
    flat = xp.arange(num_rows, dtype=choice.dtype, device=device_of(choice)) * num_cand + choice
    d = xp.take(xp.reshape(deltas, (-1,)), flat)
    o = xp.take(xp.reshape(offsets, (-1,)), flat)
    enc_min = o * d
    return enc_min, enc_min + n * d


TIE_RTOL = 1e-9
"""Noises within this relative distance of the least are ties (the first candidate wins)."""


def first_least(xp: Namespace, noise: Array) -> Array:
    """Return, per row of ``noise`` ``(E, C)``, the first candidate tied with the least noise.

    The reference's sums tie exactly where every candidate rounds every bin to the same point
    (data below the grid's resolution) and it keeps the first; the exact fast search reaches the
    same sums in another order, so noises within ``TIE_RTOL`` of the least count as tied. A NaN
    noise never wins.
    """
    noise = xp.where(xp.isnan(noise), xp.inf, noise)
    least = xp.min(noise, axis=1, keepdims=True)
    tied = noise <= least + TIE_RTOL * xp.abs(least)
    return xp.argmax(xp.astype(tied, xp.int8), axis=1)  # the first True


class SqnrEncodingAnalyzer(HistogramAnalyzer):
    """SQNR calibration: pick the grid with the least expected noise on each histogram.

    Parameters
    ----------
    shape
        Shape of the encodings.
    num_bins
        Bins per histogram.
    asymmetric_delta_candidates, symmetric_delta_candidates, offset_candidates
        Sizes of the candidate grids (>= 2, >= 2 and >= 3).
    max_parallelism
        Encodings searched at once; bounds the search's memory to about
        ``max_parallelism x candidates x min(num_bins, num_steps + 2) x 8`` bytes per temporary
        (357 asymmetric candidates by default). It never changes the result.
    gamma
        Weight (>= 0) of the noise of clipped values.
    histogram_growth_limit
        How far the histogram range may grow after the first batch (>= 1; ``None``: no limit).
    block_size
        Optional block size for block-wise encodings.

    Examples
    --------
    The reference documentation's example, with its histogram built by hand:

    >>> import numpy as np
    >>> from encanalyze import Histogram, SqnrEncodingAnalyzer
    >>> analyzer = SqnrEncodingAnalyzer(shape=(1,), num_bins=10, gamma=1)
    >>> counts = np.array([[2, 0, 8, 8, 16, 22, 23, 12, 6, 3]], np.float32)
    >>> edges = np.linspace(-2.8907, 2.3912, 11, dtype=np.float32)[None]
    >>> stats = Histogram(counts, edges, edges[:, 0], edges[:, -1])
    >>> lo, hi = analyzer.compute_encodings_from_stats(stats, num_steps=256, is_symmetric=False)
    >>> print(np.round(lo, 4), np.round(hi, 4))
    [-2.708] [2.2438]
    """

    def __init__(
        self,
        shape,
        num_bins: int = 2048,
        *,
        asymmetric_delta_candidates: int = 17,
        symmetric_delta_candidates: int = 101,
        offset_candidates: int = 21,
        max_parallelism: int = 64,
        gamma: float = 3.0,
        histogram_growth_limit: float | None = None,
        block_size=None,
    ) -> None:
        super().__init__(shape, num_bins, histogram_growth_limit, block_size)
        self.asymmetric_delta_candidates = int_at_least(
            asymmetric_delta_candidates, 2, "asymmetric_delta_candidates"
        )
        self.symmetric_delta_candidates = int_at_least(
            symmetric_delta_candidates, 2, "symmetric_delta_candidates"
        )
        self.offset_candidates = int_at_least(offset_candidates, 3, "offset_candidates")
        self.max_parallelism = int_at_least(max_parallelism, 1, "max_parallelism")
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
            raise TypeError(f"gamma must be a finite number >= 0, got {gamma!r}")
        if not math.isfinite(gamma) or gamma < 0:
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
        self.gamma = float(gamma)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, num_bins={self.num_bins}, "
            f"gamma={self.gamma}, block_size={self.block_size})"
        )

    def params(self) -> dict:
        """Return the constructor arguments of this analyzer (JSON-compatible)."""
        params = super().params()
        return {
            "shape": params["shape"],
            "num_bins": self.num_bins,
            "asymmetric_delta_candidates": self.asymmetric_delta_candidates,
            "symmetric_delta_candidates": self.symmetric_delta_candidates,
            "offset_candidates": self.offset_candidates,
            "max_parallelism": self.max_parallelism,
            "gamma": self.gamma,
            "histogram_growth_limit": params["growth_limit"],
            "block_size": params["block_size"],
        }

    def _encodings(
        self, xp: Namespace, stats: Histogram, num_steps: int, is_symmetric: bool
    ) -> tuple[Array, Array]:
        counts, edges = self._rows(xp, stats)
        e = counts.shape[0]
        lo, hi = sqnr_search(
            xp,
            counts,
            edges,
            xp.reshape(stats.min, (e,)),
            xp.reshape(stats.max, (e,)),
            num_steps,
            is_symmetric,
            asymmetric_delta_candidates=self.asymmetric_delta_candidates,
            symmetric_delta_candidates=self.symmetric_delta_candidates,
            offset_candidates=self.offset_candidates,
            gamma=self.gamma,
            max_parallelism=self.max_parallelism,
        )
        dtype = stats.min.dtype
        return (
            xp.reshape(xp.astype(lo, dtype), self.shape),
            xp.reshape(xp.astype(hi, dtype), self.shape),
        )


class TfEnhancedEncodingAnalyzer(SqnrEncodingAnalyzer):
    """SQNR calibration with the TF-enhanced settings: 512 bins, gamma 3, growth limit 3."""

    def __init__(self, shape, block_size=None) -> None:
        super().__init__(
            shape,
            512,
            asymmetric_delta_candidates=17,
            symmetric_delta_candidates=101,
            offset_candidates=21,
            max_parallelism=64,
            gamma=3.0,
            histogram_growth_limit=3.0,
            block_size=block_size,
        )

    def params(self) -> dict:
        """Return the constructor arguments of this analyzer (JSON-compatible)."""
        return {"shape": list(self.shape), "block_size": super().params()["block_size"]}
