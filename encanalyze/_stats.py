"""Statistics types the analyzers accumulate, and their pure merge functions."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._histograms import RowHistogram, add_counts, bin_edges, merge_rows
from ._xp import Array, Namespace, index_dtype, namespace_of

__all__ = [
    "Histogram",
    "MinMaxRange",
    "empty_minmax",
    "histogram_of",
    "histogram_rows",
    "merge_minmax",
    "merge_stats",
]


class _Stats:
    """What the statistics types share: the encoding shape and the dropped-NaN count."""

    min: Array
    num_nan: Array | None

    @property
    def shape(self) -> tuple[int, ...]:
        """The encoding shape."""
        return tuple(self.min.shape)

    def total_nan(self) -> int:
        """Return the number of NaN values dropped so far (syncs with the device)."""
        if self.num_nan is None:
            return 0
        xp = namespace_of(self.num_nan)
        return int(xp.sum(self.num_nan))


@dataclass(frozen=True)
class MinMaxRange(_Stats):
    """Elementwise running minimum and maximum.

    Parameters
    ----------
    min, max
        Arrays of the encoding shape. An element that has seen no value holds
        ``min = +inf, max = -inf`` (the merge identity).
    num_nan
        Optional integer array of the same shape: NaN values dropped so far per element
        (``None`` means none). Kept on the device so that updates never sync with the host.
    """

    min: Array
    max: Array
    num_nan: Array | None = None

    def num_empty(self) -> int:
        """Return how many elements have never seen a value (syncs with the device)."""
        xp = namespace_of(self.min)
        return int(xp.count_nonzero(self.min > self.max))


@dataclass(frozen=True)
class Histogram(_Stats):
    """One histogram of ``num_bins`` equal-width bins per encoding element, batched.

    Parameters
    ----------
    histogram
        Counts, ``(*shape, num_bins)``, float64 (float32 where the device lacks float64): the
        number of values in each bin, exact up to 2**53 per bin.
    bin_edges
        ``(*shape, num_bins + 1)`` edges ``min + k * (max - min) / num_bins`` (float32, float64
        for float64 inputs). Elements that have seen no finite value hold zeros.
    min, max
        ``(*shape)`` observed range of each histogram, in the input's floating dtype: after an
        element's first batch, that batch's finite min and max (a constant slice of 5.0 has
        ``min = max = 5.0`` while its edges span [4.5, 5.5]); after each later batch, the new
        range (which then equals the first and last edge). SQNR reads them; percentile reads
        the edges. Elements that have seen no finite value hold ``+inf`` and ``-inf``; the
        infinities they have seen wait in their end bins (``-inf`` in the first, ``+inf`` in
        the last) and stay there once a finite value gives them a range, as infinities that
        come with finite values do, so counts never depend on how the data was batched.
    num_nan
        Optional int64 ``(*shape)``: NaN values dropped so far per element.
    """

    histogram: Array
    bin_edges: Array
    min: Array
    max: Array
    num_nan: Array | None = None

    @property
    def num_bins(self) -> int:
        """Number of bins of every histogram."""
        return int(self.histogram.shape[-1])

    @classmethod
    def _uniform(cls, histogram, lo, hi, obs_min, obs_max, num_nan=None) -> Histogram:
        """Return the statistics of uniform edges over ``[lo, hi]`` ``(E,)``, built when read.

        ``bin_edges`` is an ``(E, B + 1)`` table as large as the counts; an update returns
        statistics whose edges most callers never read, so they are computed on first access
        (the same arithmetic, so the same numbers, as building them at once).
        """
        out = object.__new__(cls)
        fields = {"histogram": histogram, "min": obs_min, "max": obs_max, "num_nan": num_nan}
        for name, value in (*fields.items(), ("_edge_range", (lo, hi))):
            object.__setattr__(out, name, value)
        return out

    def __getattr__(self, name: str):
        # reached only for attributes not set: the edges of a :meth:`_uniform` histogram
        edge_range = self.__dict__.get("_edge_range") if name == "bin_edges" else None
        if edge_range is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        xp = namespace_of(edge_range[0])
        edges = bin_edges(xp, *edge_range, self.num_bins)
        edges = xp.reshape(edges, (*self.shape, self.num_bins + 1))
        object.__setattr__(self, "bin_edges", edges)
        return edges

    def _map_arrays(self, fn) -> Histogram:
        """Return these statistics with ``fn`` applied to each array (edges not built)."""
        num_nan = None if self.num_nan is None else fn(self.num_nan)
        if "bin_edges" in self.__dict__:
            return Histogram(fn(self.histogram), fn(self.bin_edges), fn(self.min),
                             fn(self.max), num_nan)  # fmt: skip
        lo, hi = self._edge_range
        return Histogram._uniform(
            fn(self.histogram), fn(lo), fn(hi), fn(self.min), fn(self.max), num_nan
        )

    def num_empty(self) -> int:
        """Return how many histograms have no range or no count (syncs with the device)."""
        xp = namespace_of(self.histogram)
        no_range = ~(self.min <= self.max)
        return int(xp.count_nonzero(no_range | (xp.sum(self.histogram, axis=-1) == 0)))


def empty_minmax(xp: Namespace, shape: tuple[int, ...], dtype, device) -> MinMaxRange:
    """Return the "nothing seen yet" range: ``min = +inf``, ``max = -inf``, no NaN."""
    return MinMaxRange(
        xp.full(shape, xp.inf, dtype=dtype, device=device),
        xp.full(shape, -xp.inf, dtype=dtype, device=device),
        xp.zeros(shape, dtype=index_dtype(xp), device=device),
    )


def merge_minmax(a: MinMaxRange, b: MinMaxRange, xp: Namespace | None = None) -> MinMaxRange:
    """Return the range of the union of the values ``a`` and ``b`` summarise (exact).

    ``xp``, when given, is the namespace of both (saves looking it up).
    """
    xp = namespace_of(a.min, b.min) if xp is None else xp
    if a.shape != b.shape:
        raise ValueError(f"cannot merge MinMaxRange of shape {a.shape} with one of shape {b.shape}")
    if a.min.dtype != b.min.dtype:
        dtype = xp.result_type(a.min.dtype, b.min.dtype)
        a = MinMaxRange(xp.astype(a.min, dtype), xp.astype(a.max, dtype), a.num_nan)
        b = MinMaxRange(xp.astype(b.min, dtype), xp.astype(b.max, dtype), b.num_nan)
    lo, hi = xp.minimum(a.min, b.min), xp.maximum(a.max, b.max)
    return MinMaxRange(lo, hi, add_counts(a.num_nan, b.num_nan))


def merge_stats(*stats: MinMaxRange | Histogram) -> MinMaxRange | Histogram:
    """Merge statistics of one type gathered on different data (workers, shards, runs).

    - :class:`MinMaxRange`: elementwise min / max, exact; any order or grouping gives the same.
    - :class:`Histogram`: the union of the ranges; each histogram is re-binned once onto the
      union's edges with the re-binning rule of an update (uniform mass per old bin), and the
      counts are added. Total counts are conserved exactly and the result does not depend on
      the order of the arguments. It does depend on grouping: ``merge(merge(a, b), c)``
      re-bins ``a`` twice where ``merge(a, b, c)`` re-bins it once, which can move counts
      between neighbouring bins (pass all parts in one call to avoid that).

    Never-updated elements (``min = +inf``, zero counts) are the identity.

    Raises
    ------
    TypeError
        If the statistics are of different types.
    ValueError
        If their shapes (or numbers of bins) differ.
    """
    if not stats:
        raise ValueError("merge_stats needs at least one statistics object")
    kinds = {type(s).__name__ for s in stats}
    if len(kinds) > 1:
        raise TypeError(f"cannot merge statistics of different types: {sorted(kinds)}")
    shapes = {s.shape for s in stats}
    if len(shapes) > 1:
        raise ValueError(f"cannot merge statistics of different shapes: {sorted(shapes)}")
    if isinstance(stats[0], MinMaxRange):
        merged = stats[0]
        for other in stats[1:]:
            merged = merge_minmax(merged, other)
        return merged
    bins = {s.num_bins for s in stats}
    if len(bins) > 1:
        raise ValueError(f"cannot merge histograms with different numbers of bins: {sorted(bins)}")
    xp = namespace_of(*(s.histogram for s in stats))
    return histogram_of(xp, merge_rows(xp, [histogram_rows(xp, s) for s in stats]), stats[0].shape)


def histogram_of(xp: Namespace, h: RowHistogram, shape: tuple[int, ...]) -> Histogram:
    """Return row histograms ``h`` as the public type, shaped like the encodings ``shape``."""
    num_bins = h.counts.shape[1]
    lo, hi = h.observed_range()
    return Histogram._uniform(
        xp.reshape(h.counts, (*shape, num_bins)),
        h.lo,
        h.hi,
        xp.reshape(lo, shape),
        xp.reshape(hi, shape),
        None if h.num_nan is None else xp.reshape(h.num_nan, shape),
    )


def histogram_rows(xp: Namespace, h: Histogram) -> RowHistogram:
    """Return public ``h`` as row histograms: edge range from its edges, observed from min/max."""
    num_bins, e = h.num_bins, math.prod(h.shape)
    obs_lo, obs_hi = xp.reshape(h.min, (e,)), xp.reshape(h.max, (e,))
    edges = xp.reshape(h.bin_edges, (e, num_bins + 1))
    held = obs_lo <= obs_hi
    return RowHistogram(
        xp.astype(xp.reshape(h.histogram, (e, num_bins)), xp.float32),
        xp.where(held, xp.astype(edges[:, 0], obs_lo.dtype), obs_lo),
        xp.where(held, xp.astype(edges[:, num_bins], obs_hi.dtype), obs_hi),
        None if h.num_nan is None else xp.reshape(h.num_nan, (e,)),
        observed=(obs_lo, obs_hi),
        edges=edges,
    )
