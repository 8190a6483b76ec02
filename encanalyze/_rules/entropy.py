"""Entropy calibration: TensorRT's KL-divergence threshold search, every threshold at once.

On a histogram of ``|x|`` from 0 (``B`` bins, the first bin's count replaced by the second's),
each threshold ``i`` from ``start_bin`` to ``B`` is scored by the KL divergence between the
reference distribution (``bins[:i]``, the tail beyond ``i`` added to its last bin) and its
quantized copy: ``bins[:i]`` split into ``levels`` groups by ``np.linspace(0, i, levels + 1)``,
each non-empty bin of a group holding the group's mean over its non-empty bins. ``amax`` is the
upper edge of bin ``i`` with the least divergence (the last one on ties). This is Model
Optimizer's ``_compute_amax_entropy`` (``levels = 2**(bits - 1)`` for signed data, ``2**bits``
unsigned).

The peer loops in Python over about 1900 thresholds with inner Python loops over the bins
(seconds per tensor). Here the groups' boundaries depend only on ``i`` and are tabulated once;
with prefix sums of the counts, of the non-empty indicator and of ``c log c`` each divergence is
a sum over the ``levels`` groups: ``O(levels)`` per threshold, all thresholds and encodings at
once.
"""

from __future__ import annotations

import bisect
from functools import lru_cache

import numpy as np

from .._analyzer import HistogramAnalyzer
from .._backends import to_numpy
from .._checks import int_at_least
from .._encoding import minmax_encoding
from .._histograms import RowHistogram, wide_dtype
from .._xp import Array, Namespace, device_of, index_dtype, on_host, take_rows

__all__ = ["EntropyEncodingAnalyzer", "entropy_rule", "kl_amax", "quantized_levels"]

HOST_BLOCK = 2**19
"""Host searches work on about this many (row, threshold, level) elements at a time: two
2048-bin rows at 128 levels; blocks 8x larger measured 1.3x slower (out of cache)."""

SPARSE_FACTOR = 4
"""Rows with at most ``1 / SPARSE_FACTOR`` of the thresholds as candidates are scored on their
candidates only."""

TIE_RTOL = 1e-9
"""Divergences within this relative distance of the least are ties (the last threshold wins)."""


def quantized_levels(num_steps: int, signed: bool) -> int:
    """Levels of the quantized copy: ``n // 2 + 1`` signed (128 for 8 bit), ``n + 1`` unsigned."""
    return num_steps // 2 + 1 if signed else num_steps + 1


@lru_cache(maxsize=2)  # a few MB each; the last two grids kept
def _groups(num_bins: int, levels: int, start_bin: int) -> tuple[np.ndarray, np.ndarray]:
    """Group boundaries ``(T, levels + 1)`` and the group of bin ``i - 1`` ``(T,)`` per threshold.

    Bin ``k < i`` is in group ``g`` where ``space[g] <= k < space[g + 1]`` for
    ``space = np.linspace(0, i, levels + 1)`` (``np.digitize``), so group ``g`` starts at bin
    ``ceil(space[g])``.
    """
    thresholds = np.arange(start_bin, num_bins + 1)
    space = np.stack([np.linspace(0, i, num=levels + 1) for i in thresholds])
    bounds = np.minimum(np.ceil(space), thresholds[:, None]).astype(np.int64)
    last = (bounds[:, :-1] <= (thresholds - 1)[:, None]).sum(axis=1) - 1
    return bounds, last


def _log_or_zero(xp: Namespace, x: Array) -> Array:
    """``log(x)`` where ``x > 0``, else 0 (so that ``0 * log(0)`` terms vanish)."""
    return xp.log(xp.where(x > 0, x, 1.0))


def _divergences(
    xp: Namespace, bins: Array, levels: int, start_bin: int, thresholds: Array | None = None
) -> Array:
    """KL divergence of thresholds ``i = start_bin .. B`` of ``bins (E, B)``.

    Every threshold ``(E, T)``, or ``(E, K)`` for the threshold positions ``thresholds``
    (``i - start_bin``) of each row: the same arithmetic on fewer thresholds, so each
    divergence is the same number either way.
    """
    num_rows, num_bins = bins.shape
    dev, wd = device_of(bins), bins.dtype
    bounds_np, last_np = _groups(num_bins, levels, start_bin)
    rows_t = np.arange(bounds_np.shape[0])
    # each threshold's group boundaries, its own index and the bounds of its last group
    tables = (
        bounds_np,
        np.arange(start_bin, num_bins + 1),
        bounds_np[rows_t, last_np],
        bounds_np[rows_t, last_np + 1],
    )
    if thresholds is None:  # every row shares the tables: one gather along the bins

        def pick(table: Array, idx) -> Array:
            flat = xp.asarray(np.reshape(idx, (-1,)), device=dev)
            return xp.reshape(xp.take(table, flat, axis=1), (num_rows, *idx.shape))

    else:
        flat_t = xp.reshape(thresholds, (-1,))
        tables = tuple(
            xp.reshape(
                xp.take(xp.asarray(t, device=dev), flat_t, axis=0),
                (*thresholds.shape, *t.shape[1:]),
            )
            for t in tables
        )

        def pick(table: Array, idx) -> Array:
            return xp.reshape(take_rows(xp, table, xp.reshape(idx, (num_rows, -1))), idx.shape)

    bounds, i, first, after = tables
    zero = xp.zeros((num_rows, 1), dtype=wd, device=dev)
    s = xp.concat([zero, xp.cumulative_sum(bins, axis=1)], axis=1)  # S[k] = sum(bins[:k])
    idt = index_dtype(xp)  # non-empty bins counted in integers: exact, and a table index
    z = xp.cumulative_sum(xp.astype(bins != 0, idt), axis=1)
    z = xp.concat([xp.zeros((num_rows, 1), dtype=idt, device=dev), z], axis=1)
    clogc = bins * _log_or_zero(xp, bins)
    plogp = xp.concat([zero, xp.cumulative_sum(clogc, axis=1)], axis=1)
    s_b, z_b = pick(s, bounds), pick(z, bounds)
    sums = s_b[..., 1:] - s_b[..., :-1]  # (E, T, L): each group's count ...
    nonzero = z_b[..., 1:] - z_b[..., :-1]  # ... and its number of non-empty bins
    # sum(sums * log(sums / nonzero)): one log of the sums, log(nonzero) from a table
    log_table = xp.log(xp.maximum(xp.arange(num_bins + 1, dtype=wd, device=dev), 1.0))

    def log_count(n: Array) -> Array:  # log(n), 0 for n == 0, of exact integer counts
        return xp.reshape(xp.take(log_table, xp.reshape(n, (-1,))), n.shape)

    plogq = xp.sum(sums * (_log_or_zero(xp, sums) - log_count(nonzero)), axis=2)
    q_total = pick(s, i)  # sum(bins[:i])
    total = s[:, num_bins:]
    tail = total - q_total
    last_bin = pick(bins, i - 1)
    # the log mean of each threshold's last group (the one the tail is added under)
    sum_last = pick(s, after) - pick(s, first)
    nonzero_last = pick(z, after) - pick(z, first)
    log_q_last = _log_or_zero(xp, sum_last) - log_count(nonzero_last)
    p_last = last_bin + tail
    plogp_total = pick(plogp, i - 1) + p_last * _log_or_zero(xp, p_last)
    plogq = plogq + tail * log_q_last
    kl = (plogp_total - plogq) / total + _log_or_zero(xp, q_total / total)
    # a tail on an empty last bin has no quantized mass under it; an empty reference is no fit
    lost = ((last_bin == 0) & (tail > 0)) | (q_total == 0)
    return xp.where(lost, xp.inf, kl)


def _last_least(xp: Namespace, kl: Array, positions: Array | None) -> Array:
    """Return the threshold position of each row's least divergence (the last one on ties)."""
    least = xp.min(kl, axis=1, keepdims=True)
    tied = kl <= least + TIE_RTOL * xp.abs(least)
    if positions is None:  # every threshold: the first True of the reversed rows
        num_t = kl.shape[1]
        last = num_t - 1 - xp.argmax(xp.astype(xp.flip(tied, axis=1), xp.int8), axis=1)
        return xp.astype(last, index_dtype(xp))
    return xp.max(xp.where(tied, positions, -1), axis=1)


def kl_amax(xp: Namespace, counts: Array, edges: Array, levels: int, start_bin: int = 128) -> Array:
    """Return Model Optimizer's entropy ``amax`` ``(E,)`` of ``|x|`` histograms ``counts (E, B)``.

    ``edges`` ``(E, B + 1)``; thresholds run from ``start_bin`` to ``B``; ``levels`` quantized
    levels. Only thresholds whose last bin holds values, or past the row's last value, can win
    (the others leave the tail under an empty bin: an infinite divergence); rows with few such
    thresholds (a weight's rows of a few dozen values) are scored on those alone, ``O(values)``
    thresholds instead of ``O(bins)``, the others on every threshold. Rows are searched in
    blocks that keep the ``(rows, thresholds, levels)`` temporaries near :data:`HOST_BLOCK`
    elements on the host (2**26 on devices).
    """
    num_rows, num_bins = counts.shape
    # with at least as many levels as bins every bin is a group of its own (a group spans
    # i / levels <= 1 bin): the divergences are those of num_bins levels, and the tables stay
    # (T, B) however wide the grid (16 bits: 32,768 levels; 2**32 - 1 steps: 2**31)
    levels = min(levels, num_bins)
    wd, idt = wide_dtype(xp, device_of(counts)), index_dtype(xp)
    bins = xp.astype(counts, wd)
    bins = xp.concat([bins[:, 1:2], bins[:, 1:]], axis=1)  # bins[0] = bins[1]
    num_t = num_bins + 1 - start_bin
    i = xp.arange(start_bin, num_bins + 1, dtype=idt, device=device_of(counts))
    held = bins > 0
    last_held = num_bins - 1 - xp.argmax(xp.astype(xp.flip(held, axis=1), xp.int8), axis=1)
    can_win = xp.take(held, i - 1, axis=1) | (i[None, :] > xp.astype(last_held, idt)[:, None])
    count = xp.sum(xp.astype(can_win, idt), axis=1)
    order = xp.argsort(count, stable=True)  # rows with few candidates together
    widths = [int(w) for w in to_numpy(xp.take(count, order))]  # a read in the rule, not updates
    bins, can_win = xp.take(bins, order, axis=0), xp.take(can_win, order, axis=0)
    budget = (HOST_BLOCK if on_host(counts) else 2**26) // levels

    def width(w: int) -> int:  # thresholds scored for a row with w candidates
        return w if SPARSE_FACTOR * w <= num_t else num_t

    winners, a = [], 0
    while a < num_rows:  # bounded memory, not a loop per channel
        b = min(a + max(1, budget // width(widths[a])), num_rows)
        # rows scored at the block's widest: at most twice as wide as its first
        b = min(
            b,
            bisect.bisect_right(widths, 2 * widths[a] if width(widths[a]) < num_t else num_t, a, b),
        )
        b = min(a + max(1, budget // width(widths[b - 1])), b)  # the block's widest row
        block, k = bins[a:b, :], width(widths[b - 1])
        if k == num_t:
            kl = _divergences(xp, block, levels, start_bin)
            winners.append(_last_least(xp, kl, None))
        else:  # each row's candidates first (ascending), padded with the last threshold
            cand = can_win[a:b, :]
            pos = xp.argsort(xp.astype(~cand, xp.int8), axis=1, stable=True)[:, :k]
            pos = xp.where(take_rows(xp, cand, pos), xp.astype(pos, idt), num_t - 1)
            kl = _divergences(xp, block, levels, start_bin, pos)
            winners.append(_last_least(xp, kl, pos))
        a = b
    last = xp.concat(winners) if len(winners) > 1 else winners[0]
    index = xp.take(last, xp.argsort(order)) + start_bin  # back in the rows' order
    return take_rows(xp, edges, index)


def entropy_rule(
    xp: Namespace, state: RowHistogram, num_steps: int, is_symmetric: bool, *, start_bin: int
) -> tuple[Array, Array]:
    """Return the entropy encodings of ``|x|`` histograms.

    ``(-amax, amax)``, or ``(0, amax)`` where no negative value was seen, through the min-max
    rules without the 2-bit step.
    """
    edges = state.edges_of(xp)
    signed = (
        xp.ones(state.lo.shape, dtype=xp.bool, device=device_of(state.lo))
        if state.num_negative is None
        else state.num_negative > 0
    )
    parts, at = [], []
    for is_signed in (True, False):  # each kind's rows searched alone (a row's search is its own)
        rows = xp.nonzero(signed == is_signed)[0]
        if rows.shape[0] == signed.shape[0]:
            counts, row_edges = state.counts, edges
        elif rows.shape[0]:
            counts, row_edges = (xp.take(a, rows, axis=0) for a in (state.counts, edges))
        else:
            continue
        parts.append(
            kl_amax(xp, counts, row_edges, quantized_levels(num_steps, is_signed), start_bin)
        )
        at.append(rows)
    amax = parts[0] if len(parts) == 1 else xp.take(xp.concat(parts), xp.argsort(xp.concat(at)))
    amax = xp.astype(amax, state.lo.dtype)
    lo = xp.where(signed, -amax, xp.zeros_like(amax))
    return minmax_encoding(
        xp, lo, amax, num_steps, is_symmetric, out_dtype=state.lo.dtype, two_bit_step=False
    )


class EntropyEncodingAnalyzer(HistogramAnalyzer):
    """Entropy calibration: TensorRT's KL-divergence threshold on a histogram of ``|x|``.

    Each encoding element keeps a histogram of ``|x|`` from 0 and counts its negative values.
    Given the same histogram, ``amax`` equals Model Optimizer's ``_compute_amax_entropy``
    (thresholds from bin ``start_bin``, ``2**(bits - 1)`` quantized levels for signed data,
    ``2**bits`` where the element has seen no negative value); the encoding is ``(-amax, amax)``,
    or ``(0, amax)`` for non-negative data, through the min-max rules. Every threshold of every
    encoding is evaluated at once.

    :meth:`compute_encodings_from_stats` on a public :class:`~encanalyze.Histogram` (which does
    not say whether values were negative) treats the data as signed.

    Parameters
    ----------
    shape
        Shape of the encodings.
    num_bins
        Bins per histogram (2048, as the peer); must exceed ``start_bin``.
    start_bin
        The first threshold searched (128).
    block_size
        Optional block size for block-wise encodings.

    Examples
    --------
    >>> import numpy as np
    >>> from encanalyze import EntropyEncodingAnalyzer
    >>> x = np.random.default_rng(0).standard_normal((2, 20000)).astype(np.float32)
    >>> analyzer = EntropyEncodingAnalyzer(shape=(2, 1))
    >>> _ = analyzer.update_stats(x)
    >>> lo, hi = analyzer.compute_encodings(num_steps=255, is_symmetric=True)
    >>> bool((hi < np.abs(x).max(axis=1, keepdims=True)).all() and (hi > 2).all())
    True
    """

    rule = staticmethod(entropy_rule)

    def __init__(self, shape, num_bins: int = 2048, start_bin: int = 128, block_size=None):
        self.start_bin = int_at_least(start_bin, 1, "start_bin")
        if int_at_least(num_bins, 1, "num_bins") <= self.start_bin:
            raise ValueError(f"num_bins ({num_bins}) must exceed start_bin ({self.start_bin})")
        super().__init__(shape, num_bins, block_size=block_size, absolute=True)

    def rule_params(self) -> dict:
        """Return the keyword arguments this analyzer passes to its rule."""
        return {"start_bin": self.start_bin}

    def params(self) -> dict:
        """Return the constructor arguments of this analyzer (JSON-compatible)."""
        params = super().params()
        return {**params, "start_bin": self.start_bin}
