"""Model-level calibration of torch modules with any registered method."""

from __future__ import annotations

import itertools
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch

from .._calibration import (
    CalibrationResult,
    TensorEncoding,
    activation_methods,
    encode_activations,
    file_under,
    first_of_each,
    progress_bar,
    share_within,
    update_shared,
    warn_clipping,
    weight_methods,
    weight_or_reason,
)
from .._encoding import validate_num_steps
from .._registry import DEFAULTS, METHODS
from .._report import layout_for
from .._report_data import activation_histogram
from .._stats import Histogram
from .._warnings import warn
from ..distributed import Lockstep, all_reduce_analyzers
from ._batchnorm import batchnorms, foldable, folds

__all__ = [
    "CalibrationResult",
    "TensorEncoding",
    "calibratable",
    "calibrate",
    "quantizable_modules",
]

_CONV = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_TRANSPOSED = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
QUANTIZABLE = (*_CONV, *_TRANSPOSED, torch.nn.Linear)
"""Module types calibrated by default: their inputs, outputs and weights."""


def quantizable_modules(model: torch.nn.Module, modules=None) -> dict[str, torch.nn.Module]:
    """Return the modules to calibrate, by name.

    ``modules``: module names or module types; ``None``: every convolution, transposed
    convolution and linear layer.
    """
    named = dict(model.named_modules())
    if modules is None:
        return {n: m for n, m in named.items() if isinstance(m, QUANTIZABLE)}
    chosen = {}
    for item in modules:
        if isinstance(item, str):
            if item not in named:
                raise ValueError(f"the model has no module named {item!r}")
            chosen[item] = named[item]
        elif isinstance(item, type):
            chosen.update({n: m for n, m in named.items() if isinstance(m, item)})
        else:
            raise TypeError(f"modules must hold module names or types, got {item!r}")
    return chosen


_GRAPH_OPS = ("conv", "linear", "matmul", "addmm", "bmm")


def calibratable(model: torch.nn.Module) -> torch.nn.Module:
    """Return the module whose forward hooks see ``model``'s tensors, or raise why none does.

    A ``torch.compile``'d model is calibrated through its original module (its names without
    ``_orig_mod.``; the compiled forward would trace the hooks). An exported program's module
    (``torch.export``) has no layer modules to hook: ``TypeError`` points to
    :mod:`encanalyze.pt2e`. A model on the ``meta`` device has no values: ``ValueError``.
    """
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None and isinstance(model, dynamo.eval_frame.OptimizedModule):
        model = model._orig_mod
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.fx.GraphModule) and not quantizable_modules(model):
        ops = {str(n.target) for n in model.graph.nodes if n.op == "call_function"}
        if any(op in target for target in ops for op in _GRAPH_OPS):
            raise TypeError(
                "the model is an exported graph (torch.export): its layers are graph operations, "
                "not modules to hook; calibrate the eager model, or this graph with "
                "encanalyze.pt2e (its observers in prepare_pt2e)"
            )
    meta = [n for n, t in itertools.chain(model.named_parameters(), model.named_buffers())
            if t.is_meta]  # fmt: skip
    if meta:
        raise ValueError(
            f"the model's tensors are on the meta device (no values): {meta[0]!r}"
            f"{f' and {len(meta) - 1} more' if len(meta) > 1 else ''}; load its weights first"
        )
    return model


def channel_axis(module: torch.nn.Module) -> int:
    """Output-channel axis of the module's weight (``ConvTranspose``: 1, else 0)."""
    return 1 if isinstance(module, _TRANSPOSED) else 0


class _Hooks:
    """Forward hooks that feed each module's input and output into analyzers.

    With ``norms`` (BatchNorm modules by name), ``followers`` then maps each BatchNorm whose
    input was a calibrated module's output to that module's name (the pairs deployments fold).
    """

    def __init__(
        self,
        modules: dict,
        methods: dict[str, dict],
        per_channel: bool,
        ranges=None,
        norms: dict | None = None,
        outputs: bool = True,
        steps: tuple[torch.nn.Module, object] | None = None,
    ) -> None:
        self.modules, self.methods, self.per_channel = modules, methods, per_channel
        self.ranges = ranges  # name -> [[min, max] per batch] (the report's; syncs)
        self.places = (":input", ":output") if outputs else (":input",)
        self.analyzers: dict[str, dict] = {}  # tensor -> {method: analyzer}
        self.axes: dict[str, int | None] = {}  # each analyzer's channel axis (None: per tensor)
        self.reached: set[str] = set()  # the modules a batch ran through
        self.norms = norms or {}
        self.outputs: dict[str, tuple[int, weakref.ref]] = {}  # each module's last output
        self.followers: dict[str, str] = {}
        self.handles = []
        # steps = (the model, a process group): its histograms in lockstep, a step per forward
        self.root = None if steps is None else steps[0]
        self.lockstep = None
        if steps is not None and any(
            Lockstep.takes(METHODS[m].analyzer((1,), **o)) for m, o in methods.items()
        ):
            self.lockstep = Lockstep.over(steps[1], self._make)

    def _make(self, name: str, shape: tuple, axis: int | None) -> list:
        """Make the analyzers of tensor ``name``; return the first of each kind of statistics."""
        made = {m: METHODS[m].analyzer(shape, **o) for m, o in self.methods.items()}
        self.analyzers[name], self.axes[name] = made, axis
        return first_of_each(made)

    def _observe(self, name: str, t: torch.Tensor, module: torch.nn.Module) -> None:
        """Feed ``t`` to the tensor's analyzers (the histogram methods share one histogram).

        In lockstep the histograms take a copy at the step, after the forward (which may
        change ``t`` in place meanwhile: an in-place ReLU).
        """
        if name not in self.analyzers:
            axis = None
            if self.per_channel and t.ndim >= 2:  # channels: axis 1 for convolutions, else last
                axis = 1 if isinstance(module, (*_CONV, *_TRANSPOSED)) else t.ndim - 1
            self._make(name, layout_for(tuple(t.shape), axis).shape, axis)
        made = self.analyzers[name]
        if self.lockstep is None:
            gathered: dict = {}
            for analyzer in made.values():
                update_shared(analyzer, t, gathered)
            return
        kept = None
        for analyzer in first_of_each(made):  # (the others share its statistics at the end)
            if self.lockstep.takes(analyzer):
                kept = t.clone() if kept is None else kept
                self.lockstep.add(name, self.axes[name], analyzer, kept)
            else:
                analyzer.observe(t)

    def __enter__(self):
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))
        for name, module in self.norms.items():
            self.handles.append(module.register_forward_pre_hook(self._norm(name)))
        if self.lockstep is not None:  # after the layers' hooks: a step ends each forward
            self.handles.append(self.root.register_forward_hook(self._step))
        return self

    def _step(self, module, inputs, output) -> None:
        self.lockstep.step()

    def finish(self) -> None:
        """After this rank's batches: the steps of the other ranks' batches, then sharing."""
        if self.lockstep is not None:
            self.lockstep.finish()
            for made in self.analyzers.values():
                share_within(made)

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.outputs.clear()

    def _norm(self, name: str):
        def hook(module, inputs):
            first = inputs[0] if inputs else None
            for layer, (at, ref) in self.outputs.items():
                if at == id(first) and ref() is first:
                    if folds(self.modules[layer], module):
                        self.followers.setdefault(name, layer)
                    return

        return hook

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.reached.add(name)
            if self.norms and isinstance(output, torch.Tensor):
                self.outputs[name] = (id(output), weakref.ref(output))
            first = next((i for i in inputs if isinstance(i, torch.Tensor)), None)
            for suffix, t in ((":input", first), (":output", output)):
                if suffix in self.places and isinstance(t, torch.Tensor) and t.is_floating_point():
                    key = name + suffix
                    self._observe(key, t.detach(), module)
                    if self.ranges is not None:
                        finite = t.detach()[torch.isfinite(t.detach())]
                        if finite.numel():
                            lo, hi = float(finite.min()), float(finite.max())
                            self.ranges.setdefault(key, []).append([lo, hi])

        return hook


class Untouched:
    """Observe ``model`` in eval mode (unless ``eval_mode`` is False) and leave it as it was.

    Every module's ``training`` flag and every buffer (BatchNorm running statistics, counters)
    are restored on exit, also when the forward raises.
    """

    def __init__(self, model: torch.nn.Module, eval_mode: bool) -> None:
        self.model, self.eval_mode = model, eval_mode

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        if self.eval_mode:
            self.model.eval()
        return self

    def __exit__(self, *exc) -> None:
        for module, flag in self.flags:
            module.training = flag
        with torch.no_grad():
            for buffer, saved in self.buffers:
                buffer.copy_(saved)


def run_batches(model: torch.nn.Module, batches, batch_to_inputs, progress) -> int:
    """Run ``batches`` (or the ``forward_loop(model)`` that ``batches`` is) through ``model``.

    Returns how many batches ran: the loop's, or the model's forward calls in a forward loop.
    """
    if callable(batches) and not isinstance(batches, torch.nn.Module):
        if batch_to_inputs is not None:
            raise ValueError("batch_to_inputs goes with batches: a forward loop runs the model")
        calls = [0]

        def counted(module, inputs, output) -> None:
            calls[0] += 1

        handle = model.register_forward_hook(counted)
        try:
            batches(model)
        finally:
            handle.remove()
        return calls[0]
    if isinstance(batches, Mapping):
        raise TypeError(
            "batches must be an iterable of batches or a forward_loop(model), got one dict "
            "(wrap a single batch in a list)"
        )
    count = 0
    for batch in progress_bar(batches, progress):
        forward_batch(model, batch if batch_to_inputs is None else batch_to_inputs(batch))
        count += 1
    return count


def forward_batch(model: torch.nn.Module, batch):
    """Run ``model`` on one batch (``model(**batch)``, ``model(*batch)`` or ``model(batch)``)."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def numpy_outputs(model: torch.nn.Module, batch) -> list[np.ndarray]:
    """Return the model's outputs on ``batch`` as NumPy arrays (floats in float64)."""
    return as_numpy(forward_batch(model, batch))


def as_numpy(out) -> list[np.ndarray]:
    """Return a model's output tensors (:func:`flat_outputs`) as NumPy arrays, floats in float64."""
    tensors = [t.detach().cpu() for t in flat_outputs(out)]
    return [(t.double() if t.is_floating_point() else t).numpy() for t in tensors]


def flat_outputs(out) -> list[torch.Tensor]:
    """Return a model's output tensors, flattened from tensors, tuples, lists and dicts."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flat_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in flat_outputs(v)]
    return []


def calibrate(
    model: torch.nn.Module,
    batches: Iterable | Callable[[torch.nn.Module], object],
    *,
    activations: str = DEFAULTS["activations"],
    weights: str | Mapping[str, dict | None] = DEFAULTS["weights"],
    bits: int = DEFAULTS["bits"],
    symmetric: bool = DEFAULTS["symmetric"],
    weight_symmetric: bool | None = DEFAULTS["weight_symmetric"],
    per_channel_weights: bool = DEFAULTS["per_channel_weights"],
    per_channel_activations: bool = False,
    modules=None,
    activation_options: dict | None = None,
    weight_options: dict | None = None,
    progress: bool | None = None,
    eval_mode: bool = True,
    statistics: dict | None = None,
    batch_to_inputs: Callable | None = None,
    outputs: bool = True,
    group=None,
) -> CalibrationResult:
    """Run ``batches`` through ``model`` and return the encodings of its quantizable tensors.

    Forward hooks on the quantizable modules (``modules``: names or module types; default every
    ``Conv*d``, ``ConvTranspose*d`` and ``Linear``) feed their inputs and outputs, on the
    model's device and dtype and without host syncs per batch, into analyzers of the
    ``activations`` method (any name of :data:`encanalyze.METHODS`); weights are calibrated with
    the ``weights`` method, per output channel (axis 0, ``ConvTranspose`` axis 1) unless
    ``per_channel_weights`` is False (a dict of several methods with their options: each weight
    keeps the one with the best SQNR on it). The hooks are removed afterwards, also when the forward
    raises. A batch is passed as ``model(batch)``, ``model(*batch)`` for a tuple or list, and
    ``model(**batch)`` for a dict, after ``batch_to_inputs(batch)`` where given (a DataLoader's
    ``(inputs, target)``: ``batch_to_inputs=lambda b: b[0]``). ``batches`` may instead be a
    ``forward_loop(model)`` that runs the model itself (Model Optimizer's and AIMET's shape; the
    batches counted are the model's forward calls). The loop runs under ``torch.no_grad()``, in
    eval mode (as
    the model is deployed: BatchNorm uses its running statistics, dropout is off) unless
    ``eval_mode`` is False. The model is left exactly as it was: training flags, buffers and
    hooks. ``progress``: a progress bar (tqdm) on a terminal (``None``), always (``True``) or
    never (``False``). The percentile method defaults to the command's ``99.99``
    (``activation_options`` overrides it). A tensor that cannot be encoded (an activation that
    never held a finite value, in any channel, or that no batch reached) is left in floating
    point and listed with the reason in the result's ``unquantized``. A ``torch.compile``'d
    model is calibrated through its original module (:func:`calibratable`). ``statistics``, a
    dict, receives what the analysis report shows
    (:meth:`~encanalyze.onnx.CalibrationResult.report`): ``"histograms"`` (each
    activation's, from a histogram method) and ``"ranges"`` (its ``[min, max]`` per batch,
    which syncs with the device once per batch; not where the dict holds ``"ranges": None``).

    ``group``: a ``torch.distributed`` process group (``torch.distributed.group.WORLD`` for
    every rank): each rank calibrates its own shard of the data (rank ``r`` of ``W``: batches
    ``r``, ``r + W``, ...), the histograms in lockstep with the other ranks
    (:class:`encanalyze.distributed.Lockstep`: a step after each forward; each observed tensor
    is copied until then) and the other statistics all-reduced at the end
    (:func:`encanalyze.distributed.all_reduce_stats`), so every rank returns one process's
    encodings of all the ranks' data in that order, bit for bit (``num_batches``: their sum).
    Every rank of the group must call it, with the same model and options.

    ``symmetric`` is the activations' grid and ``weight_symmetric`` the weights' (``None``:
    the same); the default is the deployment default of ONNX Runtime, TensorRT and QNN,
    asymmetric activations with symmetric weights, which every entry point shares
    (:data:`encanalyze._registry.DEFAULTS`).

    Examples
    --------
    >>> import torch
    >>> from encanalyze.torch import calibrate
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
    ...                             torch.nn.Linear(8 * 6 * 6, 10)).eval()
    >>> batches = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    >>> result = calibrate(model, batches, activations="percentile", bits=8)
    >>> sorted(result.encodings)[:3]
    ['0.weight', '0:input', '0:output']
    >>> tuple(result["0.weight"].min.shape)
    (8, 1, 1, 1)
    """
    act_methods = activation_methods(activations, activation_options)
    model = calibratable(model)
    methods = weight_methods(weights, weight_options)
    num_steps = validate_num_steps(2**bits - 1, symmetric)
    wsym = symmetric if weight_symmetric is None else bool(weight_symmetric)
    validate_num_steps(num_steps, wsym)
    chosen = quantizable_modules(model, modules)
    ranges = None if statistics is None else statistics.setdefault("ranges", {})
    norms = batchnorms(model) if eval_mode else {}
    steps = None if group is None else (model, group)
    hooks = _Hooks(chosen, act_methods, per_channel_activations, ranges, norms, outputs, steps)
    with Untouched(model, eval_mode), hooks, torch.no_grad():
        count = run_batches(model, batches, batch_to_inputs, progress)
        hooks.finish()
    if group is not None:  # every rank of the group: its shard's statistics, all-reduced
        count, reached = all_reduce_analyzers(
            hooks.analyzers, hooks.axes, act_methods, list(hooks.analyzers), group, count,
            hooks.reached, replayed=True,
        )  # fmt: skip
        hooks.reached |= reached
    pairs = hooks.followers
    if pairs:  # only the pairs that fold, where torch.fx can tell
        known = foldable(model)
        pairs = pairs if known is None else {n: lay for n, lay in pairs.items() if n in known}
    if pairs:
        norm, layer = next(iter(pairs.items()))
        more = len(pairs) - 1
        warn(
            f"BatchNorm {norm!r} follows {layer!r}{f' (and {more} more pairs)' if more else ''}, "
            "calibrated without it: deployments fold it into the layer (its weight and output "
            "change); "
            "calibrate encanalyze.torch.fold_batchnorm(model) instead",
            UserWarning,
        )
    encodings: dict[str, TensorEncoding] = {}
    unquantized: dict[str, str] = {}
    items = [
        (k, a, hooks.axes[k], m) for k, made in hooks.analyzers.items() for m, a in made.items()
    ]
    found_by: dict[str, dict] = {}
    for (name, _, _, m), e in zip(
        items, encode_activations(items, num_steps, symmetric), strict=True
    ):
        found_by.setdefault(name, {})[m] = e
    first = next(iter(act_methods))
    acts = {name: by[first] for name, by in found_by.items()}
    stats = {name: made[first].get_stats() for name, made in hooks.analyzers.items()}
    candidates = {}
    if len(act_methods) > 1:
        candidates = {
            n: {m: e for m, e in by.items() if not isinstance(e, str)} for n, by in found_by.items()
        }
    else:  # (with several, whoever chooses among them warns of what it chose)
        warn_clipping(acts, stats)
    for name, module in chosen.items():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.is_floating_point():
            axis = channel_axis(module) if per_channel_weights else None
            key = f"{name}.weight" if name else "weight"
            found = weight_or_reason(key, weight.detach(), axis, methods, num_steps, wsym)
            file_under(key, found, encodings, unquantized)
        for suffix in hooks.places:
            if name + suffix in acts:
                file_under(name + suffix, acts[name + suffix], encodings, unquantized)
            elif name not in hooks.reached:  # (a module that ran has no float tensor there)
                unquantized[name + suffix] = "no calibration batch reached it"
    if statistics is not None:
        statistics["histograms"] = {
            n: activation_histogram(st)
            for n, st in stats.items()
            if isinstance(st, Histogram) and st.histogram.shape[:-1] == (1,)
        }
        statistics["stats"] = stats
    return CalibrationResult(
        encodings,
        bits,
        symmetric,
        count,
        unquantized,
        weight_symmetric=weight_symmetric,
        candidates={n: c for n, c in candidates.items() if n in encodings},
    )
