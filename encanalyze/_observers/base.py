"""The observer interface."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, TypeVar

from .._shapes import Plan, normalize_block_size, normalize_shape, plan
from .._xp import Array, Namespace, namespace_of

__all__ = ["Observer", "check_array"]

State = TypeVar("State")


def check_array(arrays: dict, name: str, shape: tuple, kind: str, optional: bool = False):
    """Return ``arrays[name]`` after checking its shape and dtype kind, else ``ValueError``."""
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


class Observer(ABC, Generic[State]):
    """Running statistics of one kind for encodings of ``shape`` (and ``block_size``).

    The state is kept in row form: one row per encoding element, ``E = prod(shape)`` rows.
    """

    kind: ClassVar[str]
    """Name of this kind of statistics (``minmax``, ``histogram``, ``ema``)."""
    needs: ClassVar[str] = "a value"
    """What an element must have seen before it can be encoded (for error messages)."""
    stats_type: ClassVar[type]
    """The public statistics type (:class:`~encanalyze.MinMaxRange`, ...)."""
    exact_ops: ClassVar[bool] = False
    """Whether ``update`` only compares, selects and counts (no rounding arithmetic): such an
    update may run as one compiled program (JAX) with the same result, bit for bit."""

    def __init__(self, shape, block_size=None) -> None:
        self.shape = normalize_shape(shape)
        self.block_size = normalize_block_size(block_size, self.shape)

    @property
    def num_rows(self) -> int:
        """Number of encoding elements ``E``."""
        return math.prod(self.shape)

    def params(self) -> dict[str, Any]:
        """Return the parameters that shape the statistics (observers must share them to merge)."""
        block = None if self.block_size is None else list(self.block_size)
        return {"shape": list(self.shape), "block_size": block}

    def plan(self, x: Array) -> Plan:
        """Plan the reduction of ``x`` to this observer's encodings."""
        return plan(tuple(int(d) for d in x.shape), self.shape, self.block_size)

    @abstractmethod
    def update(
        self, xp: Namespace, x: Array, state: State | None, want_batch: bool = True
    ) -> tuple[State | None, State]:
        """Return the state of ``x`` alone and the running state merged with it (pure).

        With ``want_batch`` False an observer may skip building ``x``'s own state (``None``).
        """

    def check(self, xp: Namespace, state: State) -> None:
        """Raise ``ValueError`` for a state the rules cannot encode (compute time: may sync)."""

    @abstractmethod
    def merge(self, xp: Namespace, states: list[State]) -> State:
        """Return the state that merges ``states`` (two or more, all in namespace ``xp``)."""

    @abstractmethod
    def stats(self, xp: Namespace, state: State):
        """Return ``state`` as the public statistics type, shaped like the encodings."""

    @abstractmethod
    def from_stats(self, xp: Namespace, stats) -> State:
        """Return the state that public ``stats`` (already checked for type and shape) hold."""

    @abstractmethod
    def arrays(self, state: State) -> dict[str, Array]:
        """Return ``state`` as a flat dict of arrays (persistence)."""

    @abstractmethod
    def from_arrays(self, xp: Namespace, arrays: dict) -> State:
        """Return the state held in ``arrays`` (validated: ``ValueError`` when they do not fit)."""

    @abstractmethod
    def num_empty(self, xp: Namespace, state: State) -> int:
        """Return how many encoding elements have never seen a value (syncs with the device)."""

    @staticmethod
    def num_nan(xp: Namespace, state) -> int:
        """Return the number of NaN values dropped so far (syncs with the device)."""
        return 0 if state.num_nan is None else int(xp.sum(state.num_nan))

    @abstractmethod
    def home(self, state: State) -> Array:
        """Return one array of ``state`` (its namespace and device are the state's)."""
