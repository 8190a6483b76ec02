"""MSE calibration: PyTorch's ``HistogramObserver`` L2 search, for every encoding at once.

PyTorch's default activation observer (x86 / fbgemm qconfigs) clips a histogram's range by a
greedy walk over its quantiles (``HistogramObserver._non_linear_param_search``, after caffe2's
``NormMinimization``): ``alpha`` and ``beta`` move towards each other in steps of ``1e-5``;
each step moves whichever end (``start_bin`` or ``end_bin``) would drop more bins, and each
move that changes the bins is scored by the expected L2 quantization error of ``dst_nbins``
uniform levels over ``[start_bin, end_bin]``; the walk stops at the first move that makes the
error larger. The result is ``(min + w start_bin, min + w (end_bin + 1))``.

PyTorch runs that walk in Python, up to 100,000 steps per tensor. Here every encoding walks at
once, and the steps that change no bin are skipped in closed form: each loop iteration is one
move of every encoding that is still walking. The quantile thresholds are compared in float32
and the error is computed elementwise in float32 with PyTorch's operations, so that the same
histogram gives the same bins; the error is summed in float64 (PyTorch sums in float32, which
can only matter where two consecutive errors agree to about 1e-7).

A walk costs its moves times the columns it scores. Rows of a few dozen values in 2048 bins
(weights) are walked over their occupied bins only (:data:`SPARSE_FACTOR`): an empty bin adds
nothing to the error and every quantile lands on an occupied bin, so the ranges are the same,
bit for bit, as over every bin (tested), for ``O(values)`` columns instead of ``O(bins)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .._analyzer import HistogramAnalyzer
from .._encoding import minmax_encoding
from .._histograms import RowHistogram, wide_dtype
from .._xp import Array, Namespace, device_of, div, index_dtype, take_rows
from .sqnr import occupied_first, occupied_width

__all__ = ["MseEncodingAnalyzer", "l2_search", "mse_rule"]

_STEP = 1e-5
_WALK = 100_002  # alpha + beta steps never exceed 1 / _STEP


@lru_cache(maxsize=1)
def _walk() -> tuple[np.ndarray, np.ndarray]:
    """``alpha`` and ``beta`` after k moves, accumulated in float64 exactly as Python does."""
    alpha = np.concatenate([[0.0], np.cumsum(np.full(_WALK, _STEP))])
    beta = np.subtract.accumulate(np.concatenate([[1.0], np.full(_WALK, _STEP)]))
    return alpha, beta


def _floor_div(xp: Namespace, a: Array, b: Array) -> Array:
    """``torch.div(a, b, rounding_mode="floor")``: the exact quotient, not ``floor(a / b)``."""
    return xp.round(div(xp, a - xp.remainder(a, b), b))


def _norm(xp: Namespace, db: Array, de: Array, density: Array) -> Array:
    """PyTorch's ``_get_norm``: ``density * (de**3 - db**3) / 3``, in its order."""
    return density * div(xp, de * de * de - db * db * db, 3)


def _l2_error(
    xp: Namespace,
    counts: Array,
    src: Array,
    bw64: Array,
    start: Array,
    end: Array,
    dst_nbins: int,
    wd,
) -> Array:
    """PyTorch's ``_compute_quantization_error`` for ``(E,)`` bin ranges, elementwise in float32.

    ``counts`` ``(E, K)`` are the counts of bins ``src`` (``None``: every bin; ``(E, K)``:
    each row's occupied bins, an empty bin adding nothing).
    """
    f32 = xp.float32
    if src is None:
        src = xp.arange(counts.shape[1], dtype=index_dtype(xp), device=device_of(counts))[None, :]
    dw64 = div(xp, bw64 * xp.astype(end - start + 1, wd), dst_nbins)
    bw, dw = xp.astype(bw64, f32)[:, None], xp.astype(dw64, f32)[:, None]
    half = xp.astype(dw64 / 2, f32)[:, None]
    begin = xp.astype(src - start[:, None], f32) * bw
    stop = begin + bw
    last = float(dst_nbins - 1)
    dst_begin = xp.minimum(xp.maximum(_floor_div(xp, begin, dw), 0.0), last)
    dst_end = xp.minimum(xp.maximum(_floor_div(xp, stop, dw), 0.0), last)
    density = div(xp, counts, bw)
    norm = _norm(xp, begin - (dst_begin + 0.5) * dw, half, density)
    norm = norm + (dst_end - dst_begin - 1) * _norm(xp, -half, half, density)
    norm = norm + _norm(xp, -half, stop - (dst_end * dw + half), density)
    total = xp.sum(xp.astype(norm, wd), axis=1)
    return xp.where(dw64 == 0, 0.0, total)


SPARSE_FACTOR = 4
"""Rows are walked over their occupied bins only where the most occupied row fills at most
``1 / SPARSE_FACTOR`` of the bins (weights: a few dozen values in 2048 bins)."""


def _occupied(xp: Namespace, counts: Array) -> tuple[Array, Array | None, Array]:
    """Return the columns the walk works on: ``(counts, src, cumulative counts)``.

    Dense histograms: every bin, ``src`` None. Sparse ones (see :data:`SPARSE_FACTOR`):
    each row's occupied bins in order, ``(E, K)``, padded with bin ``B``, count 0 and
    cumulative count ``+inf``. The cumulative counts of the occupied bins are those of every
    bin (adding a zero changes no float sum), and between them the cumulative count is flat,
    so every threshold the walk looks for lands on an occupied bin (or on bin 0).
    """
    num_rows, num_bins = counts.shape
    width = occupied_width(xp, counts)
    if num_rows == 0 or width * SPARSE_FACTOR > num_bins:
        return counts, None, xp.cumulative_sum(counts, axis=1)
    bins = xp.arange(num_bins, dtype=index_dtype(xp), device=device_of(counts))
    kept, src = occupied_first(xp, counts, xp.broadcast_to(bins[None, :], counts.shape), width)
    real = kept > 0
    src = xp.where(real, src, num_bins)
    cs = xp.where(real, xp.cumulative_sum(kept, axis=1), xp.inf)
    return kept, src, cs


def _first_bin(xp: Namespace, below: Array, src: Array, none: Array, num_bins: int) -> Array:
    """Return the first bin where the cumulative count passes a threshold (``num_bins``: none).

    ``below`` ``(E, K)`` marks the columns still short of it (a prefix of them); where
    ``none``, the threshold is passed at bin 0 already.
    """
    m = xp.count_nonzero(below, axis=1)
    if src is None:  # every bin: the number of bins short of it
        return m
    end = xp.full((src.shape[0], 1), num_bins, dtype=src.dtype, device=device_of(src))
    first = take_rows(xp, xp.concat([src, end], axis=1), m)
    return xp.where(none, 0, first)


def _cumulative_at(xp: Namespace, cs: Array, src: Array, end: Array) -> Array:
    """Return each row's cumulative count at bin ``end``."""
    if src is None:
        return take_rows(xp, cs, end)
    k = xp.count_nonzero(src <= end[:, None], axis=1)
    at = take_rows(xp, cs, xp.maximum(k - 1, 0))
    return xp.where(k == 0, 0.0, at)


def _gather(xp: Namespace, table: Array, idx: Array) -> Array:
    return xp.take(table, xp.minimum(idx, table.shape[0] - 1))  # indices are >= 0


def _first_beta_below(
    xp: Namespace, beta: Array, j: Array, total: Array, level: Array, wd
) -> Array:
    """Return the first ``k >= j`` with ``f32(beta[k + 1] * total) < level`` (closed form).

    ``beta[k]`` is ``1 - k * 1e-5`` up to rounding far below a step, so the estimate is off by
    at most one; a window of candidates around it is checked with the exact comparison.
    """
    est = xp.floor(div(xp, 1 - div(xp, xp.astype(level, wd), total), _STEP)) - 1
    base = xp.maximum(xp.astype(est, index_dtype(xp)) - 2, j)
    found = xp.full(j.shape, _WALK, dtype=index_dtype(xp), device=device_of(j))
    for off in range(5, -1, -1):  # the smallest k that satisfies it wins
        k = base + off
        ok = xp.astype(_gather(xp, beta, k + 1) * total, xp.float32) < level
        found = xp.where(ok, k, found)
    return found


def l2_search(
    xp: Namespace, counts: Array, lo: Array, hi: Array, dst_nbins: int
) -> tuple[Array, Array]:
    """Return PyTorch's clipped range ``(min, max)`` ``(E,)`` for ``E`` histograms at once.

    ``counts (E, B)`` over ``[lo, hi]`` (the first and last edge, like PyTorch's ``min_val``
    and ``max_val``); ``dst_nbins`` quantization levels (``2**bits``). Results in float32, as
    PyTorch's buffers.
    """
    num_rows, num_bins = counts.shape
    dev = device_of(counts)
    wd = wide_dtype(xp, dev)
    f32 = xp.float32
    counts = xp.astype(counts, f32)
    total = xp.astype(xp.sum(counts, axis=1), wd)
    counts, src, cs = _occupied(xp, counts)  # src: each row's occupied bins, or None: all
    lo32, hi32 = xp.astype(lo, f32), xp.astype(hi, f32)
    bw64 = (xp.astype(hi32, wd) - xp.astype(lo32, wd)) / num_bins  # PyTorch's .item() math
    alpha, beta = (xp.asarray(a, dtype=wd, device=dev) for a in _walk())

    start = xp.zeros((num_rows,), dtype=index_dtype(xp), device=dev)
    end = xp.full((num_rows,), num_bins - 1, dtype=index_dtype(xp), device=dev)
    i, j = xp.zeros_like(start), xp.zeros_like(start)
    best = xp.full((num_rows,), xp.inf, dtype=wd, device=dev)
    rows = xp.arange(num_rows, dtype=index_dtype(xp), device=dev)  # of the rows still walking
    walking = xp.ones((num_rows,), dtype=xp.bool, device=dev)
    finished: list[tuple[Array, Array, Array]] = []  # (rows, start, end) of rows that stopped
    while True:
        # a range of one bin can move neither end again: PyTorch walks on to alpha >= beta
        # without changing it (up to 100,000 steps for a dead filter), here the row stops
        walking = walking & (_gather(xp, alpha, i) < _gather(xp, beta, j)) & (start < end)
        left_walking = int(xp.count_nonzero(walking))
        if left_walking == 0:
            break
        if left_walking <= 3 * rows.shape[0] // 4:  # drop the rows that stopped from the walk
            keep, stop = xp.nonzero(walking)[0], xp.nonzero(~walking)[0]
            finished.append(tuple(xp.take(a, stop) for a in (rows, start, end)))
            rows, start, end, i, j, best, total, bw64, walking = (
                xp.take(a, keep) for a in (rows, start, end, i, j, best, total, bw64, walking)
            )
            counts, cs = xp.take(counts, keep, axis=0), xp.take(cs, keep, axis=0)
            src = None if src is None else xp.take(src, keep, axis=0)
        # the left end: the first bin whose cumulative count reaches the next alpha quantile
        thr_a = xp.astype(_gather(xp, alpha, i + 1) * total, f32)
        left = _first_bin(xp, cs < thr_a[:, None], src, thr_a <= 0, num_bins)
        left = xp.minimum(xp.maximum(left, start), end)
        moves_left = left > start
        # rows whose left end stays put wait (beta steps only) until the right end can move
        level = _cumulative_at(xp, cs, src, end)
        jump = _first_beta_below(xp, beta, j, total, level, wd)
        j_move = xp.where(moves_left, j, xp.maximum(jump, j))
        walking = walking & (_gather(xp, alpha, i) < _gather(xp, beta, j_move))
        thr_b = xp.astype(_gather(xp, beta, j_move + 1) * total, f32)
        right = _first_bin(xp, cs <= thr_b[:, None], src, thr_b < 0, num_bins) - 1
        right = xp.minimum(xp.maximum(right, start), end)
        take_left = (left - start) > (end - right)
        new_start = xp.where(take_left, left, start)
        new_end = xp.where(take_left, end, right)
        error = _l2_error(xp, counts, src, bw64, new_start, new_end, dst_nbins, wd)
        accept = walking & ~(error > best)
        start, end = xp.where(accept, new_start, start), xp.where(accept, new_end, end)
        best = xp.where(accept, error, best)
        i = xp.where(accept & take_left, i + 1, i)
        j = xp.where(accept & ~take_left, j_move + 1, j)
        walking = accept
    if finished:  # every row's result back in its place
        parts = [*finished, (rows, start, end)]
        order = xp.argsort(xp.concat([p[0] for p in parts]))
        start = xp.take(xp.concat([p[1] for p in parts]), order)
        end = xp.take(xp.concat([p[2] for p in parts]), order)
    width = div(xp, hi32 - lo32, num_bins)
    return lo32 + width * xp.astype(start, f32), lo32 + width * xp.astype(end + 1, f32)


def mse_rule(
    xp: Namespace, state: RowHistogram, num_steps: int, is_symmetric: bool
) -> tuple[Array, Array]:
    """Return the MSE encodings of histograms.

    Each is clipped by PyTorch's L2 search (``num_steps + 1`` levels), then goes through the
    min-max rules without the 2-bit step.
    """
    lo, hi = l2_search(xp, state.counts, state.lo, state.hi, num_steps + 1)
    # data narrower than one bin of float resolution (a constant, subnormal values): the
    # histogram spans [v - 0.5, v + 0.5] around it, but PyTorch's search runs on the data's own
    # range, whose bin width is 0, and returns (min, min): so do we
    obs_lo, obs_hi = state.observed_range()
    num_bins = state.counts.shape[1]
    point = div(xp, obs_hi - obs_lo, num_bins) == 0
    lo = xp.where(point, xp.astype(obs_lo, lo.dtype), lo)
    hi = xp.where(point, xp.astype(obs_lo, hi.dtype), hi)
    return minmax_encoding(
        xp, lo, hi, num_steps, is_symmetric, out_dtype=state.lo.dtype, two_bit_step=False
    )


class MseEncodingAnalyzer(HistogramAnalyzer):
    """MSE calibration: PyTorch ``HistogramObserver``'s L2 search on each histogram.

    Given the same counts and range, the clipped ``(min, max)`` equals what PyTorch's
    ``HistogramObserver._non_linear_param_search`` computes from its own histogram buffers (its
    ``dst_nbins`` is ``num_steps + 1``: 256 for 8 bits); the min-max encoding rules then apply.
    PyTorch searches one tensor at a time in Python; here every encoding (per channel, per
    block) is searched at once.

    Parameters
    ----------
    shape
        Shape of the encodings.
    num_bins
        Bins per histogram (PyTorch's default: 2048).
    block_size
        Optional block size for block-wise encodings.

    Examples
    --------
    >>> import numpy as np
    >>> from encanalyze import MseEncodingAnalyzer
    >>> x = np.random.default_rng(0).standard_normal((4, 4096)).astype(np.float32)
    >>> x[:, 0] = 40.0  # one outlier per row
    >>> analyzer = MseEncodingAnalyzer(shape=(4, 1))
    >>> _ = analyzer.update_stats(x)
    >>> lo, hi = analyzer.compute_encodings(num_steps=255, is_symmetric=False)
    >>> bool((hi < 40).all() and (hi > 3).all())
    True
    """

    rule = staticmethod(mse_rule)

    def __init__(self, shape, num_bins: int = 2048, block_size=None) -> None:
        super().__init__(shape, num_bins, block_size=block_size)
