"""BatchNorm folded into the convolution or linear layer before it, as deployments run it."""

from __future__ import annotations

import copy

import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

__all__ = ["batchnorms", "fold_batchnorm", "foldable", "folds"]

_CONV = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_BATCHNORM = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def folds(layer: torch.nn.Module, norm: torch.nn.Module) -> bool:
    """Return whether ``norm`` folds into ``layer`` (its running statistics, eval mode)."""
    if not isinstance(norm, _BATCHNORM) or norm.running_mean is None:
        return False
    if isinstance(layer, _CONV):
        return norm.num_features == layer.out_channels
    return isinstance(layer, torch.nn.Linear) and norm.num_features == layer.out_features


def fold_batchnorm(model: torch.nn.Module) -> torch.fx.GraphModule:
    """Return a copy of ``model`` with each BatchNorm folded into the layer before it.

    A ``BatchNorm{1,2,3}d`` with running statistics whose input is the output of a
    ``Conv{1,2,3}d`` (or, for ``BatchNorm1d``, a ``Linear``) used by nothing else is folded into
    that layer's weight and bias (``torch.nn.utils.fusion``: the eval-mode arithmetic; the
    layers keep their names) and leaves the graph. The copy is a ``torch.fx.GraphModule`` in
    eval mode; ``model`` is left as it was. A model ``torch.fx`` cannot trace (data-dependent
    control flow) raises ``TypeError``.
    """
    graph = _traced(copy.deepcopy(model).eval())
    modules = dict(graph.named_modules())
    for node, source in _pairs(graph, modules):
        layer, norm = modules[source.target], modules[node.target]
        fuse = fuse_conv_bn_eval if isinstance(layer, _CONV) else fuse_linear_bn_eval
        parent, _, attr = source.target.rpartition(".")
        setattr(graph.get_submodule(parent) if parent else graph, attr, fuse(layer, norm))
        node.replace_all_uses_with(source)
        graph.graph.erase_node(node)
    graph.delete_all_unused_submodules()
    graph.recompile()
    return graph


def foldable(model: torch.nn.Module) -> dict[str, str] | None:
    """Return ``{batchnorm: layer}`` for the pairs :func:`fold_batchnorm` folds in ``model``.

    None where ``torch.fx`` cannot trace it.
    """
    try:
        graph = _traced(model)
    except TypeError:
        return None
    return {
        node.target: source.target for node, source in _pairs(graph, dict(graph.named_modules()))
    }


def _traced(model: torch.nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as err:  # torch.fx's own errors are of many kinds
        raise TypeError(
            f"fold_batchnorm needs a model torch.fx can trace: {type(err).__name__}: {err}"
        ) from err


def _pairs(graph: torch.fx.GraphModule, modules: dict) -> list[tuple]:
    """Return the ``(batchnorm node, layer node)`` pairs that fold, in graph order."""
    found = []
    for node in graph.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BATCHNORM):
            continue
        source = node.args[0] if node.args else None
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and len(source.users) == 1
            and folds(modules[source.target], modules[node.target])
        ):
            found.append((node, source))
    return found


def batchnorms(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Return ``model``'s BatchNorm modules by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _BATCHNORM)}
