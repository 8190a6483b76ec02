"""Merging statistics across the ranks of a ``torch.distributed`` process group."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import array_api_compat
import array_api_compat.numpy
import numpy as np

from ._analyzer import EncodingAnalyzer
from ._backends import analyzer_input, from_torch, numpy_twin, quiet, to_numpy, to_torch
from ._calibration import statistics_key
from ._histograms import BatchRange, RowHistogram, last_edge, rebin_onto
from ._observers import EmaState
from ._registry import METHODS
from ._stats import MinMaxRange
from ._xp import (
    check_same_home,
    device_of,
    float_dtype,
    index_dtype,
    namespace_of,
    wide_dtype,
)

__all__ = ["Lockstep", "Ranks", "all_reduce_analyzers", "all_reduce_stats", "launched_ranks"]

# float dtypes by rank, so that ranks agree on the widest one (a rank without data knows none)
_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _torch():
    try:
        import torch
        import torch.distributed as dist
    except ImportError as err:  # pragma: no cover - exercised only without torch
        raise ImportError(
            "encanalyze.distributed.all_reduce_stats needs torch (pip install torch)"
        ) from err
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialized: call torch.distributed.init_process_group "
            "first (torchrun does the rendezvous)"
        )
    return torch, dist


@dataclass(frozen=True)
class Ranks:
    """A process's place among the ranks of a launch: its ``group``, ``rank`` and ``size``."""

    group: object
    rank: int
    size: int

    def shard(self, items: Sequence) -> Sequence:
        """Return this rank's share of ``items``: every ``size``-th, from the ``rank``-th."""
        return items[self.rank :: self.size]

    @property
    def first(self) -> bool:
        """Whether this is rank 0 (the one that writes the outputs)."""
        return self.rank == 0


def launched_ranks(backend: str = "gloo") -> Ranks | None:
    """Return the ranks of a ``torchrun`` launch (``None`` when not launched with several).

    Reads torchrun's environment (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...) and initializes
    the default process group with ``backend`` unless it already is (the caller's own group
    and backend then stand).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    try:
        import torch.distributed as dist
    except ImportError as err:  # pragma: no cover - exercised only without torch
        raise ImportError("calibrating across processes needs torch (pip install torch)") from err
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Ranks(dist.group.WORLD, dist.get_rank(), dist.get_world_size())


def all_reduce_stats(analyzer: EncodingAnalyzer, group=None) -> EncodingAnalyzer:
    """Replace every rank's running statistics with the merge of all ranks' statistics.

    Every rank of ``group`` must call it (a collective) with an analyzer of the same class and
    parameters. Min-max: one MIN all-reduce of the ranges and one SUM of the NaN counts.
    Histograms: one MIN all-reduce agrees on the union range (and growth limits), each rank
    re-bins its counts onto the common edges, and one SUM all-reduce of the counts (with the NaN
    counts alongside) adds them, in float64, so the result is exact and independent of rank
    order. It equals :func:`encanalyze.merge_stats` of all ranks' statistics.

    Moving-average min-max (:class:`~encanalyze.EmaMinMaxEncodingAnalyzer`): one SUM
    all-reduce of the count-weighted ranges and counts gives the weighted average that its
    ``merge`` computes (not exact: see the class).

    A rank that saw no data takes part normally. NumPy, CuPy and array-api-strict statistics go
    through torch (zero-copy via DLPack where possible) on the communication device: the CPU for
    gloo, the current CUDA device for NCCL. A rank never updated at all receives the statistics
    as torch tensors on that device.

    Returns the analyzer.
    """
    torch, dist = _torch()
    if dist.get_backend(group) == "nccl":
        comm = torch.device("cuda", torch.cuda.current_device())
    else:
        comm = torch.device("cpu")
    reduce = _REDUCERS.get(getattr(getattr(analyzer, "observer", None), "kind", None))
    _check_agreement(torch, dist, group, comm, analyzer)  # before raising: no rank is left waiting
    if reduce is None:
        raise TypeError(f"cannot all-reduce the statistics of a {type(analyzer).__name__}")
    if analyzer._home is None:
        xp, device = array_api_compat.array_namespace(torch.empty(0)), comm
    else:
        xp, device = analyzer._home
    state = reduce(torch, dist, group, comm, analyzer, xp, device)
    analyzer._state, analyzer._home = state, (xp, device)
    return analyzer


class Lockstep:
    """Histograms that the ranks of ``group`` update in one process's order: bit-identical.

    One process re-bins its histograms as their range grows, batch after batch, so the merge
    of the ranks' own histograms (:func:`all_reduce_stats`) differs from it within a bin. Here
    the ranks take steps together: at step ``t`` rank ``r`` brings its ``t``-th batch (the
    batch ``t * W + r`` of ``W`` ranks sharded every ``W``-th, :meth:`Ranks.shard`); each rank
    finds its batch's range per tensor, one object all-gather shares them, every rank replays
    the ranges of the step's batches in rank order to count its own batch on the edges one
    process would count it on, one all-gather shares the counts, and every rank adds them in
    that order (:meth:`~encanalyze._observers.HistogramObserver.take`). Every rank ends with
    the statistics one process computes on the batches in that order, bit for bit.

    ``make(name, shape, axis)`` returns the primary analyzers of a tensor this rank has not
    seen (made in the caller's tables). Per step: :meth:`add` each histogram analyzer's
    tensor (:meth:`takes`), then :meth:`step`; when a rank's batches are done it calls
    :meth:`finish`, which takes empty steps until every rank's are.
    """

    def __init__(self, group, make: Callable[[str, tuple, int | None], list]) -> None:
        torch, dist = _torch()
        self.group, self.make = group, make
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)
        self.comm = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend(group) == "nccl"
            else torch.device("cpu")
        )
        self.pending: dict[str, list] = {}  # key -> this step's tensors
        self.analyzers: dict[str, EncodingAnalyzer] = {}
        self.layouts: dict[str, tuple] = {}  # key -> (name, shape, channel axis)

    @classmethod
    def over(cls, group, make: Callable[[str, tuple, int | None], list]) -> Lockstep | None:
        """Return a lockstep over ``group`` (None for one rank: its own order is one process's)."""
        _, dist = _torch()
        return cls(group, make) if dist.get_world_size(group) > 1 else None

    @staticmethod
    def takes(analyzer: EncodingAnalyzer) -> bool:
        """Whether ``analyzer``'s statistics are histograms (min-max ones reduce exactly)."""
        return getattr(analyzer.observer, "kind", None) == "histogram"

    def add(self, name: str, axis: int | None, analyzer: EncodingAnalyzer, x) -> None:
        """Bring tensor ``x`` of ``name`` (channel ``axis``) to ``analyzer`` at this step.

        ``x`` is read at :meth:`step`: the caller must not change it in place before then.
        """
        key = json.dumps([name, *statistics_key(analyzer)])
        self.pending.setdefault(key, []).append(x)
        self.analyzers[key] = analyzer
        self.layouts[key] = (name, tuple(analyzer.shape), axis)

    def finish(self) -> None:
        """Take empty steps until no rank has a batch left (every rank must call it)."""
        while self.step(present=False):
            pass

    def step(self, present: bool = True) -> bool:
        """Update every rank's analyzers with the step's batches; return whether any rank had one.

        A collective: every rank calls it once per step (``present``: whether it brought a
        batch). A tensor no rank can take (a wrong shape) raises the same error on every rank,
        with no statistics changed.
        """
        torch, dist = _torch()
        pending, self.pending = self.pending, {}
        works: dict = {}  # key -> where its step is computed
        local: dict = {}  # key -> [(rows, BatchRange) or None]
        report: dict = {}
        error = None
        try:
            for key, xs in sorted(pending.items()):
                works[key], local[key], report[key] = self._ranges(self.analyzers[key], xs)
        except (TypeError, ValueError) as err:
            error = f"{type(err).__name__}: {err}"
        gathered: list = [None] * self.size
        layouts = {key: self.layouts[key] for key in report}
        note = {"present": present, "ranges": report, "layouts": layouts, "error": error}
        dist.all_gather_object(gathered, note, group=self.group)
        failed = [(r, g["error"]) for r, g in enumerate(gathered) if g["error"]]
        if failed:
            rank, why = failed[0]
            raise ValueError(f"rank {rank} could not take its batch: {why}")
        keys = sorted({key for g in gathered for key in g["ranges"]})
        for key in keys:
            if key not in works:  # another rank's tensor alone
                analyzer = self._analyzer(key, gathered)
                works[key] = _work(analyzer, self._home(analyzer, key, gathered), [])[0]
        mine = [
            counts
            for key in keys
            for counts in self._own_counts(key, works[key], gathered, local.get(key, []))
        ]
        sizes = [
            sum(
                math.prod(self.analyzers[k].shape) * self.analyzers[k].observer.num_bins
                for k, entries in g["ranges"].items()
                for entry in entries
                if entry["lo"] is not None
            )
            for g in gathered
        ]
        every = self._all_gather(torch, dist, mine, sizes)
        offsets = [0] * self.size
        for key in keys:
            self._take(key, works[key], gathered, every, offsets)
        return any(g["present"] for g in gathered)

    def _ranges(self, analyzer: EncodingAnalyzer, xs: list) -> tuple:
        """Return where the step of ``xs`` is computed, and each one's range.

        The ranges: ``(rows, range)`` where the step is computed (None: empty), and on the host.
        """
        xs = [analyzer_input(x) for x in xs]
        home = analyzer._home or (namespace_of(xs[0]), device_of(xs[0]))
        for x in xs:
            check_same_home(home, namespace_of(x), device_of(x))
        work, views = _work(analyzer, home, xs)
        local, report = [], []
        for x, view in zip(xs, views, strict=True):
            with quiet(work.xp):
                found = analyzer.observer.batch_range(work.xp, view)
            dtype = str(float_dtype(home[0], x)).rsplit(".", 1)[-1]
            kind = "torch" if array_api_compat.is_torch_array(x) else "array"
            entry = {"dtype": dtype, "kind": kind, "lo": None}
            if found is not None:
                entry.update(
                    {f: None if v is None else to_numpy(v) for f, v in found[1]._asdict().items()}
                )
            local.append(found)
            report.append(entry)
        return work, local, report

    def _analyzer(self, key: str, gathered: list) -> EncodingAnalyzer:
        """Return ``key``'s analyzer, made (``make``) where this rank has not seen the tensor."""
        if key not in self.analyzers:
            name, shape, axis = next(g["layouts"][key] for g in gathered if key in g["layouts"])
            made = {json.dumps([name, *statistics_key(a)]): a for a in self.make(name, shape, axis)}
            self.analyzers[key] = made[key]
        return self.analyzers[key]

    def _home(self, analyzer: EncodingAnalyzer, key: str, gathered: list) -> tuple:
        """Return the namespace and device of ``key``'s statistics.

        The analyzer's own; for a tensor this rank has not seen, NumPy where the ranks' arrays
        were not torch tensors, else torch on the communication device.
        """
        if analyzer._home is not None:
            return analyzer._home
        kinds = {e["kind"] for g in gathered for e in g["ranges"].get(key, [])}
        if "torch" in kinds:
            torch, _ = _torch()
            return array_api_compat.array_namespace(torch.empty(0)), self.comm
        return array_api_compat.numpy, "cpu"

    def _replayed(self, xp, device, entry: dict) -> BatchRange:
        """Return a gathered range in ``xp`` on ``device``, in its dtype."""
        dtype = getattr(xp, entry["dtype"])

        def back(v, dt):
            if v is None:
                return None
            if array_api_compat.is_numpy_namespace(xp):
                return xp.astype(xp.asarray(v), dt)
            return xp.astype(from_torch(xp, to_torch(np.asarray(v)), device), dt)

        return BatchRange(
            back(entry["lo"], dtype),
            back(entry["hi"], dtype),
            back(entry["num_nan"], index_dtype(xp)),
            back(entry["num_negative"], index_dtype(xp)),
        )

    def _own_counts(self, key: str, work: _Work, gathered: list, local: list) -> list:
        """Count this rank's tensors of ``key`` on the edges one process would count them on."""
        observer, xp = self.analyzers[key].observer, work.xp
        edges, out = work.state, []
        for rank, g in enumerate(gathered[: self.rank + 1] if local else []):
            for i, entry in enumerate(g["ranges"].get(key, [])):
                if entry["lo"] is None:
                    continue
                with quiet(xp):
                    batch = self._replayed(xp, work.device, entry)
                    (lo, hi), edges = observer.counting_range(xp, edges, batch)
                    if rank == self.rank:
                        rows, own = local[i]
                        out.append(observer.count(xp, rows, own, lo, hi))
        return out

    def _all_gather(self, torch, dist, mine: list, sizes: list) -> list:
        """All-gather each rank's flat counts (padded to the longest); return them by rank."""
        top = max(sizes)
        if top == 0:
            return [None] * self.size
        flat = torch.zeros(top, dtype=torch.float64, device=self.comm)
        if mine:
            own = torch.cat([to_torch(c, self.comm).double().reshape(-1) for c in mine])
            flat[: own.numel()] = own
        every = [torch.empty_like(flat) for _ in range(self.size)]
        dist.all_gather(every, flat, group=self.group)
        return every

    def _take(self, key: str, work: _Work, gathered: list, every: list, offsets: list) -> None:
        """Add the step's counts of ``key``, rank after rank, as one process would."""
        analyzer = self.analyzers[key]
        observer, xp, device = analyzer.observer, work.xp, work.device
        e, num_bins = math.prod(analyzer.shape), observer.num_bins
        state = work.state
        for rank, g in enumerate(gathered):
            for entry in g["ranges"].get(key, []):
                with quiet(xp):
                    if entry["lo"] is None:  # an empty batch: the update's empty statistics
                        if state is None:
                            state = observer.empty(xp, getattr(xp, entry["dtype"]), device)
                        continue
                    start = offsets[rank]
                    offsets[rank] += e * num_bins
                    flat = every[rank][start : offsets[rank]].reshape(e, num_bins)
                    counts = xp.astype(from_torch(xp, flat, device), wide_dtype(xp, device))
                    batch = self._replayed(xp, device, entry)
                    state = observer.take(xp, state, batch, counts)
        analyzer._state = state if work.back is None else work.back(state)
        analyzer._home = work.home


@dataclass(frozen=True)
class _Work:
    """Where one tensor's step is computed.

    ``xp`` on ``device`` with the statistics ``state`` there; ``back`` (None: nothing to do)
    returns them to ``home``'s arrays.
    """

    xp: object
    device: object
    state: object
    back: Callable | None
    home: tuple


def _work(analyzer: EncodingAnalyzer, home: tuple, xs: list) -> tuple[_Work, list]:
    """Return where an analyzer's step is computed, and its tensors ``xs`` there.

    Host torch statistics and batches are worked on through their NumPy views, as the
    analyzers' own updates take them (:func:`~encanalyze._backends.numpy_twin`; the results
    are torch's own, tested bit for bit); everything else in its own namespace.
    """
    xp, device = home
    if array_api_compat.is_torch_namespace(xp) and getattr(device, "type", device) == "cpu":
        twins = [numpy_twin(xp, analyzer._state, batch=x) for x in xs]
        twins = twins or [numpy_twin(xp, analyzer._state)]
        if all(t is not None for t in twins):
            np_xp, views, back = twins[0]
            state = views[1] if xs else views
            batches = [t[1][0] for t in twins] if xs else []
            return _Work(np_xp, "cpu", state, back, home), batches
    return _Work(xp, device, analyzer._state, None, home), xs


def all_reduce_analyzers(
    analyzers: dict,
    axes: dict,
    methods: dict,
    seen,
    group,
    count: int,
    reached=(),
    replayed: bool = False,
) -> tuple[int, set]:
    """Merge every rank's activation statistics (a collective); return the batches and reached.

    ``analyzers``: each tensor's ``{method: analyzer}`` (``methods``' options), ``axes`` its
    channel axis, ``seen`` the tensors this rank has statistics of (their layouts count), both
    updated in place: a tensor another rank saw gets its layout's empty analyzers here, so every
    rank reduces the same tensors in the same order; analyzers of one tensor that share
    statistics are reduced once. ``count``: this rank's batches; ``reached``: names (of
    modules) to unite across the ranks. ``ValueError`` (on every rank) where the ranks disagree
    on a tensor's layout. ``replayed``: the histograms were updated in :class:`Lockstep` (every
    rank's are the same already); they are not reduced again.
    """
    _, dist = _torch()
    mine = {key: (tuple(next(iter(analyzers[key].values())).shape), axes.get(key)) for key in seen}
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(
        gathered, {"tensors": mine, "reached": sorted(reached), "count": count}, group=group
    )
    tensors: dict = {}
    for rank in gathered:
        for key, layout in rank["tensors"].items():
            if tensors.setdefault(key, layout) != layout:
                raise ValueError(
                    f"the ranks calibrated {key!r} with different layouts "
                    f"({tensors[key]} and {layout}): every rank must run the same model"
                )
    for key in sorted(tensors):
        shape, axis = tensors[key]
        if key not in mine:  # no batch reached it here
            analyzers[key] = {m: METHODS[m].analyzer(shape, **o) for m, o in methods.items()}
            axes[key] = axis
        reduced: dict = {}
        for analyzer in analyzers[key].values():
            kind = statistics_key(analyzer)
            if kind in reduced:
                analyzer.share_stats(reduced[kind])
            elif replayed and Lockstep.takes(analyzer):
                reduced[kind] = analyzer
            else:
                reduced[kind] = all_reduce_stats(analyzer, group)
    united = {name for rank in gathered for name in rank["reached"]}
    return sum(rank["count"] for rank in gathered), united


def _check_agreement(torch, dist, group, comm, analyzer) -> None:
    """One small collective: every rank must hold an analyzer of the same class and parameters.

    A fingerprint of the class and parameters (shape, bins, growth limit, ...) is reduced with
    MIN over ``(h, -h)``; ranks that differ raise the same ``ValueError`` everywhere, instead of
    a collective of mismatched sizes aborting the process or mixing channels silently.
    """
    params = getattr(analyzer, "params", dict)()
    observer = getattr(getattr(analyzer, "observer", None), "params", dict)()
    spec = json.dumps([type(analyzer).__name__, params, observer], sort_keys=True, default=str)
    h = float(int.from_bytes(hashlib.sha256(spec.encode()).digest()[:6], "little"))
    both = torch.tensor([h, -h], dtype=torch.float64, device=comm)
    dist.all_reduce(both, op=dist.ReduceOp.MIN, group=group)
    if both[0].item() != -both[1].item():
        raise ValueError(
            "all_reduce_stats: the ranks' analyzers differ in class or parameters (shape, "
            "num_bins, growth limit, ...); every rank must pass an analyzer built the same way"
        )


def _dtype_code(state_array) -> list[float]:
    """Return flags (-1 where present) of the four float dtypes, MIN-reduced across ranks."""
    flags = [0.0] * len(_DTYPES)
    if state_array is not None:
        name = str(state_array.dtype).rsplit(".", 1)[-1]
        flags[_DTYPES.index(name) if name in _DTYPES else 2] = -1.0
    return flags


def _agree_dtype(flags) -> str:
    """Return the dtype ``merge_stats`` promotes the ranks' dtypes to (f16 + bf16: float32)."""
    present = {name for name, f in zip(_DTYPES, flags.tolist(), strict=True) if f < 0}
    if "float64" in present:
        return "float64"
    if "float32" in present or {"float16", "bfloat16"} <= present or not present:
        return "float32"
    return present.pop()


def _back(xp, t, device, dtype=None):
    """Return torch tensor ``t`` in namespace ``xp`` on ``device`` (cast to ``dtype``)."""
    out = from_torch(xp, t, device)
    return out if dtype is None else xp.astype(out, dtype)


def _minmax(torch, dist, group, comm, analyzer, xp, device):
    e = math.prod(analyzer.shape)
    state: MinMaxRange | None = analyzer._state
    lo = torch.full((e,), math.inf, dtype=torch.float64, device=comm)
    hi = torch.full((e,), -math.inf, dtype=torch.float64, device=comm)
    nan = torch.zeros((e,), dtype=torch.float64, device=comm)
    if state is not None:
        lo = to_torch(state.min, comm).double()
        hi = to_torch(state.max, comm).double()
        if state.num_nan is not None:
            nan = to_torch(state.num_nan, comm).double()
    code = torch.tensor(_dtype_code(None if state is None else state.min), device=comm)
    packed = torch.cat([lo, -hi, code.double()])
    dist.all_reduce(packed, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(nan, op=dist.ReduceOp.SUM, group=group)
    dtype = getattr(xp, _agree_dtype(packed[-len(_DTYPES) :]))
    lo, hi = packed[:e], -packed[e : 2 * e]
    return MinMaxRange(
        _back(xp, lo, device, dtype),
        _back(xp, hi, device, dtype),
        _back(xp, nan.long(), device, index_dtype(xp)),
    )


def _histogram(torch, dist, group, comm, analyzer, xp, device):
    e, num_bins = math.prod(analyzer.shape), analyzer.num_bins
    state: RowHistogram | None = analyzer._state
    limited = not math.isinf(analyzer.growth_limit)
    inf = torch.full((e,), math.inf, dtype=torch.float64, device=comm)
    lo = neg_hi = lim_lo = neg_lim_hi = obs_lo = neg_obs_hi = inf
    held = torch.zeros((e, 1), dtype=torch.float64, device=comm)
    if state is not None:
        lo = to_torch(state.lo, comm).double()
        neg_hi = -to_torch(state.hi, comm).double()
        if state.limits is not None:
            lim_lo = to_torch(state.limits[0], comm).double()
            neg_lim_hi = -to_torch(state.limits[1], comm).double()
        observed = state.observed_range()
        obs_lo = to_torch(observed[0], comm).double()
        neg_obs_hi = -to_torch(observed[1], comm).double()
        held = (lo <= -neg_hi).double().reshape(e, 1)
    code = torch.tensor(_dtype_code(None if state is None else state.lo), device=comm)
    packed = torch.cat([lo, neg_hi, lim_lo, neg_lim_hi, obs_lo, neg_obs_hi, code.double()])
    dist.all_reduce(packed, op=dist.ReduceOp.MIN, group=group)
    dtype = getattr(xp, _agree_dtype(packed[-len(_DTYPES) :]))

    def back(t, dt=None):
        return _back(xp, t, device, dt)

    union_lo, union_hi = back(packed[:e], dtype), back(-packed[e : 2 * e], dtype)
    if state is None:  # a rank without data contributes zero counts on the common edges
        counts = xp.zeros((e, num_bins), dtype=wide_dtype(xp, device), device=device)
        state = RowHistogram(counts, union_lo, union_hi)
    nan = torch.zeros((e, 1), dtype=torch.float64, device=comm)
    if state.num_nan is not None:
        nan = to_torch(state.num_nan, comm).double().reshape(e, 1)
    neg = torch.zeros((e, 1), dtype=torch.float64, device=comm)
    if state.num_negative is not None:
        neg = to_torch(state.num_negative, comm).double().reshape(e, 1)
    counts = rebin_onto(xp, state, union_lo, union_hi)
    total = torch.cat([to_torch(counts, comm).double(), nan, held, neg], dim=1)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    limits = None
    if limited:
        limits = (back(packed[2 * e : 3 * e], dtype), back(-packed[3 * e : 4 * e], dtype))
    # as merge_stats: a row held by one rank keeps its observed range, else the union range
    several = back(total[:, num_bins + 1] > 1)
    observed = (
        xp.where(several, union_lo, back(packed[4 * e : 5 * e], dtype)),
        xp.where(several, union_hi, back(-packed[5 * e : 6 * e], dtype)),
    )
    return RowHistogram(
        back(total[:, :num_bins].float()),
        union_lo,
        last_edge(xp, union_lo, union_hi, num_bins),
        back(total[:, num_bins].long()),
        limits,
        observed,
        back(total[:, num_bins + 2].long()) if analyzer.observer.absolute else None,
    )


def _ema(torch, dist, group, comm, analyzer, xp, device):
    e = analyzer.observer.num_rows
    state: EmaState | None = analyzer._state
    zeros = torch.zeros((e,), dtype=torch.float64, device=comm)
    sums = torch.stack([zeros, zeros, zeros, zeros])  # count * min, count * max, count, NaN
    if state is not None:
        count = to_torch(state.count, comm).double()
        held = count > 0
        sums[0] = torch.where(held, count * to_torch(state.min, comm).double(), 0.0)
        sums[1] = torch.where(held, count * to_torch(state.max, comm).double(), 0.0)
        sums[2] = count
        if state.num_nan is not None:
            sums[3] = to_torch(state.num_nan, comm).double()
    code = torch.tensor(_dtype_code(None if state is None else state.min), device=comm)
    dist.all_reduce(code, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    dtype = getattr(xp, _agree_dtype(code))
    count = sums[2]
    held = count > 0
    lo = torch.where(held, sums[0] / count.clamp(min=1), math.inf)
    hi = torch.where(held, sums[1] / count.clamp(min=1), -math.inf)
    return EmaState(
        _back(xp, lo, device, dtype),
        _back(xp, hi, device, dtype),
        _back(xp, count.long(), device, index_dtype(xp)),
        _back(xp, sums[3].long(), device, index_dtype(xp)),
    )


_REDUCERS = {"minmax": _minmax, "histogram": _histogram, "ema": _ema}
