"""Statistics types the analyzers accumulate, and their pure merge functions."""

from __future__ import annotations

from dataclasses import dataclass

from ._xp import Array, Namespace, namespace_of

__all__ = [
    "Histogram",
    "MinMaxRange",
    "StatisticsNotFoundError",
    "empty_minmax",
    "merge_minmax",
]


class StatisticsNotFoundError(RuntimeError):
    """Encodings were requested for elements that have not seen any value."""


class _NanCount:
    """The dropped-NaN count shared by the stats types."""

    num_nan: Array | None

    def total_nan(self) -> int:
        """Return the number of NaN values dropped so far (syncs with the device)."""
        if self.num_nan is None:
            return 0
        xp = namespace_of(self.num_nan)
        return int(xp.sum(self.num_nan))


@dataclass(frozen=True)
class MinMaxRange(_NanCount):
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

    @property
    def shape(self) -> tuple[int, ...]:
        """The encoding shape."""
        return tuple(self.min.shape)

    def num_empty(self) -> int:
        """Return how many elements have never seen a value (syncs with the device)."""
        xp = namespace_of(self.min)
        return int(xp.count_nonzero(self.min > self.max))


@dataclass(frozen=True)
class Histogram(_NanCount):
    """One histogram of ``num_bins`` equal-width bins per encoding element, batched.

    Parameters
    ----------
    histogram
        Counts, ``(*shape, num_bins)``, float32. Exact up to 2**24 per bin; past that, each
        update adds its (exact, integer) per-bin counts with one float32 rounding, a relative
        error of at most 2**-24 per update.
    bin_edges
        ``(*shape, num_bins + 1)`` edges ``min + k * (max - min) / num_bins`` (float32, float64
        for float64 inputs). Elements that have seen no value hold zeros.
    min, max
        ``(*shape)`` range of each histogram (the first and last edge), in the input's floating
        dtype. Elements that have seen no value hold ``+inf`` and ``-inf``.
    num_nan
        Optional int64 ``(*shape)``: NaN values dropped so far per element.
    """

    histogram: Array
    bin_edges: Array
    min: Array
    max: Array
    num_nan: Array | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The encoding shape."""
        return tuple(self.min.shape)

    @property
    def num_bins(self) -> int:
        """Number of bins of every histogram."""
        return int(self.histogram.shape[-1])

    def num_empty(self) -> int:
        """Return how many histograms hold no count (syncs with the device)."""
        xp = namespace_of(self.histogram)
        return int(xp.count_nonzero(xp.sum(self.histogram, axis=-1) == 0))


def empty_minmax(xp: Namespace, shape: tuple[int, ...], dtype, device) -> MinMaxRange:
    """Return the "nothing seen yet" range: ``min = +inf``, ``max = -inf``, no NaN."""
    return MinMaxRange(
        xp.full(shape, xp.inf, dtype=dtype, device=device),
        xp.full(shape, -xp.inf, dtype=dtype, device=device),
        xp.zeros(shape, dtype=xp.int64, device=device),
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
    if a.num_nan is None or b.num_nan is None:
        num_nan = a.num_nan if b.num_nan is None else b.num_nan
    else:
        num_nan = a.num_nan + b.num_nan
    return MinMaxRange(lo, hi, num_nan)
