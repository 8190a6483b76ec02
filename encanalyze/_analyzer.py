"""The analyzer: an observer (running statistics) plus a rule (statistics -> encodings)."""

from __future__ import annotations

import json
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, Generic, TypeVar

import array_api_compat.numpy
import numpy as np
from array_api_compat import is_numpy_namespace

from ._backends import analyzer_input, compiled_update, numpy_twin, quiet
from ._encoding import validate_num_steps
from ._errors import StatisticsNotFoundError
from ._histograms import stack_rows
from ._observers import HistogramObserver, Observer
from ._warnings import labelled, warn
from ._xp import Array, Namespace, check_same_home, device_of, namespace_of

__all__ = [
    "STATE_FORMAT_VERSION",
    "EncodingAnalyzer",
    "HistogramAnalyzer",
    "compute_encodings_together",
]

STATE_FORMAT_VERSION = 1
"""Version of :meth:`EncodingAnalyzer.state_dict` and of :func:`encanalyze.save`'s files."""

S = TypeVar("S")


class EncodingAnalyzer(ABC, Generic[S]):
    """Base class: gathers statistics of the data it sees and computes encodings from them.

    An analyzer is an observer, which owns the running statistics (update, merge, persistence),
    plus a rule, a pure function ``rule(xp, state, num_steps, is_symmetric, **rule_params())``
    that turns the statistics of ``E`` encoding elements into ``(min, max)`` rows.

    Parameters
    ----------
    observer
        The observer of the statistics (its ``shape`` and ``block_size`` are the analyzer's).
    """

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self._state = None  # running statistics (the observer's state)
        self._home: tuple[Namespace, Any] | None = None  # namespace and device of the stats

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the encodings."""
        return self.observer.shape

    @property
    def block_size(self) -> tuple[int, ...] | None:
        """Block size of block-wise encodings (``None``: not block-wise)."""
        return self.observer.block_size

    @property
    def stats_type(self) -> type:
        """The statistics type this analyzer gathers and computes encodings from."""
        return self.observer.stats_type

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __getstate__(self) -> dict:
        """Pickle (and ``copy.deepcopy``) without the namespace module: it is found again."""
        state = dict(self.__dict__)
        state["_home"] = None
        state.pop("_program", None)  # a compiled update is built again where it is used
        state.pop("_lock", None)  # a new lock where it is used
        state.pop("_views", None)  # NumPy views of the state are taken again
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._state is not None:
            first = next(iter(self.observer.arrays(self._state).values()))
            self._home = (namespace_of(first), device_of(first))

    # -- the rule ---------------------------------------------------------------------------
    @staticmethod
    @abstractmethod
    def rule(xp: Namespace, state, num_steps: int, is_symmetric: bool, **params):
        """Return the encodings ``(min, max)`` ``(E,)`` of a non-empty observer ``state``."""

    def rule_params(self) -> dict:
        """Return the keyword arguments this analyzer passes to its rule."""
        return {}

    # -- stats ------------------------------------------------------------------------------
    def update_stats(self, x: Array) -> S:
        """Add ``x`` to the running statistics; return the statistics of ``x`` alone.

        Never syncs with the device. On any error the running statistics stay as they were.
        """
        x = analyzer_input(x)
        return self._update(namespace_of(x), x, want_batch=True)

    def observe(self, x: Array) -> None:
        """Add ``x`` to the running statistics, like :meth:`update_stats`, returning nothing.

        The running statistics are the same; a histogram analyzer skips building ``x``'s own
        histogram, so a later batch is binned once instead of twice (what the model-level
        calibrators use).
        """
        x = analyzer_input(x)
        self._update(namespace_of(x), x, want_batch=False)

    def _update(self, xp: Namespace, x: Array, want_batch: bool):
        """Update the running statistics; return ``x``'s own public statistics (or None).

        One thread at a time per analyzer (torch's ``DataParallel`` calls forward hooks from
        several threads): an update reads the state and swaps in the next one, and two at once
        would lose one of them.
        """
        with self.__dict__.setdefault("_lock", threading.Lock()):  # setdefault: one lock
            return self._locked_update(xp, x, want_batch)

    def _locked_update(self, xp: Namespace, x: Array, want_batch: bool):
        if self._home is not None:
            check_same_home(self._home, xp, device_of(x))
        twin = numpy_twin(xp, self._state, batch=x, known=self.__dict__.get("_views"))
        compiled = self._compiled(xp) if twin is None and self.observer.exact_ops else None
        if compiled is not None:
            batch, state = compiled(x, self._state, want_batch)  # pure, one program
        elif twin is None and self.observer.exact_ops:  # no arithmetic: nothing to quieten
            batch, state = self._update_in(xp, x, self._state, want_batch)  # pure
        elif twin is None:
            with quiet(xp):
                batch, state = self._update_in(xp, x, self._state, want_batch)  # pure
        else:  # host torch and JAX: NumPy views of the same memory, results back as theirs
            np_xp, (x_np, state_np), back = twin
            with nullcontext() if self.observer.exact_ops else quiet(np_xp):
                batch_np, state_np = self._update_in(np_xp, x_np, state_np, want_batch)
            batch, state = back((batch_np, state_np))
            self._views = (state, state_np)  # the next update and encoding reuse the views
        self._state = state
        if self._home is None:
            self._home = (xp, device_of(x))
        return batch

    def _update_in(self, xp: Namespace, x: Array, state, want_batch: bool):
        """Return ``x``'s public statistics (None without ``want_batch``) and the new state."""
        batch, state = self.observer.update(xp, x, state, want_batch)
        return (None if batch is None else self.observer.stats(xp, batch)), state

    def _compiled(self, xp: Namespace):
        """Return :meth:`_update_in` compiled for ``xp`` (kept per analyzer), or None."""
        cached = self.__dict__.get("_program")
        if cached is None or cached[0] is not xp:
            kinds = (self.observer.stats_type,)  # the min-max state is its statistics type
            cached = self._program = (xp, compiled_update(xp, self._update_in, kinds))
        return cached[1]

    def reset_stats(self) -> None:
        """Forget every statistic gathered so far."""
        self._state = self._home = None

    def get_stats(self) -> S | None:
        """Return the running statistics (``None`` before the first update)."""
        if self._state is None:
            return None
        return self.observer.stats(self._home[0], self._state)

    def share_stats(self, other: EncodingAnalyzer) -> EncodingAnalyzer:
        """Use ``other``'s running statistics from now on (no copy); return ``self``.

        ``other`` must have an observer of the same kind and parameters: e.g. one histogram
        feeds percentile, SQNR and MSE analyzers alike. Later updates of either analyzer do not
        reach the other.
        """
        self._check_mergeable(other, same_class=False)
        self._state, self._home = other._state, other._home
        return self

    # -- merging and persistence ------------------------------------------------------------
    def params(self) -> dict:
        """Return the constructor arguments of this analyzer (JSON-compatible)."""
        block = None if self.block_size is None else list(self.block_size)
        return {"shape": list(self.shape), "block_size": block}

    def _check_mergeable(self, other: EncodingAnalyzer, same_class: bool = True) -> None:
        if same_class and type(other) is not type(self):
            raise TypeError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        if type(other.observer) is not type(self.observer):
            raise TypeError(
                f"a {type(other).__name__} gathers other statistics than a {type(self).__name__}"
            )
        if other.observer.params() != self.observer.params():
            raise ValueError(
                f"cannot merge analyzers with different parameters: "
                f"{other.observer.params()} into {self.observer.params()}"
            )

    def merge(self, *others: EncodingAnalyzer) -> EncodingAnalyzer:
        """Merge the running statistics of ``others`` into this analyzer's; return ``self``.

        The others must be of the same class with the same statistics parameters (shape, block
        size, number of bins, growth limit) and hold their statistics in the same namespace and
        on the same device; never-updated analyzers change nothing. See
        :func:`encanalyze.merge_stats` for what merging does to each kind of statistics.
        """
        for other in others:
            self._check_mergeable(other)
        held = [a for a in (self, *others) if a._state is not None]
        if len(held) < 2:
            if held:
                self._state, self._home = held[0]._state, held[0]._home
            return self
        home = held[0]._home
        for a in held[1:]:
            check_same_home(home, *a._home)
        self._state = self.observer.merge(home[0], [a._state for a in held])
        self._home = home
        return self

    def state_dict(self) -> dict:
        """Return the analyzer's class, parameters and statistics (arrays of its namespace)."""
        return {
            "format_version": STATE_FORMAT_VERSION,
            "class": type(self).__name__,
            "params": self.params(),
            "stats_params": self.observer.params(),
            "state": None if self._state is None else self.observer.arrays(self._state),
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
        own = self.observer.params()
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
        state = self.observer.from_arrays(xp, dict(arrays))
        self._state, self._home = state, (xp, device_of(first))

    # -- encodings --------------------------------------------------------------------------
    def compute_encodings(self, num_steps: int | float, is_symmetric: bool) -> tuple[Array, Array]:
        """Return the encodings ``(min, max)`` of the running statistics.

        Raises
        ------
        StatisticsNotFoundError
            Before any update, or while an encoding element has never seen a value.
        """
        num_steps = validate_num_steps(num_steps, is_symmetric)
        self._check_params(num_steps, is_symmetric)
        if self._state is None:
            raise StatisticsNotFoundError(
                f"{type(self).__name__} has no statistics: call update_stats() first"
            )
        return self._encode(self._home[0], self._state, num_steps, is_symmetric)

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
        xp = namespace_of(stats.min)
        return self._encode(xp, self.observer.from_stats(xp, stats), num_steps, is_symmetric)

    def compute_dynamic_encodings(
        self, x: Array, num_steps: int | float, is_symmetric: bool
    ) -> tuple[Array, Array]:
        """Return the encodings of ``x`` alone; the running statistics are untouched."""
        num_steps = validate_num_steps(num_steps, is_symmetric)
        self._check_params(num_steps, is_symmetric)
        x = analyzer_input(x)
        xp = namespace_of(x)
        state, _ = self.observer.update(xp, x, None)
        return self._encode(xp, state, num_steps, is_symmetric)

    def _encode(self, xp: Namespace, state, num_steps: int, is_symmetric: bool):
        # host torch and JAX: the rules on NumPy views of the same memory
        twin = numpy_twin(xp, state, known=self.__dict__.get("_views"))
        if twin is not None:
            np_xp, views, back = twin
            return back(self._encode_in(np_xp, views, num_steps, is_symmetric))
        return self._encode_in(xp, state, num_steps, is_symmetric)

    def _encode_in(self, xp: Namespace, state, num_steps: int, is_symmetric: bool):
        self._check_state(xp, state)
        with quiet(xp):
            lo, hi = self.rule(xp, state, num_steps, is_symmetric, **self.rule_params())
        if lo.shape == self.shape:
            return lo, hi
        return xp.reshape(lo, self.shape), xp.reshape(hi, self.shape)

    def _check_state(self, xp: Namespace, state) -> None:
        """Raise where ``state`` cannot be encoded; warn of the NaN values it dropped."""
        self.observer.check(xp, state)
        empty = self.observer.num_empty(xp, state)
        if empty:
            raise StatisticsNotFoundError(
                f"{empty} of {math.prod(self.shape)} encoding elements have never seen "
                f"{self.observer.needs}; "
                f"update them before computing encodings"
            )
        dropped = self.observer.num_nan(xp, state)
        if dropped:
            warn(f"{dropped} NaN values were ignored while gathering statistics")

    def _check_params(self, num_steps: int, is_symmetric: bool) -> None:
        """Raise for parameter combinations a method cannot encode (none by default)."""

    def _host_state(self):
        """Return ``(NumPy namespace, the state as NumPy arrays, back)``, or None off the host.

        ``back`` turns NumPy results into the home namespace's arrays (NumPy: as they are).
        """
        xp = self._home[0]
        if is_numpy_namespace(xp):
            return xp, self._state, _as_they_are
        return numpy_twin(xp, self._state, known=self.__dict__.get("_views"))


class HistogramAnalyzer(EncodingAnalyzer):
    """Base of the histogram methods: one histogram per encoding element.

    See :class:`~encanalyze.Histogram` for the statistics and the subclasses for the rules.

    Parameters
    ----------
    shape
        Shape of the encodings.
    num_bins
        Bins per histogram.
    growth_limit
        How far the histogram range may grow after the first batch, in multiples of that
        batch's range; values beyond count in the end bins. ``None``: unlimited.
    block_size
        Optional block size for block-wise encodings.
    absolute
        Histogram ``|x|`` from 0 instead of ``x``.
    """

    def __init__(
        self, shape, num_bins: int = 2048, growth_limit=None, block_size=None, absolute=False
    ) -> None:
        super().__init__(HistogramObserver(shape, block_size, num_bins, growth_limit, absolute))

    @property
    def num_bins(self) -> int:
        """Bins per histogram."""
        return self.observer.num_bins

    @property
    def growth_limit(self) -> float:
        """The growth limit (``inf``: none)."""
        return self.observer.growth_limit

    def params(self) -> dict:
        """Return the constructor arguments of this analyzer (JSON-compatible)."""
        return {**super().params(), "num_bins": self.num_bins}


def _as_they_are(results):
    return results


_HOST_XP = array_api_compat.numpy
"""The namespace every host state is encoded in (NumPy's, or NumPy views of torch and JAX)."""


def compute_encodings_together(
    analyzers: Sequence[EncodingAnalyzer],
    num_steps: int | float,
    is_symmetric: bool,
    labels: Sequence[str] | None = None,
) -> list:
    """Return each analyzer's ``compute_encodings(num_steps, is_symmetric)``.

    Where one raises :class:`StatisticsNotFoundError`, its place holds the error; ``labels``
    (one per analyzer) go before the messages of the warnings each gives. Host
    histogram analyzers of one method, parameters and statistics layout (whatever their
    encoding shapes) have their rule applied once to all their histograms stacked: a rule
    treats each histogram on its own, so these are the encodings each computes alone (the tests
    hold them bit for bit), without a rule's dozens of array operations per analyzer.
    """
    num_steps = validate_num_steps(num_steps, is_symmetric)
    results: list = [None] * len(analyzers)
    groups: dict = {}
    for i, analyzer in enumerate(analyzers):
        analyzer._check_params(num_steps, is_symmetric)
        host = None
        if isinstance(analyzer, HistogramAnalyzer) and analyzer._state is not None:
            host = analyzer._host_state()
        try:
            with labelled(None if labels is None else labels[i]):
                if host is None:
                    results[i] = analyzer.compute_encodings(num_steps, is_symmetric)
                    continue
                _, state, back = host
                analyzer._check_state(_HOST_XP, state)
        except StatisticsNotFoundError as err:
            results[i] = err
            continue
        params = json.dumps(analyzer.rule_params(), sort_keys=True)
        layout = (tuple(f is None for f in state), state.counts.shape[1], state.lo.dtype)
        groups.setdefault((type(analyzer), params, layout), []).append((i, state, back))
    for (kind, params, _), members in groups.items():
        stacked = stack_rows(_HOST_XP, [state for _, state, _ in members])
        with quiet(_HOST_XP):
            lo, hi = kind.rule(_HOST_XP, stacked, num_steps, is_symmetric, **json.loads(params))
        start = 0
        for i, state, back in members:
            stop = start + state.counts.shape[0]
            shape = analyzers[i].shape
            part = (
                np.reshape(lo[start:stop], shape).copy(),
                np.reshape(hi[start:stop], shape).copy(),
            )
            results[i] = back(part)
            start = stop
    return results
