"""Quantize-dequantize pairs put into an ONNX graph: the QDQ models encanalyze builds itself.

ONNX Runtime's ``quantize_static`` builds the integer QDQ models of float32 models. The FP8
models, and the integer ones of float16 / bfloat16 models (whose scales ONNX Runtime would
store in half precision, in ``DequantizeLinear`` nodes their opset does not allow), are built
here: each weight becomes an initializer of its quantized values behind a
``DequantizeLinear``, each activation passes a ``QuantizeLinear``/``DequantizeLinear`` pair,
always in float32 with FP32 scales, between ``Cast`` nodes where the tensor is of another type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._io import model_bytes
from ._calibrate import INLINE_LIMIT, value_infos
from ._switches import switch

__all__ = [
    "Quantizer",
    "at_least_opset",
    "insert_qdq",
    "on_axis",
    "opset_of",
    "prune_initializers",
    "save_model",
    "tensor_types",
]


@dataclass(frozen=True)
class Quantizer:
    """One tensor's quantize-dequantize.

    ``scale`` (float32) and ``zero_point`` (of the element type; with ``zero_type``, its
    values written as that ONNX type) are per tensor (``axis`` ``None``, shape ``()``) or per
    channel of ``axis``; ``values``: a weight's quantized values, of the element type's NumPy
    dtype (``None``: an activation, quantized by a ``QuantizeLinear`` at run time).
    """

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None
    values: np.ndarray | None = None
    zero_type: int | None = None


def on_axis(values: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    """Return per-channel ``values`` shaped to broadcast along ``axis`` of an ``ndim``-D array.

    ``axis`` ``None``: one value, shaped to broadcast over all of it.
    """
    shape = [1] * ndim
    if axis is not None:
        shape[axis] = -1
    return np.reshape(values, shape)


def opset_of(proto) -> int:
    """Return the model's default-domain opset."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def at_least_opset(proto, opset: int, lacks: str):
    """Return ``proto`` converted to ``opset`` where it is older (``ValueError`` where it fails).

    ``lacks`` says what the older opset lacks, for the message.
    """
    from onnx import version_converter

    if opset_of(proto) >= opset:
        return proto
    try:
        return version_converter.convert_version(proto, opset)
    except Exception as err:  # noqa: BLE001 - the converter raises many kinds
        why = " ".join(str(err).split())[:200]
        raise ValueError(
            f"opset {opset_of(proto)} has {lacks} and the model could not be converted to "
            f"opset {opset} ({why})"
        ) from None


def prune_initializers(graph, new_nodes: list, new_inits: list) -> None:
    """Keep the initializers something reads, add ``new_inits``, drop inputs left without one.

    ``new_nodes`` are nodes about to be added (their inputs count as read). A graph input that
    named a dropped initializer (older models list initializers as inputs) goes too, or it
    would become an input to feed.
    """
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    used |= {i for n in new_nodes for i in n.input}
    dropped = {t.name for t in graph.initializer if t.name not in used}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)


def tensor_types(proto) -> dict[str, int]:
    """Return the ONNX element type of the main graph's tensors.

    Each initializer's; each tensor's too where the model's inputs or initializers are not
    all float32 (what matters there: where a ``Cast`` is needed).
    """
    from onnx import TensorProto

    graph = proto.graph
    types = {t.name: t.data_type for t in graph.initializer}
    if any(t != TensorProto.FLOAT for t in types.values()) or any(
        i.type.tensor_type.elem_type != TensorProto.FLOAT for i in graph.input
    ):  # a float16 / bfloat16 model: its activations' types too
        types |= {vi.name: vi.type.tensor_type.elem_type for vi in value_infos(proto)}
    return types


def save_model(proto, path) -> None:
    """Save ``proto`` at ``path`` (with a ``.data`` sidecar for models over 1 GiB)."""
    import onnx

    large = model_bytes(proto) > INLINE_LIMIT
    location = f"{path.name}.data"
    onnx.save_model(proto, str(path), save_as_external_data=large, location=location)


def insert_qdq(
    proto,
    quantizers: dict,
    tag: str,
    *,
    saturate: bool = False,
    switches: bool = False,
    outputs: bool = False,
) -> None:
    """Put each of ``quantizers`` (by tensor name) between its tensor and the main graph's readers.

    New names are ``NAME_{tag}...``. A weight (an initializer with ``values``) is replaced by
    its values read through ``DequantizeLinear``; an activation passes a ``QuantizeLinear``
    (``saturate``: FP8's attribute) and ``DequantizeLinear`` pair that all its readers in the
    main graph read; a tensor of another type than float32 is cast to float32 before the pair
    and back after it. ``switches``: each tensor also gets a boolean graph input ``NAME::on``
    that selects, by ``Where``, its dequantized value or the float one (kept). ``outputs``: a
    graph output is the dequantized value too (as in ONNX Runtime's QDQ models), not only
    what its readers read.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    inits = {t.name for t in graph.initializer}
    types = tensor_types(proto)
    finals = {o.name for o in graph.output} if outputs else set()
    producer = {o: node for node in graph.node for o in node.output}
    renamed, new_nodes, new_inits = {}, [], []
    saturated = {"saturate": 1} if saturate else {}
    for name, q in quantizers.items():
        s_name, z_name = f"{name}_{tag}_scale", f"{name}_{tag}_zero_point"
        dq, q_name = f"{name}_{tag}_dq", f"{name}_{tag}"
        scale = np.asarray(q.scale, np.float32)
        new_inits.append(helper.make_tensor(s_name, TensorProto.FLOAT, scale.shape, scale.ravel()))
        zero = np.asarray(q.zero_point)
        if q.zero_type is None:
            new_inits.append(numpy_helper.from_array(zero, z_name))
        else:
            new_inits.append(helper.make_tensor(z_name, q.zero_type, zero.shape, zero.ravel()))
        axis = {} if q.axis is None else {"axis": q.axis}
        if q.values is not None and name in inits:
            new_inits.append(numpy_helper.from_array(q.values, q_name))
            pair = [helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq], **axis)]
            new_nodes.append((None, pair))
        elif q.values is None:
            x, pair = name, []
            if types.get(name, TensorProto.FLOAT) != TensorProto.FLOAT:  # in float32, exactly
                x = f"{name}_{tag}_in"
                pair.append(helper.make_node("Cast", [name], [x], to=TensorProto.FLOAT))
            pair += [
                helper.make_node(
                    "QuantizeLinear", [x, s_name, z_name], [q_name], **axis, **saturated
                ),
                helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq], **axis),
            ]
            new_nodes.append((name, pair))
        else:
            continue
        kind = types.get(name, TensorProto.FLOAT)
        if kind != TensorProto.FLOAT:  # back to the tensor's own type
            new_nodes[-1][1].append(helper.make_node("Cast", [dq], [f"{dq}_cast"], to=kind))
            dq = f"{dq}_cast"
        if switches:
            where, dq = switch(graph, name, dq)
            new_nodes[-1][1].append(where)
        renamed[name] = dq
        if name in finals and name in producer:  # the output itself is the dequantized value
            source, chain = new_nodes[-1]
            pre = f"{name}_{tag}_float"
            outs = producer[name].output
            outs[list(outs).index(name)] = pre
            chain[0].input[0] = pre
            chain[-1].output[0] = renamed[name] = name
            new_nodes[-1] = (pre, chain)
    for node in graph.node:
        for i, inp in enumerate(node.input):
            if inp in renamed:
                node.input[i] = renamed[inp]
    prune_initializers(graph, [n for _, nodes in new_nodes for n in nodes], new_inits)
    _insert_in_order(graph, new_nodes)


def _insert_in_order(graph, new_nodes: list) -> None:
    """Add ``(source, nodes)`` pairs so that the graph stays topologically sorted.

    Nodes without a source (the weights' ``DequantizeLinear``) and those of graph inputs go
    first; an activation's pair right after the node producing it.
    """
    produced_by = {o: k for k, node in enumerate(graph.node) for o in node.output}
    first, after = [], {}
    for source, nodes in new_nodes:
        if source in produced_by:
            after.setdefault(produced_by[source], []).extend(nodes)
        else:
            first.extend(nodes)
    ordered = list(first)
    for k, node in enumerate(graph.node):
        ordered.append(node)
        ordered.extend(after.get(k, []))
    del graph.node[:]
    graph.node.extend(ordered)
