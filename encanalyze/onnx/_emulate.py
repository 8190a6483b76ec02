"""Quantize-dequantize emulated in one float model whose encodings are inputs.

Choosing encodings by the model's output needs the quantized model's output for many
candidates. Building one QDQ model per candidate with ONNX Runtime's ``quantize_static`` costs a
model build and a session each; the emulation builds one session: every tensor that the QDQ
model quantizes (the encoded inputs, outputs and weights of the quantized nodes) passes through
``Div, Round, Sub, Clip, Add, Mul``, i.e. ``(clip(round(x / scale) - offset, 0, n) + offset) x
scale`` (rounding half to even, as ``QuantizeLinear``), with ``scale`` and ``offset`` fed at
run time. A candidate is then one feed, and any mix of methods per tensor costs no new session.

It differs from the QDQ model ONNX Runtime builds only where that model computes in integers:
its biases are rounded to ``input scale x weight scale`` and its fused kernels requantize. The
QDQ model itself stays the judge of what is reported.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .._calibration import CalibrationResult, TensorEncoding
from .._io import FLOAT_TYPES, in_memory, load_model, without_large_initializers
from ._branches import inline_branches
from ._calibrate import (
    QUANTIZABLE_OPS,
    SHARED_BYTES,
    model_inputs,
    value_infos,
)
from ._qdq import constants_to_initializers, quantized_tensors
from ._qdq_graph import opset_of
from ._switches import QuantizerSession

__all__ = ["Emulator", "fake_quant"]

_ROUND_OPSET = 11  # Round, and Clip with min and max as inputs
_HALF = {10: 1, 16: 1}  # onnx.TensorProto FLOAT16, BFLOAT16: computed in FLOAT


class Emulator(QuantizerSession):
    """One ONNX Runtime session of ``model`` with each of ``result``'s tensors fake-quantized.

    The tensors are those the QDQ model of ``result`` quantizes: inputs (biases left out) and
    outputs of the main graph's ``op_types`` nodes that have an encoding, of nodes all of whose
    tensors have one (ONNX Runtime leaves the others in floating point). :meth:`feed` turns
    encodings into the inputs that set them, :meth:`outputs` runs batches with them and returns
    ``outputs`` (default: the model's outputs; any tensor of the main graph). ``fixed``:
    encodings of initializers that every run shares (a choice with one weight option): those
    are quantized once, in the graph's initializers (computed as the graph's chain does, bit
    for bit), instead of on every run, and :meth:`feed` leaves them out (always quantized).
    """

    def __init__(
        self,
        model,
        result: CalibrationResult,
        *,
        op_types=QUANTIZABLE_OPS,
        providers=None,
        outputs: list[str] | None = None,
        fixed: Mapping[str, TensorEncoding] | None = None,
    ):
        from onnx import TensorProto, numpy_helper, version_converter

        source, _ = load_model(model)
        # the graph without its large initializers' data (stubs); one array of each is made
        # when the session opens, the only copy besides the caller's model
        proto, taken = without_large_initializers(source, SHARED_BYTES, for_session=False)
        proto = inline_branches(proto, result.branches)
        constants_to_initializers(proto)
        if opset_of(proto) < _ROUND_OPSET:
            proto = version_converter.convert_version(proto, _ROUND_OPSET)
        quantized = quantized_tensors(proto, result, op_types)
        self.inputs = model_inputs(proto)
        self.names = [o.name for o in proto.graph.output] if outputs is None else list(outputs)
        typed = {vi.name: vi for vi in value_infos(proto)}
        have = {o.name for o in proto.graph.output}
        proto.graph.output.extend(typed[n] for n in self.names if n not in have)
        elem, self._ndim = _types_and_ranks(proto, typed)
        elem = {n: elem[n] for n in quantized if n in elem}
        steps = 2**result.bits - 1
        baked = {  # quantized once, in the initializer: no chain per run
            n: e for n, e in (fixed or {}).items() if elem.get(n) == TensorProto.FLOAT
        }
        initializers = {i.name for i in proto.graph.initializer}
        for init in proto.graph.initializer:
            if init.name in baked and not in_memory(init):  # a small one, in the graph
                value = fake_quant(numpy_helper.to_array(init), baked[init.name], steps)
                init.CopyFrom(numpy_helper.from_array(value, init.name))
        elem = {n: t for n, t in elem.items() if n not in baked}
        # name -> the element type of its scale and offset: float32 for float16 / bfloat16
        # tensors, quantized in float32 between Casts as their QDQ model does
        self.tensors = {n: _HALF.get(t, t) for n, t in elem.items()}
        fed = {i.name for i in self.inputs}
        _insert_fake_quant(proto, elem, fed, steps, self._ndim)
        arrays = {}
        for init in taken:  # the stubs' data, by the names the graph now gives them
            value = numpy_helper.to_array(init)
            if init.name in baked:
                value = fake_quant(value, baked[init.name], steps)
            chained = init.name in elem and init.name in initializers
            arrays[f"{init.name}::float" if chained else init.name] = value
        del source, taken
        self._open(proto, providers, arrays=arrays)

    def feed(
        self, encodings: dict[str, TensorEncoding], quantized: set[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Return the inputs that set each emulated tensor's ``scale`` and ``offset``.

        ``quantized``: only these tensors are quantized, the others pass in floating point
        (``None``: all of them).
        """
        from onnx import helper

        out = {}
        for name, elem in self.tensors.items():
            out[f"{name}::on"] = np.asarray(quantized is None or name in quantized)
            dtype = helper.tensor_dtype_to_np_dtype(elem)
            scale, offset = _scale_offset(encodings[name], self._ndim.get(name, 0), dtype)
            out[f"{name}::scale"], out[f"{name}::offset"] = scale, offset
        return out


def _scale_offset(e: TensorEncoding, ndim: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Return an encoding's scale and offset as ``dtype`` arrays that broadcast on its axis."""
    shape = [1] * ndim
    scale = np.asarray(e.scale, dtype=np.float64).reshape(-1)
    offset = np.asarray(e.offset, dtype=np.float64).reshape(-1)
    if e.axis is not None and scale.size > 1:
        shape[e.axis] = scale.size
    else:
        scale, offset = scale[:1], offset[:1]
    return scale.astype(dtype).reshape(shape), offset.astype(dtype).reshape(shape)


def fake_quant(x: np.ndarray, e: TensorEncoding, steps: int) -> np.ndarray:
    """Return float32 ``x`` quantized and dequantized as the graph's chain computes it.

    ``Div, Round (half to even), Sub, Clip, Add, Mul``, one IEEE operation each.
    """
    scale, offset = _scale_offset(e, x.ndim, np.float32)
    q = np.round(x / scale)
    q -= offset
    np.clip(q, np.float32(0), np.float32(steps), out=q)
    q += offset
    q *= scale
    return q


def _types_and_ranks(proto, typed: dict) -> tuple[dict[str, int], dict[str, int]]:
    """Each float tensor's element type, and each tensor's rank where it is known."""
    import onnx

    floats = {getattr(onnx.TensorProto, t) for t in FLOAT_TYPES}
    elem = {t.name: t.data_type for t in proto.graph.initializer}
    ranks = {t.name: len(t.dims) for t in proto.graph.initializer}
    for name, vi in typed.items():
        elem.setdefault(name, vi.type.tensor_type.elem_type)
        if vi.type.tensor_type.HasField("shape"):
            ranks.setdefault(name, len(vi.type.tensor_type.shape.dim))
    return {n: t for n, t in elem.items() if t in floats}, ranks


def _insert_fake_quant(proto, tensors: dict[str, int], fed: set[str], steps: int, ranks) -> None:
    """Put ``fake_quant(x)`` between each tensor and its readers; scale, offset as inputs.

    The tensor's source is renamed ``NAME::float`` (a node output or an initializer) and the
    chain ends in ``NAME``, so readers and graph outputs need no change; a graph input keeps its
    name and its readers read ``NAME::fq``. A boolean input ``NAME::on`` selects the quantized
    value or the float one (``Where``), so that one session serves any subset of quantizers.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    nodes = []
    renamed_inputs = {}
    for name, elem in tensors.items():
        compute = _HALF.get(elem, elem)
        dtype = helper.tensor_dtype_to_np_dtype(compute)
        source, end = f"{name}::float", name
        if name in fed:
            source, end = name, f"{name}::fq"
            renamed_inputs[name] = end
        s, o, on = f"{name}::scale", f"{name}::offset", f"{name}::on"
        rank = ranks.get(name, 0)
        for input_name in (s, o):
            graph.input.append(helper.make_tensor_value_info(input_name, compute, [None] * rank))
        graph.input.append(helper.make_tensor_value_info(on, TensorProto.BOOL, []))
        zero, top = f"{name}::zero", f"{name}::steps"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.zeros((), dtype), zero),
                numpy_helper.from_array(np.asarray(steps, dtype), top),
            ]
        )
        t = [f"{name}::fq{i}" for i in range(6)]
        x, chain = source, []
        if compute != elem:  # in float32 between Casts, as the QDQ model
            x, back = f"{name}::fq_in", f"{name}::fq_out"
            chain.append(helper.make_node("Cast", [source], [x], to=compute))
        chain += [
            helper.make_node("Div", [x, s], [t[0]]),
            helper.make_node("Round", [t[0]], [t[1]]),
            helper.make_node("Sub", [t[1], o], [t[2]]),
            helper.make_node("Clip", [t[2], zero, top], [t[3]]),
            helper.make_node("Add", [t[3], o], [t[4]]),
            helper.make_node("Mul", [t[4], s], [t[5]]),
        ]
        if compute != elem:
            chain.append(helper.make_node("Cast", [t[5]], [back], to=elem))
            t[5] = back
        chain.append(helper.make_node("Where", [on, t[5], source], [end]))
        nodes.append((name, chain))
    sources = {name for name in tensors if name not in fed}
    for init in graph.initializer:
        if init.name in sources:
            init.name = f"{init.name}::float"
    for node in graph.node:
        for i, out in enumerate(node.output):
            if out in sources:
                node.output[i] = f"{out}::float"
        for i, inp in enumerate(node.input):
            if inp in renamed_inputs:
                node.input[i] = renamed_inputs[inp]
    # each chain right after its source keeps the graph topologically sorted
    chains = dict(nodes)
    ordered, placed = [], set()
    initializers = {i.name for i in graph.initializer}
    for name in chains:  # inputs and initializers first
        if name in fed or f"{name}::float" in initializers:
            ordered.extend(chains[name])
            placed.add(name)
    for node in graph.node:
        ordered.append(node)
        for out in node.output:
            base = out[: -len("::float")] if out.endswith("::float") else None
            if base in chains and base not in placed:
                ordered.extend(chains[base])
                placed.add(base)
    del graph.node[:]
    graph.node.extend(ordered)
