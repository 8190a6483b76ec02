"""A torch model's encodings on its ONNX export: which exported tensor holds each one.

Names are found by value, whatever the exporter called them: the float model and its ONNX
export run on the same example inputs, each calibrated activation is the exported tensor of its
shape that holds its values (where several do, the one its layer's node reads or writes), and
each weight the initializer equal to it (or to its transpose: the encoding's axis follows).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .._calibration import TensorEncoding
from .._io import float_weights
from .._warnings import warn
from ..onnx._blocks import BlockCalibration, block_weight
from ..onnx._calibrate import feeds, model_inputs, run_batch, session, value_infos
from ._calibrate import Untouched, flat_outputs, forward_batch
from ._fake_quant import kind_of, module_of

__all__ = ["export_float", "onnx_result"]

_FLOAT = 1  # onnx.TensorProto.FLOAT
_MATCH = 1e-4
"""An exported tensor holds an activation when they differ by at most this fraction of its
largest magnitude (ONNX Runtime's kernels round differently from torch's)."""


def export_float(model: torch.nn.Module, example_inputs, path: Path, exporter: dict) -> None:
    """Export ``model`` (eval mode, left as it was) to ONNX at ``path`` with ``torch.onnx.export``.

    ``example_inputs``: one tensor, a tuple of positional inputs, or a dict of keyword inputs.
    ``exporter`` options go to ``torch.onnx.export``; ``dynamo`` defaults to False (the TorchScript
    exporter, which needs no ``onnxscript``), and then, unless ``input_names`` or
    ``dynamic_axes`` are given, the inputs (``input``, ``input_0``, ..., or the dict's keys)
    and outputs (``output``, ``output_0``, ...) get a dynamic first (batch) axis.
    """
    args, kwargs = _split(example_inputs)
    options = {"dynamo": False, **exporter}
    with Untouched(model, True), torch.no_grad(), warnings.catch_warnings():
        if not options["dynamo"] and "dynamic_axes" not in options and "input_names" not in options:
            options.update(_batch_axes(model, example_inputs, args, kwargs))
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)
        torch.onnx.export(model, args, str(path), kwargs=kwargs, **options)


def _batch_axes(model, example_inputs, args: tuple, kwargs: dict | None) -> dict:
    """Return the exporter options naming every input and output, with a dynamic batch axis."""
    outputs = flat_outputs(forward_batch(model, example_inputs))
    inputs = list(kwargs) if kwargs is not None else [f"input_{k}" for k in range(len(args))]
    if len(inputs) == 1:
        inputs = inputs if kwargs is not None else ["input"]
    names = ["output"] if len(outputs) == 1 else [f"output_{k}" for k in range(len(outputs))]
    batch = {0: "batch"}
    return {
        "input_names": inputs,
        "output_names": names,
        "dynamic_axes": {n: batch for n in (*inputs, *names)},
    }


def _split(example_inputs) -> tuple[tuple, dict | None]:
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), None
    return (example_inputs,), None


def onnx_result(model: torch.nn.Module, proto, example_inputs, result) -> tuple[object, dict]:
    """Return ``result`` keyed by ``proto``'s tensor names, and the name each encoding got.

    ``proto`` is ``model``'s ONNX export; ``result`` a :class:`CalibrationResult`,
    :class:`~encanalyze.onnx.Float8Calibration` or :class:`~encanalyze.onnx.BlockCalibration`
    (a transposed weight's blocks are taken again along its sum axis: the same blocks).
    Encodings no exported tensor holds are left out, under ``unquantized`` with the reason, and
    a ``UserWarning`` names them.
    """
    values = _torch_values(model, result, example_inputs)
    exported, order = _onnx_values(proto, example_inputs)
    initializers = float_weights(proto)
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers: dict[str, object] = {}  # module name -> the node reading its weight
    names: dict[str, str] = {}
    encodings: dict[str, TensorEncoding] = {}
    for key, e in result.encodings.items():
        if kind_of(e) != "param":
            continue
        module, _ = module_of(key, e)
        found = _weight_name(values[key], initializers)
        if found is not None:
            name, transposed = found
            names[key] = name
            encodings[name] = _renamed(result, e, name, transposed, initializers[name])
            layers[module] = _reader(name, consumers)
    taken: dict[str, str] = {}
    for key, e in sorted(result.encodings.items(), key=lambda kv: not kv[0].endswith(":output")):
        if kind_of(e) != "activation" or key not in values:
            continue
        module, where = module_of(key, e)
        name = _activation_name(values[key], exported, order, layers.get(module), where)
        if name is None or name in taken:  # (a tensor taken by the output before it)
            if name is not None:
                names[key] = name
            continue
        names[key], taken[name] = name, key
        encodings[name] = dataclasses.replace(e, name=name)
    unquantized = dict(result.unquantized)
    missing = [k for k in result.encodings if k not in names]
    for key in missing:
        unquantized[key] = "no tensor of the exported ONNX model holds it"
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        warn(
            f"{missing[0]!r}{more}: no tensor of the exported ONNX model holds it (the exporter "
            "changed it: a BatchNorm folded by the exporter, an operator fused); it stays in "
            "floating point in the QDQ model",
            UserWarning,
        )
    field = "weights" if isinstance(result, BlockCalibration) else "encodings"
    return dataclasses.replace(result, **{field: encodings}, unquantized=unquantized), names


def _torch_values(model, result, example_inputs) -> dict[str, np.ndarray]:
    """Every encoded tensor's value on ``example_inputs`` in the float ``model`` (float32)."""
    modules = dict(model.named_modules())
    values, handles = {}, []

    def grab(key: str, where: str):
        def hook(module, args, out):
            t = (
                out
                if where == "output"
                else next((a for a in args if isinstance(a, torch.Tensor)), None)
            )
            if isinstance(t, torch.Tensor):
                values[key] = t.detach().float().cpu().numpy()

        return hook

    for key, e in result.encodings.items():
        module, where = module_of(key, e)
        if where == "weight":
            values[key] = modules[module].weight.detach().float().cpu().numpy()
        else:
            handles.append(modules[module].register_forward_hook(grab(key, where)))
    try:
        with Untouched(model, True), torch.no_grad():
            forward_batch(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return values


def _onnx_values(proto, example_inputs) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every float tensor of the exported model on ``example_inputs``, and their graph order."""
    typed = {v.name: v for v in value_infos(proto) if v.type.tensor_type.elem_type == _FLOAT}
    inputs = model_inputs(proto)
    order = [i.name for i in inputs] + [o for n in proto.graph.node for o in n.output]
    order = [n for n in order if n in typed]
    outputs = {o.name for o in proto.graph.output}
    extra = [typed[n] for n in order if n not in outputs]  # more outputs: no copy of the model
    args, kwargs = _split(example_inputs)
    batch = (
        [_numpy(a) for a in args] if kwargs is None else {k: _numpy(v) for k, v in kwargs.items()}
    )
    feed = feeds(batch if len(inputs) > 1 or kwargs is not None else batch[0], inputs)
    got = run_batch(session(proto, ["CPUExecutionProvider"], outputs=extra), order, feed)
    return dict(zip(order, (np.asarray(g) for g in got), strict=True)), order


def _numpy(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _weight_name(w: np.ndarray, initializers: dict) -> tuple[str, bool] | None:
    """Return the initializer equal to ``w`` (``False``) or to its transpose (``True``)."""
    for name, value in initializers.items():
        if value.shape == w.shape and np.array_equal(np.asarray(value, np.float32), w):
            return name, False
    if w.ndim == 2:
        for name, value in initializers.items():
            if value.shape == w.T.shape and np.array_equal(np.asarray(value, np.float32), w.T):
                return name, True
    return None


def _renamed(result, e, name: str, transposed: bool, value: np.ndarray):
    """Return weight encoding ``e`` as the exported initializer ``name`` holding ``value``."""
    if not transposed:
        return dataclasses.replace(e, name=name)
    if isinstance(result, BlockCalibration):  # blocks along the same (now first) axis
        return block_weight(name, value, 1, result.scheme, result.fmt, (result.method,))
    axis = None if e.axis is None else 1 - e.axis
    if isinstance(e, TensorEncoding):
        flip = {"min": e.min.T, "max": e.max.T, "scale": e.scale.T, "offset": e.offset.T}
        return dataclasses.replace(e, name=name, axis=axis, **flip)
    return dataclasses.replace(e, name=name, axis=axis)  # (FP8: flat scales)


def _reader(weight: str, consumers: dict):
    """Return the node that multiplies by ``weight`` (through a ``Transpose`` if one is)."""
    for node in consumers.get(weight, []):
        if node.op_type == "Transpose":
            return next(iter(consumers.get(node.output[0], [])), None)
        return node
    return None


def _activation_name(value: np.ndarray, exported: dict, order: list, node, where: str):
    """Return the exported tensor that holds ``value`` (the layer's node's where several do)."""
    tolerance = _MATCH * float(np.max(np.abs(value), initial=0.0)) + 1e-12
    same = [
        n for n in order
        if exported[n].shape == value.shape
        and float(np.max(np.abs(exported[n] - value), initial=0.0)) <= tolerance
    ]  # fmt: skip
    if not same:
        return None
    if node is not None:
        own = list(node.input[:1]) if where == "input" else list(node.output)
        for name in own:
            if name in same:
                return name
    return same[-1] if where == "input" else same[0]
