"""The analyzer base class: running statistics around pure batch / merge / encode functions."""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from .._xp import Array, Namespace, check_same_home, device_of, namespace_of
from ..encoding import validate_num_steps
from ..shapes import Plan, normalize_block_size, normalize_shape, plan
from ..stats import StatisticsNotFoundError

__all__ = ["EncodingAnalyzer"]

S = TypeVar("S")


class EncodingAnalyzer(ABC, Generic[S]):
    """Base class: gathers statistics of the data it sees and computes encodings from them.

    Parameters
    ----------
    shape
        Shape of the encodings (an int means a 1-tuple). ``(1,)`` or ``()`` is per-tensor;
        ``(C, 1, 1, 1)`` one encoding per output channel of a conv weight.
    block_size
        Block-wise quantization: the block each encoding covers, aligned to the right of
        ``shape``; ``-1`` means "input dim // encoding dim".
    """

    stats_type: type

    def __init__(self, shape, block_size=None) -> None:
        self.shape = normalize_shape(shape)
        self.block_size = normalize_block_size(block_size, self.shape)
        self._state = None  # running statistics plus whatever else the method keeps
        self._home: tuple[Namespace, object] | None = None  # namespace and device of the stats

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, block_size={self.block_size})"

    # -- stats ------------------------------------------------------------------------------
    def update_stats(self, x: Array) -> S:
        """Add ``x`` to the running statistics; return the statistics of ``x`` alone.

        Never syncs with the device. On any error the running statistics stay as they were.
        """
        xp = namespace_of(x)
        if self._home is not None:
            check_same_home(self._home, xp, x)
        batch, state = self._update(xp, x, self._state)  # pure: raises before any change
        self._state = state
        if self._home is None:
            self._home = (xp, device_of(x))
        return batch

    def reset_stats(self) -> None:
        """Forget every statistic gathered so far."""
        self._state = self._home = None

    def get_stats(self) -> S | None:
        """Return the running statistics (``None`` before the first update)."""
        return None if self._state is None else self._stats_of(self._state)

    # -- encodings --------------------------------------------------------------------------
    def compute_encodings(self, num_steps: int | float, is_symmetric: bool) -> tuple[Array, Array]:
        """Return the encodings ``(min, max)`` of the running statistics.

        Raises
        ------
        StatisticsNotFoundError
            Before any update, or while an encoding element has never seen a value.
        """
        num_steps = validate_num_steps(num_steps, is_symmetric)
        stats = self.get_stats()
        if stats is None:
            raise StatisticsNotFoundError(
                f"{type(self).__name__} has no statistics: call update_stats() first"
            )
        return self.compute_encodings_from_stats(stats, num_steps, is_symmetric)

    def compute_encodings_from_stats(
        self, stats: S, num_steps: int | float, is_symmetric: bool
    ) -> tuple[Array, Array]:
        """Return the encodings ``(min, max)`` of ``stats`` (any stats of this analyzer's type)."""
        num_steps = validate_num_steps(num_steps, is_symmetric)
        self._check_params(num_steps, is_symmetric)
        if not isinstance(stats, self.stats_type):
            raise TypeError(
                f"{type(self).__name__} computes encodings from {self.stats_type.__name__}, "
                f"got {type(stats).__name__}"
            )
        if stats.shape != self.shape:
            raise ValueError(
                f"stats of shape {stats.shape} do not match the analyzer's encoding shape "
                f"{self.shape}"
            )
        self._check_stats(stats)
        empty = stats.num_empty()
        if empty:
            raise StatisticsNotFoundError(
                f"{empty} of {math.prod(self.shape)} encoding elements have never seen a value; "
                f"update them before computing encodings"
            )
        dropped = stats.total_nan()
        if dropped:
            warnings.warn(
                f"{dropped} NaN values were ignored while gathering statistics",
                RuntimeWarning,
                stacklevel=2,
            )
        xp = namespace_of(self._stats_array(stats))
        return self._encodings(xp, stats, num_steps, is_symmetric)

    def compute_dynamic_encodings(
        self, x: Array, num_steps: int | float, is_symmetric: bool
    ) -> tuple[Array, Array]:
        """Return the encodings of ``x`` alone; the running statistics are untouched."""
        num_steps = validate_num_steps(num_steps, is_symmetric)
        self._check_params(num_steps, is_symmetric)
        stats, _ = self._update(namespace_of(x), x, None)
        return self.compute_encodings_from_stats(stats, num_steps, is_symmetric)

    # -- helpers for subclasses -------------------------------------------------------------
    def _plan(self, x: Array) -> Plan:
        return plan(tuple(int(d) for d in x.shape), self.shape, self.block_size)

    def _check_params(self, num_steps: int, is_symmetric: bool) -> None:
        """Raise for parameter combinations a method cannot encode (none by default)."""

    def _check_stats(self, stats: S) -> None:
        """Raise ``ValueError`` where ``stats`` (of the right shape) do not fit this analyzer."""

    # -- what each method provides ----------------------------------------------------------
    @staticmethod
    @abstractmethod
    def _stats_array(stats: S) -> Array:
        """Return one array of ``stats`` (to find their namespace and device)."""

    @abstractmethod
    def _update(self, xp: Namespace, x: Array, state) -> tuple[S, object]:
        """Return the statistics of ``x`` alone and the new running state (``state`` is kept)."""

    def _stats_of(self, state) -> S:
        """Return the running statistics held in ``state`` (by default the state itself)."""
        return state

    @abstractmethod
    def _encodings(
        self, xp: Namespace, stats: S, num_steps: int, is_symmetric: bool
    ) -> tuple[Array, Array]:
        """Return the encodings of validated, non-empty ``stats``."""
