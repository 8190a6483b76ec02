"""Merging statistics across the ranks of a ``torch.distributed`` process group."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from ._analyzer import EncodingAnalyzer
from ._backends import from_torch, to_torch
from ._calibration import statistics_key
from ._histograms import RowHistogram, last_edge, rebin_onto
from ._observers import EmaState
from ._registry import METHODS
from ._stats import MinMaxRange
from ._xp import index_dtype, wide_dtype

__all__ = ["Ranks", "all_reduce_analyzers", "all_reduce_stats", "launched_ranks"]

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
        import array_api_compat

        xp, device = array_api_compat.array_namespace(torch.empty(0)), comm
    else:
        xp, device = analyzer._home
    state = reduce(torch, dist, group, comm, analyzer, xp, device)
    analyzer._state, analyzer._home = state, (xp, device)
    return analyzer


def all_reduce_analyzers(
    analyzers: dict, axes: dict, methods: dict, seen, group, count: int, reached=()
) -> tuple[int, set]:
    """Merge every rank's activation statistics (a collective); return the batches and reached.

    ``analyzers``: each tensor's ``{method: analyzer}`` (``methods``' options), ``axes`` its
    channel axis, ``seen`` the tensors this rank has statistics of (their layouts count), both
    updated in place: a tensor another rank saw gets its layout's empty analyzers here, so every
    rank reduces the same tensors in the same order; analyzers of one tensor that share
    statistics are reduced once. ``count``: this rank's batches; ``reached``: names (of
    modules) to unite across the ranks. ``ValueError`` (on every rank) where the ranks disagree
    on a tensor's layout.
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
