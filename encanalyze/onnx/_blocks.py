"""MX, NVFP4 and INT4-group weights of ONNX models, and their weight-only block QDQ models.

Each weight of a quantized operator (Conv, ConvTranspose, Gemm, MatMul) is split into blocks
along its reduction axis (blocks of 32 for MX, 16 for NVFP4, 128 for INT4 groups with FP32
scales; a Conv weight ``(O, I, kh, kw)``
as the matrix ``(O, I * kh * kw)`` it multiplies by; the last block of an axis that does not
split into whole blocks is shorter, as ONNX's blocked ``DequantizeLinear`` allows), quantized by
:mod:`encanalyze.formats` with each method (``minmax``: the references' amax scales;
``mse``: the least-error ones), and stored in the QDQ model behind a blocked
``DequantizeLinear`` (opset 21). Activations stay in floating point: MX and NVFP4 activations
are quantized block by block at run time, with no scale to calibrate ahead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from .. import formats
from .._calibration import Progress
from .._io import load_model, own_model
from .._report import sqnr_db
from .._report_data import QuantizerView, scaled_range
from ._calibrate import QUANTIZABLE_OPS, chosen_weights
from ._qdq import calibrated_on, constants_to_initializers
from ._qdq_graph import at_least_opset, prune_initializers
from ._switches import SwitchedModel, switch

__all__ = [
    "BLOCK_METHODS",
    "BLOCK_OPSET",
    "BlockCalibration",
    "BlockSwitches",
    "BlockWeight",
    "block_qdq_model",
    "block_weight",
    "dequantized",
    "calibrate_blocks",
    "reduction_axis",
]

BLOCK_OPSET = 21
"""The first opset whose ``DequantizeLinear`` takes a ``block_size``."""

BLOCK_METHODS = formats.BLOCK_METHODS
"""The block formats' methods (:data:`encanalyze.formats.BLOCK_METHODS`)."""

SCHEMES = tuple(formats.BLOCK_SIZES)

BLOCK_SIZES = formats.BLOCK_SIZES
"""Each scheme's block size (:data:`encanalyze.formats.BLOCK_SIZES`)."""


@dataclasses.dataclass(frozen=True)
class BlockWeight:
    """One weight in blocks along :attr:`axis` of :attr:`view`, by method.

    ``view``: the shape the blocks are laid on (the weight's own, or a Conv weight's
    ``(O, I * kh * kw)``); ``elements[m]``: the element values (float32, of ``view``);
    ``scales[m]``: each block's scale (float32, ``view`` with ``axis`` divided by the block
    size, rounded up; MX: ``2**(e - 127)``, NVFP4: tensor scale times the E4M3 block scale);
    ``sqnr_db[m]``: the weight's own quantize-dequantize; ``export[m]``:
    :func:`encanalyze.formats.to_json`'s layout with ``view`` (the weight's shape, reshaped to
    ``view``, holds the blocks); ``shape``: the weight's own shape.
    """

    name: str
    axis: int
    view: tuple
    elements: dict
    scales: dict
    sqnr_db: dict
    export: dict
    shape: tuple = ()


@dataclasses.dataclass(frozen=True)
class BlockCalibration:
    """What :func:`calibrate_blocks` found: the weights by name and what it left out.

    ``method`` is the one in use (:meth:`with_method` switches it).
    """

    scheme: str
    fmt: formats.ElementFormat
    block_size: int
    weights: dict
    unquantized: dict
    method: str = "mse"

    @property
    def encodings(self) -> dict:
        """The quantized tensors by name: :attr:`weights` (activations stay in float)."""
        return self.weights

    @property
    def branches(self) -> dict:
        """The ``If`` branches inlined: none (the QDQ model has the main graph's weights)."""
        return {}

    def quantizer_views(self) -> list[QuantizerView]:
        """Return each weight as the report shows it (:class:`QuantizerView`).

        A method's range is ``+-`` its largest block scale times the element format's largest
        value; its SQNR the weight's own quantize-dequantize.
        """
        out = []
        for name, w in self.weights.items():
            rows = {m: scaled_range(s, self.fmt, w.sqnr_db[m]) for m, s in w.scales.items()}
            view = "" if tuple(w.view) == tuple(w.shape) else f" of {'x'.join(map(str, w.view))}"
            layout = f"blocks of {self.block_size} (axis {w.axis}{view})"
            out.append(QuantizerView(name, "param", layout, self.method, rows))
        return out

    def with_method(self, method: str) -> BlockCalibration:
        """Return a copy whose weights use ``method``."""
        if method not in BLOCK_METHODS:
            raise ValueError(f"method must be one of {BLOCK_METHODS}, got {method!r}")
        return dataclasses.replace(self, method=method)


def reduction_axis(channel_axis: int, ndim: int) -> int:
    """Return the axis a weight sums over, from its output-channel axis.

    MatMul's and Gemm's ``(K, N)`` weights (channels last) reduce over the axis before the
    last; Conv's ``(O, I, ...)`` over axis 1, ConvTranspose's ``(I, O, ...)`` and a transposed
    Gemm's ``(N, K)`` over the other of the first two.
    """
    if channel_axis == ndim - 1:
        return ndim - 2
    return 1 if channel_axis == 0 else 0


def calibrate_blocks(
    model,
    scheme: str,
    fmt: formats.ElementFormat,
    *,
    methods=BLOCK_METHODS,
    op_types=QUANTIZABLE_OPS,
    tensors: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
) -> BlockCalibration:
    """Quantize an ONNX model's weights in MX, NVFP4 or INT4-group blocks, by each method.

    The weights of ``op_types`` nodes (``tensors``: a predicate on their names), in blocks
    along their reduction axis (a Conv weight as its ``(O, I * kh * kw)`` matrix; a last
    partial block zero-padded); a weight that is no operator's weight input or that holds a
    value that is not finite is left in :attr:`~BlockCalibration.unquantized` with the
    reason. NVFP4 weights get two-level scaling (their own FP32 tensor scale). The method in
    use is ``mse`` where ``methods`` has it.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "nvfp4" and fmt is not formats.E2M1:
        raise ValueError(f"NVFP4 elements are {formats.E2M1.name}, not {fmt.name}")
    if (scheme == "int_groups") != isinstance(fmt, formats.IntFormat):
        raise ValueError(f"the {scheme} scheme does not take {fmt.name} elements")
    bad = [m for m in methods if m not in BLOCK_METHODS]
    if bad or not methods:
        raise ValueError(f"methods must be some of {BLOCK_METHODS}, got {list(methods)}")
    size = BLOCK_SIZES[scheme]
    proto, _ = load_model(model)
    values, chosen = chosen_weights(proto, op_types, tensors)
    bar = progress if progress is not None else Progress(len(chosen), False)
    weights, unquantized = {}, {}
    for name, channel in chosen.items():
        bar.stage(f"weight {name}")
        w = np.asarray(values[name], np.float32)
        reason = None
        if channel is None:
            reason = "no reduction axis (not an operator's weight input)"
        elif not np.isfinite(w).all():
            reason = "it holds a value that is not finite"
        if reason is not None:
            unquantized[name] = reason
            bar.advance()
            continue
        weights[name] = block_weight(name, w, channel, scheme, fmt, methods)
        bar.advance()
    method = "mse" if "mse" in methods else methods[0]
    return BlockCalibration(scheme, fmt, size, weights, unquantized, method)


def block_weight(
    name: str, w: np.ndarray, channel: int, scheme: str, fmt, methods=BLOCK_METHODS
) -> BlockWeight:
    """Return ``w`` (float32, finite) in blocks along the axis its ``channel`` axis sums over.

    A convolution's ``(O, I, ...)`` weight (``channel`` 0, more than 2 axes) as its
    ``(O, I * kh * kw)`` matrix; blocks of :data:`BLOCK_SIZES` of ``scheme``, by each of
    ``methods``.
    """
    size = BLOCK_SIZES[scheme]
    if channel == 0 and w.ndim > 2:  # Conv: the (O, I * kh * kw) matrix
        view, axis = (w.shape[0], int(np.prod(w.shape[1:]))), 1
    else:
        view, axis = w.shape, reduction_axis(channel, w.ndim)
    blocks = _weight(name, w.reshape(view), axis, scheme, fmt, methods, size)
    return dataclasses.replace(blocks, shape=tuple(w.shape))


def dequantized(weight: BlockWeight, method: str, block_size: int) -> np.ndarray:
    """Return the weight's values in blocks by ``method`` (float32, of its own shape).

    Each element times its block's scale: what the blocked ``DequantizeLinear`` computes.
    """
    q, scale = weight.elements[method], weight.scales[method]
    scale = np.repeat(scale, block_size, axis=weight.axis)
    scale = np.take(scale, np.arange(q.shape[weight.axis]), axis=weight.axis)
    return (q * scale).astype(np.float32).reshape(weight.shape)


def _weight(name: str, w: np.ndarray, axis: int, scheme: str, fmt, methods, size: int):
    """Quantize ``w`` in blocks along ``axis`` by each method (a :class:`BlockWeight`).

    A last partial block is padded with zeros, which change no scale and quantize to zero.
    """
    k = w.shape[axis]
    moved = np.ascontiguousarray(np.moveaxis(w, axis, -1))  # blocks in memory order
    if k % size:
        moved = np.concatenate(
            [moved, np.zeros((*moved.shape[:-1], -k % size), np.float32)], axis=-1
        )
    elements, scales, sqnr, export = {}, {}, {}, {}
    for method in methods:
        enc = formats.block_encode(moved, scheme, fmt, method, block_axis=axis)
        r, d = moved.astype(np.float64), np.asarray(enc.dequantized, np.float64)
        sqnr[method] = sqnr_db(float(np.sum(r * r)), float(np.sum((r - d) ** 2)))
        elements[method] = np.moveaxis(np.asarray(enc.elements, np.float32)[..., :k], -1, axis)
        scales[method] = np.moveaxis(np.asarray(enc.scales, np.float32), -1, axis)
        export[method] = {**enc.export, "view": list(w.shape)}
    return BlockWeight(name, axis, tuple(w.shape), elements, scales, sqnr, export)


_STORAGE = {"float8_e5m2": "FLOAT8E5M2", "int8": "INT8", "int4": "INT4"}
"""The ONNX type that holds each element format's values exactly (FLOAT8E4M3FN for the rest:
every FP6 and FP4 value is an E4M3 value; MXINT8's INT8 with the scale divided by 64)."""


def block_qdq_model(
    model,
    result: BlockCalibration,
    methods: str | Mapping[str, str] | None = None,
    *,
    switches: bool = False,
):
    """Return ``model`` with ``result``'s weights in blocks (a new ModelProto, opset 21+).

    Each weight becomes an initializer of its element values (of its block view) behind a
    ``DequantizeLinear`` with ``axis`` its reduction axis, ``block_size`` and one FP32 scale
    per block (a ``Reshape`` back to its shape after a Conv weight's); its consumers read the
    dequantized weight. ``methods``: one method for every weight, or one per weight name
    (others: ``result.method``; ``None``: ``result.method`` for all); a float16 or bfloat16
    weight is dequantized in float32 and cast to its type. ``switches``: each
    weight ``NAME`` also gets a boolean input ``NAME::on`` selecting, by ``Where``, its blocks
    or its float values (kept), for :class:`BlockSwitches`. FP4 and FP6 values are held as
    ``FLOAT8E4M3FN`` (exactly: ONNX Runtime 1.32's CPU provider has no ``FLOAT4E2M1``
    kernel), E5M2 as ``FLOAT8E5M2``, MXINT8 as ``INT8`` with the scale divided by 64, INT4
    groups as ``INT4`` (ONNX Runtime fuses ``DequantizeLinear`` and ``MatMul`` into its
    ``MatMulNBits``, whose default accuracy level computes with int8 activations).
    ``ValueError`` where an older model cannot be converted to opset 21.
    """
    from onnx import TensorProto, helper, numpy_helper

    named = [methods] if isinstance(methods, str) else list(dict(methods or {}).values())
    for method in named:
        if method not in BLOCK_METHODS:
            raise ValueError(f"unknown block method {method!r}; choose from {BLOCK_METHODS}")
    proto = own_model(load_model(model)[0])
    constants_to_initializers(proto)
    calibrated_on(proto, result.weights)
    proto = at_least_opset(proto, BLOCK_OPSET, "no blocked DequantizeLinear")
    storage = _STORAGE.get(result.fmt.name, "FLOAT8E4M3FN")
    np_type = helper.tensor_dtype_to_np_dtype(getattr(TensorProto, storage))  # holds q exactly
    graph = proto.graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    types = {t.name: t.data_type for t in graph.initializer}
    renamed, new_nodes, new_inits = {}, [], []
    for name, wt in result.weights.items():
        if name not in shapes:
            continue
        by_name = {} if methods is None or isinstance(methods, str) else methods
        method = methods if isinstance(methods, str) else by_name.get(name, result.method)
        q, scale = wt.elements[method], wt.scales[method]
        if result.fmt is formats.INT8:  # MXINT8's k / 64 values as integers
            q, scale = np.rint(q * 64).astype(np.int8), scale / np.float32(64)
        q_name, s_name, dq = f"{name}_blocks", f"{name}_block_scale", f"{name}_block_dq"
        new_inits.append(numpy_helper.from_array(q.astype(np_type), q_name))
        new_inits.append(numpy_helper.from_array(np.asarray(scale, np.float32), s_name))
        flat = f"{name}_block_view" if wt.view != shapes[name] else dq
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [q_name, s_name],
                [flat],
                axis=wt.axis,
                block_size=result.block_size,
            )
        )
        if flat != dq:
            shape = np.asarray(shapes[name], np.int64)
            new_inits.append(
                helper.make_tensor(f"{name}_shape", TensorProto.INT64, [shape.size], shape)
            )
            new_nodes.append(helper.make_node("Reshape", [flat, f"{name}_shape"], [dq]))
        if types[name] != TensorProto.FLOAT:  # a float16 / bfloat16 weight: its own type
            new_nodes.append(helper.make_node("Cast", [dq], [f"{dq}_cast"], to=types[name]))
            dq = f"{dq}_cast"
        if switches:
            where, dq = switch(graph, name, dq)
            new_nodes.append(where)
        renamed[name] = dq
    for node in graph.node:
        for i, inp in enumerate(node.input):
            if inp in renamed:
                node.input[i] = renamed[inp]
    prune_initializers(graph, new_nodes, new_inits)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)
    return proto


class BlockSwitches(SwitchedModel):
    """One ONNX Runtime session of the block QDQ model with every weight switchable.

    The model of :func:`block_qdq_model` with ``switches`` (``result.method``'s blocks), for
    :func:`encanalyze.onnx._sensitivity.sensitivity`.
    """

    def __init__(self, model, result: BlockCalibration, *, op_types=None, providers=None):
        del op_types  # the QDQ model quantizes every weight of ``result``
        proto = block_qdq_model(model, result, switches=True)
        super().__init__(proto, result.weights, providers)
