"""Batched histogram statistics: binning, range growth and re-binning of ``E`` rows at once.

Everything here works on the ``(E, V)`` row view of an input (see ``_shapes.to_rows``):
``E`` histograms of ``B`` equal-width bins, each with its own range ``[lo, hi]``. Rows that have
seen no finite value hold ``lo = +inf``, ``hi = -inf``, and the infinities they have seen in
their end bins (``-inf`` in bin 0, ``+inf`` in bin ``B - 1``), where any range they later get
keeps them: infinities count in the end bins whatever the batching.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

from ._backends import clip, primitives
from ._xp import (
    Array,
    Namespace,
    device_of,
    div,
    in_row_blocks,
    index_dtype,
    on_host,
    take_rows,
    wide_dtype,
    work_dtype,
)

__all__ = [
    "BatchRange",
    "RowHistogram",
    "add_counts",
    "bin_counts",
    "batch_range",
    "bin_edges",
    "check_range_fits",
    "counting_range",
    "histogram_update",
    "last_edge",
    "merge_rows",
    "rebin",
    "rebin_onto",
    "stack_rows",
    "take_batch",
    "wide_dtype",
]


class RowHistogram(NamedTuple):
    """Histograms of ``E`` rows: counts ``(E, B)``, edge range ``lo``/``hi`` ``(E,)``.

    Counts are float64 (float32 where the device lacks it): exact to 2**53 per bin, whole
    and non-negative where ``edges`` is None (an observer's own, binned, re-binned, merged or
    loaded by ``from_arrays``, which checks them). ``lo``
    and ``hi`` are the first and last edge. ``num_nan`` counts dropped NaN values per row
    (``None``: none); ``limits`` holds the growth limits ``(lo, hi)`` ``(E,)`` each, or ``None``
    without a growth limit. ``observed`` is the range the statistics report as ``min``/``max``
    (``None``: the edge range): after a row's first batch, that batch's finite min and max (a
    constant row of 5.0 has edges [4.5, 5.5] and observed range [5, 5]); after each later batch,
    the new range. ``num_negative`` (histograms of ``|x|`` only) counts the negative values
    seen per row. ``edges`` holds explicit edges (histograms a user built, see
    :class:`~encanalyze.Histogram`); the observers' own histograms have uniform edges from
    ``lo`` and ``hi`` and keep ``None``.
    """

    counts: Array
    lo: Array
    hi: Array
    num_nan: Array | None = None
    limits: tuple[Array, Array] | None = None
    observed: tuple[Array, Array] | None = None
    num_negative: Array | None = None
    edges: Array | None = None

    def edges_of(self, xp: Namespace) -> Array:
        """Return the ``(E, B + 1)`` edges: ``edges`` where given, else uniform over the range."""
        return (
            bin_edges(xp, self.lo, self.hi, self.counts.shape[1])
            if self.edges is None
            else self.edges
        )

    def edges_at(self, xp: Namespace, idx: Array) -> Array:
        """Return the edges at positions ``idx`` ``(E,)``, one per row.

        They are :meth:`edges_of`'s, computed for those positions only (the same arithmetic,
        so the same numbers).
        """
        if self.edges is not None:
            return take_rows(xp, self.edges, idx)
        return _edge_values(xp, self.lo, self.hi, self.counts.shape[1], idx)

    def observed_range(self) -> tuple[Array, Array]:
        """Return the observed ``(min, max)`` ``(E,)`` (the edge range where none is kept)."""
        return (self.lo, self.hi) if self.observed is None else self.observed


def _work_range(xp: Namespace, lo: Array, hi: Array, wd) -> tuple[Array, Array, Array]:
    """Return ``(valid, lo, hi)`` in dtype ``wd``; rows without a range (``lo > hi``) get [0, 1]."""
    valid = lo <= hi
    return valid, xp.where(valid, xp.astype(lo, wd), 0.0), xp.where(valid, xp.astype(hi, wd), 1.0)


def bin_edges(xp: Namespace, lo: Array, hi: Array, num_bins: int) -> Array:
    """Return the ``(E, B + 1)`` edges ``lo + k * (hi - lo) / B`` in the work dtype.

    Rows without a range (``lo > hi``) get zeros.
    """
    k = xp.arange(num_bins + 1, dtype=work_dtype(xp, lo.dtype), device=device_of(lo))
    return _edge_values(xp, lo[:, None], hi[:, None], num_bins, k[None, :])


def _edge_values(xp: Namespace, lo: Array, hi: Array, num_bins: int, k: Array) -> Array:
    """Return the edges ``lo + k * ((hi - lo) / B)`` at positions ``k``, in the work dtype.

    ``k`` broadcasts against the rows' ``lo`` and ``hi``; rows without a range get zeros.
    """
    wd = work_dtype(xp, lo.dtype)
    lo_w, hi_w = xp.astype(lo, wd), xp.astype(hi, wd)
    valid = lo_w <= hi_w
    lo_w, hi_w = xp.where(valid, lo_w, 0.0), xp.where(valid, hi_w, 0.0)
    return lo_w + xp.astype(k, wd) * div(xp, hi_w - lo_w, num_bins)


def bin_counts(
    xp: Namespace, rows: Array, lo: Array, hi: Array, num_bins: int, may_have_nan: bool
) -> Array:
    """Count each row's values into ``B`` bins over its ``[lo, hi]``: ``(E, B)`` float32.

    A value ``x`` lands in bin ``floor((x - lo) / (hi - lo) * B)``, clamped to ``[0, B - 1]``
    (so ``hi`` is in the last bin, values below/above the range, infinities included, in the end
    bins). NaN is dropped (only looked for when ``may_have_nan``). Rows with ``lo > hi`` (no
    range) must hold no finite value: their infinities count in the end bins all the same.
    """
    wd = work_dtype(xp, rows.dtype) if xp.isdtype(rows.dtype, "real floating") else None
    wd = wd or work_dtype(xp, lo.dtype)
    _, lo_w, hi_w = _work_range(xp, lo, hi, wd)
    rows = xp.astype(rows, wd, copy=False)
    return primitives(xp).histogram_rows(rows, lo_w, hi_w, num_bins, may_have_nan)


def rebin(
    xp: Namespace,
    counts: Array,
    lo: Array,
    hi: Array,
    new_lo: Array,
    new_hi: Array,
    whole: bool = False,
) -> Array:
    """Move ``(E, B)`` counts over ``[lo, hi]`` onto ``B`` bins over ``[new_lo, new_hi]``.

    ``[new_lo, new_hi]`` must contain ``[lo, hi]``. Each old bin's mass is taken as uniform over
    its width: for an old bin starting at ``a`` the target is
    ``j = min(floor((a - new_lo) / w_new), B - 1)``; ``min(round((new_lo + (j + 1) w_new - a) /
    w_old * c), c)`` goes to ``j`` and the rest to the bin that contains ``a + w_new``, which is
    ``min(j + 1, B - 1)`` (computed so, not by a second rounding-prone division). Counts are
    conserved exactly. Rows with ``lo > hi`` (no range; counts in the end bins only) are not
    meaningful here: :func:`rebin_onto` keeps their counts where they are.

    Host backends work through blocks of rows small enough to stay in cache (and, where the
    counts are known to be ``whole`` and non-negative, skip what cannot change them).
    """
    fused = primitives(xp).rebin
    done = None if fused is None else fused(counts, lo, hi, new_lo, new_hi, whole)
    if done is not None:
        return done
    num_rows, num_bins = counts.shape
    step = 2**16 // num_bins if on_host(counts) else num_rows
    return in_row_blocks(xp, partial(_rebin, xp), (counts, lo, hi, new_lo, new_hi), step)


def _rebin(
    xp: Namespace, counts: Array, lo: Array, hi: Array, new_lo: Array, new_hi: Array
) -> Array:
    num_rows, num_bins = counts.shape
    wd = work_dtype(xp, lo.dtype)
    valid, lo_w, hi_w = _work_range(xp, lo, hi, wd)
    nlo = xp.where(valid, xp.astype(new_lo, wd), 0.0)
    nhi = xp.where(valid, xp.astype(new_hi, wd), 1.0)
    w_old = div(xp, hi_w - lo_w, num_bins)[:, None]
    w_new = div(xp, nhi - nlo, num_bins)[:, None]
    k = xp.arange(num_bins, dtype=wd, device=device_of(counts))
    start = lo_w[:, None] + w_old * k[None, :]
    last = float(num_bins - 1)
    j = clip(xp, xp.floor(div(xp, start - nlo[:, None], w_new)), 0.0, last)
    c = xp.astype(counts, wd)
    # the fraction of the old bin before the target's upper edge, in [0, 1]; divided only where
    # it lies strictly inside, so that a tiny (denormal or zero) old bin never overflows
    before = nlo[:, None] + (j + 1) * w_new - start
    inside = (before > 0) & (before < w_old)
    ratio = div(xp, xp.where(inside, before, 0.0), xp.where(inside, w_old, 1.0))
    fraction = xp.where(inside, ratio, xp.astype(before >= w_old, before.dtype))
    part = xp.minimum(xp.round(fraction * c), c)
    wide = wide_dtype(xp, device_of(counts))
    c_wide = xp.astype(counts, wide)
    if wide != wd:  # counts past 2**24 (not exact in float32): their split in the wide dtype
        big = c_wide >= 2**24
        part_wide = xp.minimum(xp.round(xp.astype(fraction, wide) * c_wide), c_wide)
        part = xp.where(big, part_wide, xp.astype(part, wide))
    idx = xp.astype(j, index_dtype(xp))
    moved = primitives(xp).bincount_rows(idx, num_bins, xp.astype(part, wide))
    # the rest lies in the next target bin (w_new >= w_old); the last bin keeps what it has
    following = xp.astype(clip(xp, j + 1, None, last), index_dtype(xp))
    rest = primitives(xp).bincount_rows(following, num_bins, xp.astype(c_wide - part, wide))
    return moved + rest


def last_edge(xp: Namespace, lo: Array, hi: Array, num_bins: int) -> Array:
    """Return the last edge ``lo + B * ((hi - lo) / B)``: a histogram's stored upper end.

    It can differ from ``hi`` by float rounding; like the reference, the stored range of every
    histogram is its first and last edge, so later merges start from exactly those edges.
    """
    valid, lo_w, hi_w = _work_range(xp, lo, hi, work_dtype(xp, lo.dtype))
    end = lo_w + num_bins * div(xp, hi_w - lo_w, num_bins)
    return xp.where(valid, xp.astype(end, lo.dtype), hi)


def _growth_limits(lo: Array, hi: Array, growth_limit: float) -> tuple[Array, Array]:
    half = (hi - lo) * (growth_limit / 2)
    return lo - half, hi + half


def check_range_fits(xp: Namespace, lo: Array, hi: Array) -> None:
    """Raise ``ValueError`` where a row's range ``hi - lo`` overflows its work dtype.

    Finite float32 values can span a range float32 cannot hold (``[-1.8e38, 1.8e38]``); their
    bin positions would be NaN. Host backends check each update (before any change); others
    are checked when encodings are computed.
    """
    wd = work_dtype(xp, lo.dtype)
    width = xp.astype(hi, wd) - xp.astype(lo, wd)
    if bool(xp.any((lo <= hi) & ~xp.isfinite(width))):
        raise ValueError(
            f"finite values span a range wider than {lo.dtype} can hold (its width overflows); "
            "calibrate such data in float64"
        )


class BatchRange(NamedTuple):
    """What a batch's update needs besides its counts: per row ``(E,)``.

    ``lo``/``hi``: the finite min and max (in the ranges' dtype; ``lo > hi`` where the row held
    no finite value; histograms of ``|x|`` start at 0), ``num_nan``: NaN values dropped
    (``None``: none), ``num_negative``: negative values (histograms of ``|x|`` only).
    """

    lo: Array
    hi: Array
    num_nan: Array | None = None
    num_negative: Array | None = None


def batch_range(xp: Namespace, rows: Array, dtype, absolute: bool) -> tuple[Array, BatchRange]:
    """Return the rows to count (``|rows|`` where ``absolute``) and the batch's range.

    Host backends raise ``ValueError`` where a row's range overflows (:func:`check_range_fits`).
    """
    num_negative = None
    if absolute:
        num_negative = xp.astype(xp.count_nonzero(rows < 0, axis=1), index_dtype(xp))
        rows = xp.abs(rows)
    lo, hi, num_nan = primitives(xp).minmax(rows, (1,), finite=True)
    lo, hi = xp.astype(lo, dtype, copy=False), xp.astype(hi, dtype, copy=False)
    if absolute:  # |x| histograms start at 0
        lo = xp.where(lo <= hi, xp.zeros_like(lo), lo)
    if on_host(rows):
        check_range_fits(xp, lo, hi)
    return rows, BatchRange(lo, hi, num_nan, num_negative)


def _own_edges(xp: Namespace, batch: BatchRange, num_bins: int, growth_limit: float):
    """Return a batch's own edge range ``(lo, hi, stored hi)`` and its growth limits.

    A single value (or a range whose bin width underflows to 0) gets ``[v - 0.5, v + 0.5]``,
    at least one ulp wide even where 0.5 rounds away; the limits (``None`` without a growth
    limit) come from the stored (first and last edge) range.
    """
    lo, hi = batch.lo, batch.hi
    wd = work_dtype(xp, lo.dtype)
    point = div(xp, xp.astype(hi, wd) - xp.astype(lo, wd), num_bins) == 0
    e_lo = xp.where(point, xp.minimum(lo - 0.5, xp.nextafter(lo, xp.full_like(lo, -xp.inf))), lo)
    e_hi = xp.where(point, xp.maximum(hi + 0.5, xp.nextafter(hi, xp.full_like(hi, xp.inf))), hi)
    stored_hi = last_edge(xp, e_lo, e_hi, num_bins)
    limits = _growth_limits(e_lo, stored_hi, growth_limit) if math.isfinite(growth_limit) else None
    return e_lo, e_hi, stored_hi, limits


def _next_range(xp: Namespace, running: RowHistogram, batch: BatchRange, own) -> tuple:
    """Return the range ``(lo, hi)`` the running histograms take with a batch, and its limits.

    A later batch merges with its raw finite range; only a row's first batch is widened (its
    ``own`` edges, :func:`_own_edges`); rows seeing their first value take the batch's limits.
    Only ``running``'s ``lo``, ``hi`` and ``limits`` are read.
    """
    e_lo, e_hi, _, batch_limits = own
    seen = batch.lo <= batch.hi
    was_seen = running.lo <= running.hi
    limits = running.limits
    if batch_limits is not None and limits is None:
        limits = batch_limits
    elif batch_limits is not None:
        limits = (
            xp.where(was_seen, limits[0], batch_limits[0]),
            xp.where(was_seen, limits[1], batch_limits[1]),
        )
    new_lo = xp.minimum(running.lo, xp.where(was_seen, batch.lo, e_lo))
    new_hi = xp.maximum(running.hi, xp.where(was_seen, batch.hi, e_hi))
    if limits is not None:
        new_lo = xp.where(seen, xp.maximum(new_lo, limits[0]), new_lo)
        new_hi = xp.where(seen, xp.minimum(new_hi, limits[1]), new_hi)
    if on_host(new_lo):
        check_range_fits(xp, new_lo, new_hi)
    return new_lo, new_hi, limits


def counting_range(
    xp: Namespace,
    running: RowHistogram | None,
    batch: BatchRange,
    num_bins: int,
    growth_limit: float = math.inf,
) -> tuple[tuple[Array, Array], RowHistogram]:
    """Return the edge range a batch is counted on and the running edges after it.

    The second is a ``RowHistogram`` without counts (its ``lo``, ``hi`` and ``limits``), which
    is all the next batch's range needs: ranks replay the ranges of the batches before theirs
    with it (:class:`encanalyze.distributed.Lockstep`) and count on what one process would.
    """
    own = _own_edges(xp, batch, num_bins, growth_limit)
    if running is None:
        return (own[0], own[1]), RowHistogram(None, own[0], own[2], limits=own[3])
    new_lo, new_hi, limits = _next_range(xp, running, batch, own)
    return (new_lo, new_hi), RowHistogram(
        None, new_lo, last_edge(xp, new_lo, new_hi, num_bins), limits=limits
    )


def take_batch(
    xp: Namespace,
    running: RowHistogram | None,
    batch: BatchRange,
    counts: Array,
    growth_limit: float = math.inf,
) -> RowHistogram:
    """Return the running histograms after a batch: :func:`histogram_update`'s merge.

    ``counts`` ``(E, B)``: the batch's values counted on :func:`counting_range`'s edges.
    """
    num_bins = counts.shape[1]
    own = _own_edges(xp, batch, num_bins, growth_limit)
    if running is None:
        observed = (batch.lo, batch.hi)
        return RowHistogram(
            counts, own[0], own[2], batch.num_nan, own[3], observed, batch.num_negative
        )
    new_lo, new_hi, limits = _next_range(xp, running, batch, own)
    return _merge_batch(xp, running, batch, (new_lo, new_hi, limits), counts)


def _merge_batch(
    xp: Namespace, running: RowHistogram, batch: BatchRange, step: tuple, new: Array
) -> RowHistogram:
    """Return ``running`` re-binned onto ``step``'s range with the batch's ``new`` counts added.

    Observed range: the new range where a seen row grew, the batch's own on a row's first
    batch, unchanged where the batch had nothing for the row.
    """
    new_lo, new_hi, limits = step
    old = rebin_onto(xp, running, new_lo, new_hi)
    seen = batch.lo <= batch.hi
    run_lo, run_hi = running.observed_range()
    later = seen & (running.lo <= running.hi)
    observed = (
        xp.where(later, new_lo, xp.where(seen, batch.lo, run_lo)),
        xp.where(later, new_hi, xp.where(seen, batch.hi, run_hi)),
    )
    if old is running.counts:  # kept as it was: the running state's own table
        old = old + new
    else:  # a fresh re-binned table: the batch is added into it
        old += new
    return RowHistogram(
        old,
        new_lo,
        last_edge(xp, new_lo, new_hi, new.shape[1]),
        add_counts(running.num_nan, batch.num_nan),
        limits,
        observed,
        add_counts(running.num_negative, batch.num_negative),
    )


def histogram_update(
    xp: Namespace,
    rows: Array,
    dtype,
    num_bins: int,
    running: RowHistogram | None = None,
    growth_limit: float = math.inf,
    absolute: bool = False,
    want_batch: bool = True,
) -> tuple[RowHistogram | None, RowHistogram]:
    """Histogram a batch of rows and merge it into the running histograms.

    Parameters
    ----------
    xp
        Namespace of ``rows``.
    rows
        ``(E, V)`` values (any real dtype).
    dtype
        Floating dtype the ranges are kept in (the input's).
    num_bins
        Bins per histogram.
    running
        Running histograms (``None`` before the first batch).
    growth_limit
        How far, in multiples of the first range, a range may grow in total (``inf``: no limit).
    absolute
        Histogram ``|x|`` from 0 (ranges start at 0) and count the negative values per row.
    want_batch
        Whether to return the batch's own histograms; without them a later batch is binned
        once (on the new edges) instead of twice.

    Returns
    -------
    batch, merged
        The batch's own histograms (over its own finite range; ``None`` for a later batch
        without ``want_batch``) and the merged running histograms (the batch's values counted
        on the new edges and added to the re-binned old counts), with their growth limits.
        The merge is :func:`counting_range`'s edges, the batch counted on them, and
        :func:`take_batch`, with shortcuts that compute the same numbers.
    """
    fused = primitives(xp).count_checked
    if fused is not None and not want_batch and running is not None:
        merged = _count_inside(xp, rows, running, fused, absolute)
        if merged is not None:
            return None, merged
    rows, found = batch_range(xp, rows, dtype, absolute)
    if not want_batch and running is not None and _inside(xp, rows, found.lo, found.hi, running):
        return None, _add_inside(xp, rows, running, found.num_nan, found.num_negative)
    own = _own_edges(xp, found, num_bins, growth_limit)
    e_lo, e_hi, stored_hi, batch_limits = own
    may_have_nan = found.num_nan is not None
    counts = batch = None
    if want_batch or running is None:
        counts = bin_counts(xp, rows, e_lo, e_hi, num_bins, may_have_nan)
        observed = (found.lo, found.hi)
        batch = RowHistogram(
            counts, e_lo, stored_hi, found.num_nan, batch_limits, observed, found.num_negative
        )
    if running is None:
        return batch, batch
    step = _next_range(xp, running, found, own)
    new_lo, new_hi, _ = step
    seen = found.lo <= found.hi
    if (
        counts is not None
        and on_host(rows)
        and bool(xp.all(((new_lo == e_lo) & (new_hi == e_hi)) | ~seen))
    ):
        new = counts  # the batch spans the new range: its own counts are the ones on the new edges
    else:
        new = bin_counts(xp, rows, new_lo, new_hi, num_bins, may_have_nan)
    return batch, _merge_batch(xp, running, found, step, new)


def _inside(xp: Namespace, rows: Array, lo: Array, hi: Array, running: RowHistogram) -> bool:
    """Return whether the batch is in the steady state of calibration (host backends only).

    Every row has seen data before and now, and the batch's finite values lie in the running
    range (within its growth limits): the edges stay as they are.
    """
    if not on_host(rows):
        return False
    inside = (running.lo <= running.hi) & (lo <= hi) & (lo >= running.lo) & (hi <= running.hi)
    return bool(xp.all(_within_limits(running, inside)))


def _within_limits(running: RowHistogram, inside: Array) -> Array:
    """Return ``inside`` where the running range is within its growth limits, else False.

    The general path would clamp a range beyond its limits.
    """
    if running.limits is None:
        return inside
    return inside & (running.lo >= running.limits[0]) & (running.hi <= running.limits[1])


def _add_inside(
    xp: Namespace, rows: Array, running: RowHistogram, num_nan, num_negative
) -> RowHistogram:
    """Merge a batch inside the running range: the general path, reduced to what it computes.

    The edges stay; the batch is counted on them and added; the observed range becomes the
    edge range, as after any later batch.
    """
    num_bins = running.counts.shape[1]
    new = bin_counts(xp, rows, running.lo, running.hi, num_bins, num_nan is not None)
    new += running.counts  # into the fresh batch counts: no third (E, B) table
    return _kept_edges(xp, running, new, num_nan, num_negative)


def _kept_edges(xp: Namespace, running: RowHistogram, counts: Array, num_nan, num_negative):
    """Return the merge of a batch inside the running range, its ``counts`` already added.

    The edges stay, and the observed range becomes the edge range, as after any later batch.
    """
    return RowHistogram(
        counts,
        running.lo,
        last_edge(xp, running.lo, running.hi, running.counts.shape[1]),
        add_counts(running.num_nan, num_nan),
        running.limits,
        (running.lo, running.hi),
        add_counts(running.num_negative, num_negative),
    )


def _count_inside(
    xp: Namespace, rows: Array, running: RowHistogram, fused, absolute: bool
) -> RowHistogram | None:
    """Return :func:`_add_inside`'s merge, whether the batch is inside checked in the same pass.

    ``fused`` is the primitive ``count_checked``; ``absolute``: a histogram of ``|x|`` (the
    pass bins ``|rows|`` and counts the negative values). None where the batch is
    not inside the running range (as :func:`_inside` decides it: every row seen before, and
    now, and each finite value within the row's range, itself within its growth limits) or its
    dtype is not the fused pass's: the general path takes it from the start.
    """
    wd = work_dtype(xp, rows.dtype) if xp.isdtype(rows.dtype, "real floating") else None
    if wd != rows.dtype or running.lo.dtype != rows.dtype:
        return None
    _, lo_w, hi_w = _work_range(xp, running.lo, running.hi, wd)
    found = fused(rows, lo_w, hi_w, running.counts, absolute)
    if found is None:
        return None
    counts, nans, odd, outside, *negative = found
    inside = (running.lo <= running.hi) & (odd < rows.shape[1]) & (outside == 0)
    if not bool(xp.all(_within_limits(running, inside))):
        return None
    num_nan = nans if bool(xp.any(odd > 0)) else None  # minmax's: None where all are finite
    return _kept_edges(xp, running, counts, num_nan, negative[0] if absolute else None)


def stack_rows(xp: Namespace, parts: list[RowHistogram]) -> RowHistogram:
    """Return the row histograms of ``parts`` one after the other, as one ``RowHistogram``.

    The parts hold the same fields (each None in all or in none of them), bins and dtypes.
    """

    def cat(values: list):
        return None if values[0] is None else xp.concat(values, axis=0)

    def cat_pairs(pairs: list):
        return (
            None if pairs[0] is None else (cat([p[0] for p in pairs]), cat([p[1] for p in pairs]))
        )

    return RowHistogram(
        cat([p.counts for p in parts]),
        cat([p.lo for p in parts]),
        cat([p.hi for p in parts]),
        cat([p.num_nan for p in parts]),
        cat_pairs([p.limits for p in parts]),
        cat_pairs([p.observed for p in parts]),
        cat([p.num_negative for p in parts]),
        cat([p.edges for p in parts]),
    )


def add_counts(a: Array | None, b: Array | None) -> Array | None:
    """Add two optional per-row counts (``None`` means zeros)."""
    if a is None or b is None:
        return a if b is None else b
    return a + b


def rebin_onto(xp: Namespace, h: RowHistogram, lo: Array, hi: Array) -> Array:
    """Return ``h``'s counts re-binned onto ``[lo, hi]`` (containing its range), row by row.

    Rows whose range is already ``[lo, hi]``, and rows without a range (whose infinities sit in
    the end bins of any range), keep their counts.
    """
    changed = (h.lo <= h.hi) & ((lo != h.lo) | (hi != h.hi))
    if on_host(h.counts) and not bool(xp.any(changed)):  # host backends skip a no-op rebin
        return h.counts
    moved = rebin(xp, h.counts, h.lo, h.hi, lo, hi, whole=h.edges is None)
    if on_host(h.counts) and bool(xp.all(changed)):  # and the selection where all change
        return moved
    return xp.where(changed[:, None], moved, h.counts)


def merge_rows(xp: Namespace, parts: list[RowHistogram]) -> RowHistogram:
    """Merge row histograms: union range, each re-binned once onto it, counts added.

    Commutative and exact in total counts; not associative (see :func:`encanalyze.merge_stats`).
    Growth limits, where present, become the union of the parts' limits. A row that holds data in
    one part alone keeps that part's observed range; elsewhere the observed range is the union
    range, as after a later batch.
    """
    num_bins = parts[0].counts.shape[1]
    lo, hi = parts[0].lo, parts[0].hi
    for p in parts[1:]:
        lo, hi = xp.minimum(lo, p.lo), xp.maximum(hi, p.hi)
    counts = rebin_onto(xp, parts[0], lo, hi)
    num_nan, limits, num_negative = parts[0].num_nan, parts[0].limits, parts[0].num_negative
    obs_lo, obs_hi = parts[0].observed_range()
    holders = xp.astype(parts[0].lo <= parts[0].hi, xp.int32)
    for p in parts[1:]:
        counts = counts + rebin_onto(xp, p, lo, hi)
        num_nan = add_counts(num_nan, p.num_nan)
        num_negative = add_counts(num_negative, p.num_negative)
        p_lo, p_hi = p.observed_range()
        obs_lo, obs_hi = xp.minimum(obs_lo, p_lo), xp.maximum(obs_hi, p_hi)
        holders = holders + xp.astype(p.lo <= p.hi, xp.int32)
        if p.limits is not None:
            limits = (
                p.limits
                if limits is None
                else (
                    xp.minimum(limits[0], p.limits[0]),
                    xp.maximum(limits[1], p.limits[1]),
                )
            )
    several = holders > 1
    observed = (xp.where(several, lo, obs_lo), xp.where(several, hi, obs_hi))
    end = last_edge(xp, lo, hi, num_bins)
    return RowHistogram(counts, lo, end, num_nan, limits, observed, num_negative)
