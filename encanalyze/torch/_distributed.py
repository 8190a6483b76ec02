"""One calibration across the ranks of a ``torch.distributed`` process group.

Each rank runs its own shard of the data through its copy of the model; the ranks then agree on
the activations any of them saw and all-reduce every one's statistics
(:func:`encanalyze.distributed.all_reduce_stats`: exact for min-max and histograms), so every
rank encodes what one process would from all the statistics.
"""

from __future__ import annotations

from .._calibration import statistics_key
from .._registry import METHODS
from ..distributed import all_reduce_stats

__all__ = ["all_reduce_calibration"]


def all_reduce_calibration(hooks, count: int, group) -> int:
    """Merge every rank's activation statistics in ``hooks`` (a collective); return the batches.

    The ranks first exchange which tensors they saw (with their analyzers' shapes and axes): a
    tensor no batch reached on this rank gets empty analyzers, so every rank reduces the same
    tensors in the same order. Analyzers of one tensor that share statistics are reduced once.
    ``ValueError`` (on every rank) where the ranks disagree on a tensor's layout.
    """
    import torch.distributed as dist

    mine = {
        key: (tuple(next(iter(made.values())).shape), hooks.axes[key])
        for key, made in hooks.analyzers.items()
    }
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(
        gathered, {"tensors": mine, "reached": sorted(hooks.reached), "count": count}, group=group
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
        if key not in hooks.analyzers:  # no batch reached it here
            hooks.analyzers[key] = {
                m: METHODS[m].analyzer(shape, **o) for m, o in hooks.methods.items()
            }
            hooks.axes[key] = axis
        reduced: dict = {}
        for analyzer in hooks.analyzers[key].values():
            kind = statistics_key(analyzer)
            if kind in reduced:
                analyzer.share_stats(reduced[kind])
            else:
                reduced[kind] = all_reduce_stats(analyzer, group)
    hooks.reached.update(name for rank in gathered for name in rank["reached"])
    return sum(rank["count"] for rank in gathered)
