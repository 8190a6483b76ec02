"""The analyzer base class: running statistics around pure batch / merge / encode functions."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from .._warnings import warn
from .._xp import Array, Namespace, check_same_home, device_of, namespace_of
from ..encoding import validate_num_steps
from ..shapes import Plan, normalize_block_size, normalize_shape, plan
from ..stats import StatisticsNotFoundError

__all__ = ["STATE_FORMAT_VERSION", "EncodingAnalyzer"]

STATE_FORMAT_VERSION = 1
"""Version of :meth:`EncodingAnalyzer.state_dict` and of :func:`encanalyze.save`'s files."""

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
            check_same_home(self._home, xp, device_of(x))
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

    # -- merging and persistence ------------------------------------------------------------
    def params(self) -> dict:
        """Return the constructor arguments of this analyzer (JSON-compatible)."""
        block = None if self.block_size is None else list(self.block_size)
        return {"shape": list(self.shape), "block_size": block}

    def _stats_params(self) -> dict:
        """Return the parameters that shape the statistics (two analyzers must share to merge)."""
        return self.params()

    def merge(self, *others: EncodingAnalyzer) -> EncodingAnalyzer:
        """Merge the running statistics of ``others`` into this analyzer's; return ``self``.

        The others must be of the same class with the same statistics parameters (shape, block
        size, number of bins, growth limit) and hold their statistics in the same namespace and
        on the same device; never-updated analyzers change nothing. See
        :func:`encanalyze.merge_stats` for what merging does to each kind of statistics.
        """
        for other in others:
            if type(other) is not type(self):
                raise TypeError(
                    f"cannot merge a {type(other).__name__} into a {type(self).__name__}"
                )
            if other._stats_params() != self._stats_params():
                raise ValueError(
                    f"cannot merge analyzers with different parameters: "
                    f"{other._stats_params()} into {self._stats_params()}"
                )
        held = [a for a in (self, *others) if a._state is not None]
        if len(held) < 2:
            if held:
                self._state, self._home = held[0]._state, held[0]._home
            return self
        home = held[0]._home
        for a in held[1:]:
            check_same_home(home, *a._home)
        self._state = self._merge_states(home[0], [a._state for a in held])
        self._home = home
        return self

    def state_dict(self) -> dict:
        """Return the analyzer's class, parameters and statistics (arrays of its namespace)."""
        return {
            "format_version": STATE_FORMAT_VERSION,
            "class": type(self).__name__,
            "params": self.params(),
            "stats_params": self._stats_params(),
            "state": None if self._state is None else self._state_arrays(self._state),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Replace the running statistics with those of ``state_dict`` (see :meth:`state_dict`).

        Raises
        ------
        ValueError
            If it was written by another class, with other statistics parameters, by another
            format version, or holds arrays of the wrong shapes; the analyzer is then unchanged.
        """
        try:
            version, cls = state_dict["format_version"], state_dict["class"]
            theirs, arrays = state_dict["stats_params"], state_dict["state"]
        except (KeyError, TypeError):
            raise ValueError(
                "not an encanalyze state dict (needs format_version, class, stats_params, state)"
            ) from None
        if version != STATE_FORMAT_VERSION:
            raise ValueError(f"unsupported state format version {version!r}")
        if cls != type(self).__name__:
            raise ValueError(f"state of a {cls} cannot be loaded into a {type(self).__name__}")
        own = self._stats_params()
        if theirs != own:
            raise ValueError(f"state parameters {theirs} do not match this analyzer's {own}")
        if arrays is None:
            self.reset_stats()
            return
        if not isinstance(arrays, dict) or not arrays:
            raise ValueError("state arrays must be a non-empty dict of arrays")
        first = next(iter(arrays.values()))
        xp = namespace_of(first)
        for value in arrays.values():
            check_same_home((xp, device_of(first)), namespace_of(value), device_of(value))
        state = self._state_from_arrays(xp, dict(arrays))
        self._state, self._home = state, (xp, device_of(first))

    @staticmethod
    def _check_array(arrays: dict, name: str, shape: tuple, kind: str, optional: bool = False):
        """Return ``arrays[name]`` after checking its shape and dtype kind, else ValueError."""
        if name not in arrays or arrays[name] is None:
            if optional:
                return None
            raise ValueError(f"state is missing the array {name!r}")
        value = arrays[name]
        xp = namespace_of(value)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"state array {name!r} has shape {tuple(value.shape)}, not {shape}")
        if not xp.isdtype(value.dtype, kind):
            raise ValueError(f"state array {name!r} has dtype {value.dtype}, not {kind}")
        return value

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
            warn(f"{dropped} NaN values were ignored while gathering statistics")
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
    def _merge_states(self, xp: Namespace, states: list) -> object:
        """Return the state that merges ``states`` (two or more, all in namespace ``xp``)."""

    @abstractmethod
    def _state_arrays(self, state) -> dict:
        """Return ``state`` as a flat dict of arrays."""

    @abstractmethod
    def _state_from_arrays(self, xp: Namespace, arrays: dict) -> object:
        """Return the state held in ``arrays`` (validated: ValueError when they do not fit)."""

    @abstractmethod
    def _encodings(
        self, xp: Namespace, stats: S, num_steps: int, is_symmetric: bool
    ) -> tuple[Array, Array]:
        """Return the encodings of validated, non-empty ``stats``."""
