"""SQNR calibration: the candidate grid with the least expected noise on each histogram.

For each encoding's histogram, every bin's mass is taken to sit at its midpoint ``m``. A candidate
grid ``(delta d, offset o)`` quantizes ``m`` to ``q = round(m / d - o)``; bins with ``q < 0`` or
``q > n`` are clipped, and ``qdq = (clip(q, 0, n) + o) * d``. Its expected noise is
``sum(count * (qdq - m)**2)``, clipped bins weighted by ``gamma``. The least-noise candidate
wins (the first one on ties).

:func:`noise_brute_force` evaluates that sum bin by bin: ``O(bins)`` per candidate.

:func:`noise_by_cells` is exact too, in ``O(n)`` per candidate: the bins that round to the same
grid point form a contiguous run (midpoints increase), so with prefix sums ``P0, P1, P2`` of
``count``, ``count * m`` and ``count * m**2`` each run's noise is
``T**2 dP0 - 2 T dP1 + dP2`` for its target ``T``. Summation by parts removes the per-cell
differences: only ``P0`` and ``P1`` at the ``n`` interior run boundaries are gathered, and three
dot products finish the sum. The run boundaries come from the uniform bin layout in closed form;
the two clipping boundaries (where ``gamma`` applies) are then checked against the per-bin
rounding rule itself, so they match the brute force exactly. It needs float64 (summation by
parts cancels large terms) and pays off when ``n`` is well below the number of bins.
"""

from __future__ import annotations

import math
import numbers
from functools import partial

from .._analyzer import HistogramAnalyzer
from .._backends import clip, primitives
from .._checks import int_at_least
from .._encoding import clamp_to_finite, minimum_scale
from .._histograms import RowHistogram, wide_dtype
from .._xp import (
    Array,
    Namespace,
    device_of,
    div,
    in_row_blocks,
    index_dtype,
    namespace_of,
    on_host,
    take_rows,
    work_dtype,
)

__all__ = [
    "TIE_RTOL",
    "SqnrEncodingAnalyzer",
    "TfEnhancedEncodingAnalyzer",
    "asymmetric_candidates",
    "choose_method",
    "first_least",
    "midpoints",
    "noise_at",
    "noise_brute_force",
    "noise_by_cells",
    "occupied_first",
    "occupied_width",
    "sqnr_rule",
    "sqnr_search",
    "symmetric_candidates",
]


def asymmetric_candidates(
    xp: Namespace, lo: Array, hi: Array, num_steps: int, num_deltas: int, num_offsets: int
) -> tuple[Array, Array]:
    """Return asymmetric candidate ``(deltas, offsets)``, each ``(E, num_deltas * K)``.

    ``dmax = (hi - lo) / n``, ``o_obs = round(lo / dmax)``; deltas ``dmax * k / (D - 1)`` for
    ``k = 1..D``; ``K = min(n + 2, num_offsets)`` offsets: ``round(-n + t * n / (K - 2))`` for
    ``t = 0..K-2`` and ``o_obs``. Each pair's range ``[d o, d o + n d]`` is intersected with
    ``[dmax o_obs, dmax o_obs + n dmax]``, giving ``d' = max((top - bottom) / n, s)`` and
    ``o' = round(bottom / d')``. Order: delta-major. Arithmetic in ``lo``'s dtype.
    """
    n = num_steps
    dev = device_of(lo)
    dmax = div(xp, hi - lo, n)
    o_obs = xp.round(lo / dmax)
    k = xp.arange(1, num_deltas + 1, dtype=lo.dtype, device=dev)
    deltas = div(xp, dmax[:, None] * k[None, :], num_deltas - 1)
    count = min(n + 2, num_offsets)
    grid = [float(round(-n + t * n / (count - 2))) for t in range(count - 1)]
    grid = xp.broadcast_to(xp.asarray(grid, dtype=lo.dtype, device=dev), (lo.shape[0], count - 1))
    offsets = xp.concat([grid, o_obs[:, None]], axis=1)
    d, o = deltas[:, :, None], offsets[:, None, :]
    test_min = d * o
    test_max = test_min + d * n
    obs_min = (dmax * o_obs)[:, None, None]
    obs_max = obs_min + (dmax * n)[:, None, None]
    bottom = xp.maximum(obs_min, test_min)
    top = xp.minimum(obs_max, test_max)
    d_new = xp.maximum(
        div(xp, top - bottom, n), xp.asarray(minimum_scale(n), dtype=lo.dtype, device=dev)
    )
    o_new = xp.round(bottom / d_new)
    shape = (lo.shape[0], num_deltas * count)
    return xp.reshape(d_new, shape), xp.reshape(o_new, shape)


def symmetric_candidates(
    xp: Namespace, lo: Array, hi: Array, num_steps: int, num_deltas: int
) -> tuple[Array, Array]:
    """Return symmetric candidates: deltas ``max(dmax k / (D - 1), s)``, one offset ``-ceil(n/2)``.

    ``dmax = 2 max(hi, -lo) / n``, ``k = 1..D``; both results are ``(E, D)``.
    """
    dev = device_of(lo)
    dmax = 2 * div(xp, xp.maximum(hi, -lo), num_steps)  # (2 m) / n, without overflowing 2 m
    k = xp.arange(1, num_deltas + 1, dtype=lo.dtype, device=dev)
    deltas = xp.maximum(
        div(xp, dmax[:, None] * k[None, :], num_deltas - 1),
        xp.asarray(minimum_scale(num_steps), dtype=lo.dtype, device=dev),
    )
    offsets = xp.full(deltas.shape, float(math.floor(-num_steps / 2)), dtype=lo.dtype, device=dev)
    return deltas, offsets


def midpoints(edges: Array) -> Array:
    """Return the bins' midpoints ``(a + b) / 2``.

    Where the sum would overflow (edges beyond half the dtype's largest value) it is
    ``a / 2 + b / 2``, the same number.
    """
    a, b = edges[:, :-1], edges[:, 1:]
    xp = namespace_of(edges)
    m = (a + b) / 2
    return xp.where(xp.isinf(m), a / 2 + b / 2, m)


def noise_brute_force(
    xp: Namespace, counts: Array, edges: Array, deltas: Array, offsets: Array, n: int, gamma: float
) -> Array:
    """Return each candidate's expected noise, bin by bin: ``(E, C)`` from ``(E, B)`` histograms.

    Temporaries are ``E x C x B`` elements of ``counts``' dtype.
    """
    return noise_at(xp, counts, midpoints(edges), deltas, offsets, n, gamma)


def noise_at(
    xp: Namespace, counts: Array, points: Array, deltas: Array, offsets: Array, n: int, gamma: float
) -> Array:
    """Return each candidate's expected noise of masses ``counts`` at ``points``, both ``(E, P)``.

    The brute force over any set of points: all bins' midpoints, or only the occupied ones.
    """
    m = points[:, None, :]
    d, o = deltas[:, :, None], offsets[:, :, None]
    q = xp.round(div(xp, m, d) - o)
    clipped = (q < 0) | (q > n)
    err = (clip(xp, q, 0.0, float(n)) + o) * d - m
    err = err * err
    if gamma != 1:
        err = xp.where(clipped, err * gamma, err)
    return xp.sum(counts[:, None, :] * err, axis=-1)


def choose_method(xp: Namespace, counts: Array, num_steps: int, dtype) -> tuple[str, int]:
    """Return the cheaper exact method for these histograms and the points it visits per row.

    The brute force costs about twice as much per visited bin as the cells cost per grid step,
    and it needs to visit only the occupied bins (at most the widest row's count; weights of a
    few hundred values leave most of 2048 bins empty). The cells need float64. Reads the
    occupancy back to the host (``compute_encodings`` time, never ``update_stats``).
    """
    width = occupied_width(xp, counts)
    cells = dtype == xp.float64 and num_steps + 2 <= 2 * width
    return ("cells", num_steps + 2) if cells else ("brute", width)


def occupied_width(xp: Namespace, counts: Array) -> int:
    """Return the most occupied bins of any row of ``counts`` (at least 1; syncs)."""
    if counts.shape[0] == 0:
        return 1
    return max(1, int(xp.max(xp.count_nonzero(counts > 0, axis=1))))


def occupied_first(xp: Namespace, counts: Array, points: Array, width: int):
    """Return ``(counts, points)`` of each row's occupied bins first, in order, ``(E, width)``.

    Rows with fewer occupied bins are padded with empty ones (zero counts add no noise).
    """
    order = xp.argsort(xp.astype(counts == 0, xp.int8), axis=1, stable=True)[:, :width]
    return take_rows(xp, counts, order), take_rows(xp, points, order)


HOST_BLOCK = 2**18
"""Host backends search the cells in blocks of about this many ``E x C x n`` elements."""


def noise_by_cells(
    xp: Namespace,
    counts: Array,
    edges: Array,
    deltas: Array,
    offsets: Array,
    n: int,
    gamma: float,
    scale: Array | None = None,
) -> Array:
    """Return each candidate's expected noise from prefix sums, ``O(n)`` per candidate.

    The work is in ``counts``' dtype (float64); ``edges`` are widened to it and multiplied by
    ``scale`` ``(E, 1)`` where given. Temporaries are ``E x C x n`` elements (host backends
    work through the rows in pieces of about 2**18 such elements, which keeps them in cache;
    host float64 counts take the compiled search where it was built: the same arithmetic, row
    by row). See the module docstring.
    """
    fused = primitives(xp).noise_by_cells
    if fused is not None:
        found = fused(counts, edges, deltas, offsets, n, gamma, scale)
        if found is not None:
            return found
    edges = xp.astype(edges, counts.dtype)
    if scale is not None:
        edges = edges * scale
    step = counts.shape[0]
    if on_host(counts):
        step = HOST_BLOCK // max(1, deltas.shape[1] * n)
    return in_row_blocks(
        xp, partial(_noise_by_cells, xp), (counts, edges, deltas, offsets), step, n, gamma
    )


def _noise_by_cells(
    xp: Namespace, counts: Array, edges: Array, d: Array, o: Array, n: int, gamma: float
) -> Array:
    num_rows, num_bins = counts.shape
    dev = device_of(counts)
    wd = counts.dtype
    m = midpoints(edges)
    # prefix sums with a leading 0: one zero column on counts and midpoints serves all three
    zero = xp.zeros((num_rows, 1), dtype=wd, device=dev)
    c_pad, m_pad = xp.concat([zero, counts], axis=1), xp.concat([zero, m], axis=1)
    cm = c_pad * m_pad
    p0 = xp.cumulative_sum(c_pad, axis=1)
    p1 = xp.cumulative_sum(cm, axis=1)
    p2 = xp.cumulative_sum(cm * m_pad, axis=1)
    e0 = edges[:, :1]
    w = div(xp, edges[:, num_bins:] - e0, num_bins)
    # run k starts at the first midpoint with m / d - o >= k - 1/2; with uniform bins that is
    # bin ceil(alpha + beta k), for m_i = e0 + (i + 1/2) w
    beta = div(xp, d, w)
    alpha = div(xp, (o - 0.5) * d - e0, w) - 0.5
    row = xp.arange(num_rows, dtype=wd, device=dev)[:, None]
    flat_m = xp.reshape(m, (num_rows * num_bins,))
    width = num_bins + 1
    m_base = row * num_bins  # row offsets into the flattened midpoints
    base = row * width  # and into the flattened prefix sums

    def take(flat: Array, bins: Array, offsets: Array) -> Array:  # flat[row, bins], float bins
        idx = xp.astype(bins + offsets, index_dtype(xp))
        return xp.reshape(xp.take(flat, xp.reshape(idx, (-1,))), bins.shape)

    def clipping_boundary(k: int) -> Array:
        """First bin of run ``k`` (0 or n + 1), exactly as the per-bin ``round()`` decides."""
        b = clip(xp, xp.ceil(alpha + beta * k), 0.0, float(num_bins))
        below = clip(xp, b - 1, 0.0, float(num_bins - 1))
        q_below = xp.round(div(xp, take(flat_m, below, m_base), d) - o)
        b = xp.where((b > 0) & (q_below >= k), b - 1, b)
        at = clip(xp, b, 0.0, float(num_bins - 1))
        q_at = xp.round(div(xp, take(flat_m, at, m_base), d) - o)
        return xp.where((b < num_bins) & (q_at < k), b + 1, b)

    b0, bn = clipping_boundary(0), clipping_boundary(n + 1)
    flat0 = xp.reshape(p0, (-1,))
    flat1 = xp.reshape(p1, (-1,))
    flat2 = xp.reshape(p2, (-1,))
    if n > 0:  # interior boundaries k = 1..n, kept between the clipping ones
        k = xp.arange(1, n + 1, dtype=wd, device=dev)  # the row offset (base) rides along
        inner = xp.ceil((alpha + base)[:, :, None] + beta[:, :, None] * k)
        inner = clip(xp, inner, (b0 + base)[:, :, None], (bn + base)[:, :, None])
        shape = inner.shape
        idx = xp.reshape(xp.astype(inner, index_dtype(xp)), (-1,))
        # gathered prefix sums as (E * C, n) matrices: the three sums are one small GEMM each
        # (one gather of (P0, P1) pairs and one (E * C, 2n) x (2n, 3) GEMM: 7% faster with
        # NumPy, but torch CUDA's search took 68 ms instead of 14 on an H100 with it)
        g0 = xp.reshape(xp.take(flat0, idx), (shape[0] * shape[1], n))
        g1 = xp.reshape(xp.take(flat1, idx), (shape[0] * shape[1], n))
        sums = xp.matmul(g0, xp.stack([2 * k - 1, xp.ones_like(k)], axis=1))
        s_a = xp.reshape(sums[:, 0], shape[:2])
        s_b = xp.reshape(sums[:, 1], shape[:2])
        s_c = xp.reshape(xp.matmul(g1, xp.ones((n, 1), dtype=wd, device=dev)), shape[:2])
    else:
        s_a = s_b = s_c = xp.zeros(d.shape, dtype=wd, device=dev)

    p0_0, p1_0, p2_0 = (take(f, b0, base) for f in (flat0, flat1, flat2))
    p0_n, p1_n, p2_n = (take(f, bn, base) for f in (flat0, flat1, flat2))
    tot0, tot1, tot2 = p0[:, num_bins:], p1[:, num_bins:], p2[:, num_bins:]
    t0, tn = o * d, (o + n) * d
    low = t0 * t0 * p0_0 - 2 * t0 * p1_0 + p2_0
    high = tn * tn * (tot0 - p0_n) - 2 * tn * (tot1 - p1_n) + (tot2 - p2_n)
    # the grid terms in units of d: with integer counts the d**2 bracket is exact, so the large
    # terms cancel before any rounding and data below the grid's resolution ties exactly
    steps_sq = (o + n) * (o + n) * p0_n - o * o * p0_0 - s_a - 2 * o * s_b
    steps = s_c - (o + n) * p1_n + o * p1_0
    interior = d * d * steps_sq + 2 * d * steps + (p2_n - p2_0)
    return gamma * (low + high) + interior


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
    Encodings are searched in blocks whose temporaries hold at most ``max_parallelism x C x B``
    elements, the reference's (``max_parallelism`` encodings by brute force over all bins,
    proportionally more by the cheaper methods); ``method`` is ``"auto"`` (the cheaper exact
    method, :func:`choose_method`: cells, or the brute force over the occupied bins),
    ``"cells"`` or ``"brute"`` (every bin). Results are in ``lo``'s dtype.
    """
    n = num_steps
    num_rows, num_bins = counts.shape
    cd = work_dtype(xp, lo.dtype)  # candidates in float32 (float64 for float64 stats)
    zero = xp.asarray(0.0, dtype=cd, device=device_of(lo))
    lo = xp.minimum(xp.astype(lo, cd), zero)
    hi = xp.maximum(xp.astype(hi, cd), zero)
    hi = xp.maximum(hi, lo + minimum_scale(n) * n)
    if is_symmetric:
        make = partial(symmetric_candidates, num_deltas=symmetric_delta_candidates)
    else:
        make = partial(
            asymmetric_candidates,
            num_deltas=asymmetric_delta_candidates,
            num_offsets=offset_candidates,
        )
    nd = wide_dtype(xp, device_of(lo))
    deltas, offsets = make(xp, lo, hi, num_steps=n)
    if nd != cd:  # ranges near float32's largest value overflow its candidate arithmetic
        wide = make(xp, xp.astype(lo, nd), xp.astype(hi, nd), num_steps=n)
        ok = xp.isfinite(deltas) & xp.isfinite(offsets)
        deltas = xp.where(ok, deltas, xp.astype(wide[0], cd))
        offsets = xp.where(ok, offsets, xp.astype(wide[1], cd))
    per_row = num_bins
    if method == "auto":
        method, per_row = choose_method(xp, counts, n, nd)
    points = None
    if method == "cells":
        per_row = n + 2
    else:  # brute force over the occupied bins' midpoints (all bins for method="brute")
        points = midpoints(edges)
        if per_row < num_bins:
            counts, points = occupied_first(xp, counts, points, per_row)
    # the reference's memory, max_parallelism x C x B per temporary, for any method
    rows = max_parallelism * max(1, num_bins // per_row)
    best = []
    for start in range(0, num_rows, rows):  # bounded memory, not a loop per channel
        sl = slice(start, min(start + rows, num_rows))
        counts_sl, edges_sl = xp.astype(counts[sl, :], nd, copy=False), edges[sl, :]
        s = _power_of_two_scale(xp, xp.astype(edges_sl[:, ::num_bins], nd))
        d_sl, o_sl = xp.astype(deltas[sl, :], nd) * s, xp.astype(offsets[sl, :], nd)
        if points is None:
            noise = noise_by_cells(xp, counts_sl, edges_sl, d_sl, o_sl, n, gamma, s)
        else:
            p_sl = xp.astype(points[sl, :], nd) * s
            noise = noise_at(xp, counts_sl, p_sl, d_sl, o_sl, n, gamma)
        best.append(first_least(xp, noise))
    choice = xp.concat(best) if len(best) > 1 else best[0]
    d, o = take_rows(xp, deltas, choice), take_rows(xp, offsets, choice)
    enc_min = o * d
    enc_max = enc_min + n * d
    enc_max = xp.where(xp.isfinite(enc_max), enc_max, (o + n) * d)  # a width past the dtype
    return clamp_to_finite(xp, enc_min, enc_max, enc_min.dtype)  # as min-max does, with a warning


def _power_of_two_scale(xp: Namespace, edges: Array) -> Array:
    """Return ``(E, 1)`` factors ``2**-k`` that bring huge rows near 1, else exactly 1.

    ``edges`` ``(E, 2+)``: only the first and last columns are read.

    Squared errors of values near 1e154 overflow float64 (near 1e19 float32, the noise dtype
    where the device lacks float64); rows reaching beyond the fourth root of the dtype's largest
    value are scaled by a power of two, which is exact and scales every candidate's noise by the
    same factor, so the least noise (and the encodings) stay the same.
    """
    huge = float(xp.finfo(edges.dtype).max) ** 0.25
    mag = xp.maximum(xp.abs(edges[:, :1]), xp.abs(edges[:, -1:]))
    k = xp.where(mag > huge, xp.floor(xp.log2(xp.where(mag > huge, mag, 1.0))), 0.0)
    return xp.pow(xp.asarray(2.0, dtype=edges.dtype, device=device_of(edges)), -k)


def sqnr_rule(
    xp: Namespace, state: RowHistogram, num_steps: int, is_symmetric: bool, **search
) -> tuple[Array, Array]:
    """Return the least-noise grid of each histogram, candidates from its observed range."""
    obs_lo, obs_hi = state.observed_range()
    edges = state.edges_of(xp)
    lo, hi = sqnr_search(xp, state.counts, edges, obs_lo, obs_hi, num_steps, is_symmetric, **search)
    return xp.astype(lo, obs_lo.dtype), xp.astype(hi, obs_lo.dtype)


MAX_GAMMA = 1e12
"""The largest clipping weight: beyond it weighted noises leave float64's range."""

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
        Bounds the search's memory, as the reference's: about
        ``max_parallelism x candidates x num_bins x 8`` bytes per temporary (357 asymmetric
        candidates by default). The exact search by cells needs ``num_steps + 2`` elements per
        candidate and encoding, so it searches ``num_bins // (num_steps + 2)`` times as many
        encodings at once in the same memory (fewer, larger steps: faster on a GPU). It never
        changes the result.
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
        if not math.isfinite(gamma) or not 0 <= gamma <= MAX_GAMMA:
            raise ValueError(f"gamma must be a number in [0, {MAX_GAMMA:g}], got {gamma!r}")
        self.gamma = float(gamma)

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
            "histogram_growth_limit": None if math.isinf(self.growth_limit) else self.growth_limit,
            "block_size": params["block_size"],
        }

    rule = staticmethod(sqnr_rule)

    def rule_params(self) -> dict:
        """Return the keyword arguments this analyzer passes to its rule."""
        return {
            "asymmetric_delta_candidates": self.asymmetric_delta_candidates,
            "symmetric_delta_candidates": self.symmetric_delta_candidates,
            "offset_candidates": self.offset_candidates,
            "gamma": self.gamma,
            "max_parallelism": self.max_parallelism,
        }


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
