"""FP8 calibration of ONNX models and their FP8 QDQ models (FLOAT8E4M3FN / FLOAT8E5M2).

Weights get an FP32 scale per output channel (or per tensor) by each float method on their
own values, each keeping the method of best SQNR; activations one histogram per tensor,
streamed from ONNX Runtime as the integer job's are, and a scale per method from it. The QDQ
model (opset 19: ``QuantizeLinear`` with a FLOAT8 zero point, saturating) stores the weights
as FLOAT8 initializers behind ``DequantizeLinear`` and quantizes each calibrated activation
with a ``QuantizeLinear``/``DequantizeLinear`` pair that every consumer reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from .. import formats
from .._calibration import Progress
from .._io import float_weights, load_model, model_bytes, own_model
from .._report import layout_for, sqnr_db, sqnr_rank
from .._rules.percentile import PercentileEncodingAnalyzer
from .._shapes import plan, to_rows
from ._branches import inline_branches
from ._calibrate import (
    INLINE_LIMIT,
    QUANTIZABLE_OPS,
    chosen_weights,
    histograms,
    observe_activations,
    value_infos,
)
from ._qdq import (
    calibrated_on,
    compare_outputs,
    constants_to_initializers,
    opset_of,
    prune_initializers,
)
from ._switches import SwitchedModel, switch

__all__ = [
    "FLOAT8_FORMATS",
    "FLOAT8_OPSET",
    "FLOAT8_SESSION",
    "Float8Calibration",
    "Float8Encoding",
    "Float8Switches",
    "at_least_opset",
    "calibrate_float8",
    "choose_float8_activations",
    "float8_qdq_model",
    "save_model",
]

FLOAT8_OPSET = 19
"""The first opset whose QuantizeLinear / DequantizeLinear take FLOAT8 types."""

FLOAT8_SESSION = {"graph_optimization_level": "ORT_ENABLE_BASIC"}
"""Session options FP8 QDQ models need in ONNX Runtime 1.32's CPU provider: its level-2
optimizations (``ORT_ENABLE_EXTENDED``, part of the default ``ORT_ENABLE_ALL``) remove a
``Relu`` before a FLOAT8 ``QuantizeLinear``, as if quantization clamped negative values (it
does for uint8 with zero point 0, not for FLOAT8, which is signed), and fuse FLOAT8 QDQ
patterns into integer kernels; either changes the model's output. Basic optimizations agree
with ONNX's reference evaluator."""

FLOAT8_FORMATS = {"float8_e4m3fn": "FLOAT8E4M3FN", "float8_e5m2": "FLOAT8E5M2"}
"""The float formats ONNX has as QuantizeLinear outputs, and their TensorProto type names."""


@dataclasses.dataclass(frozen=True)
class Float8Encoding:
    """One tensor's FP8 scales: ``scales`` by method (float32, one per channel of ``axis``).

    ``method`` is the one in use; ``sqnr_db`` (weights) the SQNR of each method's
    quantize-dequantize of the weight itself.
    """

    name: str
    kind: str  # "param" or "activation"
    axis: int | None
    scales: dict
    method: str
    sqnr_db: dict | None = None

    @property
    def scale(self) -> np.ndarray:
        """The scales of :attr:`method`."""
        return self.scales[self.method]


@dataclasses.dataclass(frozen=True)
class Float8Calibration:
    """What :func:`calibrate_float8` found: encodings by tensor name, and what it left out."""

    fmt: formats.FloatFormat
    encodings: dict
    unquantized: dict
    branches: dict
    num_batches: int

    def with_activations(self, method: str) -> Float8Calibration:
        """Return a copy whose activations use ``method``."""
        encodings = {
            n: dataclasses.replace(e, method=method) if e.kind == "activation" else e
            for n, e in self.encodings.items()
        }
        return dataclasses.replace(self, encodings=encodings)


def _scales(fmt, stats, methods, percentile, gamma) -> dict:
    """Each method's scales (float32, flat) from ``stats``."""
    return {
        m: np.asarray(
            formats.compute_scale(stats, fmt, m, percentile=percentile, gamma=gamma), np.float32
        ).reshape(-1)
        for m in methods
    }


def calibrate_float8(
    model,
    batches: Iterable | None = None,
    fmt: formats.FloatFormat = formats.E4M3FN,
    *,
    methods=formats.FLOAT_METHODS,
    per_channel_weights: bool = True,
    op_types=QUANTIZABLE_OPS,
    providers=None,
    num_bins: int = 2048,
    percentile: float = 99.99,
    gamma: float = 3.0,
    tensors: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
    statistics: dict | None = None,
) -> Float8Calibration:
    """Calibrate an ONNX model's weights and activations for an FP8 format.

    The same weights and activations as :func:`encanalyze.onnx.calibrate` (``op_types``
    nodes, ``tensors`` predicate, ``If`` branches inlined); each gets the scales of every
    method of ``methods`` (:data:`encanalyze.formats.FLOAT_METHODS`) from one histogram of
    ``num_bins`` bins. Weights keep their best-SQNR method, activations the first of
    ``methods`` (:meth:`Float8Calibration.with_activations` switches them). ``statistics``, a
    dict, receives what the analysis report shows (each activation's histogram and per-batch
    range, as :func:`encanalyze.onnx.calibrate`'s).
    """
    if fmt.name not in FLOAT8_FORMATS:
        raise ValueError(f"ONNX has no QuantizeLinear to {fmt.name}: use {list(FLOAT8_FORMATS)}")
    methods = tuple(methods)
    proto, _ = load_model(model)
    values, chosen = chosen_weights(proto, op_types, tensors)
    bar = progress if progress is not None else Progress(len(chosen), False)
    encodings, unquantized = {}, {}
    for name, axis in chosen.items():
        bar.stage(f"weight {name}")
        w = np.asarray(values[name], np.float32)
        axis = axis if per_channel_weights and w.ndim > 0 else None
        layout = layout_for(w.shape, axis)
        rows = to_rows(np, w, plan(w.shape, layout.shape))
        if not np.isfinite(rows).any(axis=1).all():
            unquantized[name] = "a channel without a finite value"
            bar.advance()
            continue
        stats = PercentileEncodingAnalyzer(layout.shape, num_bins).update_stats(w)
        scales = _scales(fmt, stats, methods, percentile, gamma)
        for m in set(methods) & set(formats.SEARCH_METHODS):  # never worse than amax on it
            scale = formats.no_worse_than_amax(rows, fmt, scales[m][:, None], axis=1)
            scales[m] = np.asarray(scale, np.float32).reshape(-1)
        sqnr = {
            m: _sqnr(rows, formats.quantize_scaled(rows, fmt, scale=s[:, None]))
            for m, s in scales.items()
        }
        best = max(sqnr, key=lambda m: (sqnr[m], -methods.index(m)))
        encodings[name] = Float8Encoding(name, "param", layout.axis, scales, best, sqnr)
        bar.advance()
    count, branches = 0, {}
    if batches is not None:
        options = {"percentile": {"num_bins": num_bins, "percentile": 100.0}}
        ranges = None if statistics is None else statistics.setdefault("ranges", {})
        analyzers, count, branches = observe_activations(
            proto, values, batches, options, op_types, providers, bar, tensors, None, ranges
        )
        if statistics is not None:
            statistics["histograms"] = histograms(analyzers)
        for name, (made, _) in analyzers.items():
            stats = made["percentile"].get_stats()
            if stats is None:
                unquantized[name] = "no calibration batch reached it"
                continue
            if not bool(np.all(np.isfinite(np.asarray(stats.bin_edges)))):
                unquantized[name] = "its range is not finite"
                continue
            scales = _scales(fmt, stats, methods, percentile, gamma)
            encodings[name] = Float8Encoding(name, "activation", None, scales, methods[0])
    return Float8Calibration(fmt, encodings, unquantized, branches, count)


def _sqnr(rows: np.ndarray, q: np.ndarray) -> float:

    r = np.where(np.isfinite(rows), rows, 0).astype(np.float64)
    d = np.where(np.isfinite(rows), q, 0).astype(np.float64)
    return sqnr_db(float(np.sum(r * r)), float(np.sum((r - d) ** 2)))


def float8_qdq_model(
    model,
    result: Float8Calibration,
    methods: Mapping[str, str] | None = None,
    *,
    switches: bool = False,
):
    """Return the FP8 QDQ model of ``model`` with ``result``'s encodings (a new ModelProto).

    Opset 19 or newer (older models are converted; ``ValueError`` where ONNX's converter
    cannot). Each weight becomes a FLOAT8 initializer (its values quantized by its scales,
    per channel on its axis) read through ``DequantizeLinear``; each activation passes a
    ``QuantizeLinear``/``DequantizeLinear`` pair (per tensor) that all its consumers in the main
    graph read; in a float16 or bfloat16 model, quantization runs in float32 (``Cast`` nodes
    around it), so that the FP32 scales stay exact. ``methods`` overrides the method of named
    tensors. ``switches``: each quantized tensor ``NAME`` also gets a boolean graph input
    ``NAME::on`` that selects, by ``Where``, its dequantized value or the float one (the float
    weights kept), for :class:`Float8Switches`.
    """
    from onnx import TensorProto, helper, numpy_helper

    proto = inline_branches(own_model(model), result.branches)
    constants_to_initializers(proto)
    calibrated_on(proto, result.encodings)
    proto = at_least_opset(proto, FLOAT8_OPSET, "no FLOAT8 QuantizeLinear")
    ftype = getattr(TensorProto, FLOAT8_FORMATS[result.fmt.name])
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    values = float_weights(proto)
    types = {n: t.data_type for n, t in inits.items()}
    if any(t != TensorProto.FLOAT for t in types.values()) or any(
        i.type.tensor_type.elem_type != TensorProto.FLOAT for i in graph.input
    ):  # a float16 / bfloat16 model: its activations' types too
        types |= {vi.name: vi.type.tensor_type.elem_type for vi in value_infos(proto)}
    renamed, new_nodes, new_inits = {}, [], []
    for name, e in result.encodings.items():
        scale = e.scales[(methods or {}).get(name, e.method)].astype(np.float32)
        if e.axis is None:
            scale = scale.reshape(())
        s_name, z_name, dq = f"{name}_fp8_scale", f"{name}_fp8_zero_point", f"{name}_fp8_dq"
        new_inits.append(helper.make_tensor(s_name, TensorProto.FLOAT, scale.shape, scale.ravel()))
        new_inits.append(helper.make_tensor(z_name, ftype, scale.shape, np.zeros(scale.size)))
        axis = {} if e.axis is None else {"axis": e.axis}
        if e.kind == "param" and name in inits:
            w = np.asarray(values[name], np.float32)
            shape = [1] * w.ndim
            if e.axis is not None:
                shape[e.axis] = -1
            q = formats.quantize(w / scale.reshape(shape), result.fmt)
            q_name = f"{name}_fp8"
            fp8 = helper.tensor_dtype_to_np_dtype(ftype)  # q holds FLOAT8 values exactly
            new_inits.append(numpy_helper.from_array(np.asarray(q).astype(fp8), q_name))
            pair = [helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq], **axis)]
            new_nodes.append((None, pair))
        elif e.kind == "activation":
            q_name, x = f"{name}_fp8", name
            pair = []
            if types.get(name, TensorProto.FLOAT) != TensorProto.FLOAT:  # in float32, exactly
                x = f"{name}_fp8_in"
                pair.append(helper.make_node("Cast", [name], [x], to=TensorProto.FLOAT))
            pair += [
                helper.make_node("QuantizeLinear", [x, s_name, z_name], [q_name], saturate=1),
                helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq]),
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
    for node in graph.node:
        for i, inp in enumerate(node.input):
            if inp in renamed:
                node.input[i] = renamed[inp]
    prune_initializers(graph, [n for _, nodes in new_nodes for n in nodes], new_inits)
    _insert_in_order(graph, new_nodes)
    return proto


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


class Float8Switches(SwitchedModel):
    """One ONNX Runtime session of the FP8 QDQ model with every quantizer switchable.

    The model of :func:`float8_qdq_model` with ``switches``, run with :data:`FLOAT8_SESSION`,
    for :func:`encanalyze.onnx._sensitivity.sensitivity` (``op_types``: the QDQ model
    quantizes every encoding of ``result``).
    """

    def __init__(self, model, result: Float8Calibration, *, op_types=None, providers=None):
        del op_types
        proto = float8_qdq_model(model, result, switches=True)
        super().__init__(proto, result.encodings, providers, FLOAT8_SESSION)


def choose_float8_activations(
    model, result: Float8Calibration, batches, methods=formats.FLOAT_METHODS, providers=None
) -> tuple[str, dict, object]:
    """Return the activation method whose FP8 QDQ model's output is closest to the float one.

    Each of ``methods`` builds the QDQ model (:func:`float8_qdq_model`), run by ONNX Runtime
    (with :data:`FLOAT8_SESSION`) on ``batches`` (a list: held-out data), scored by the mean
    of its float outputs' SQNR (integer and bool outputs only where none is float, by their
    agreement: :class:`~encanalyze._output_errors.OutputErrors`); returns
    ``(method, {method: OutputErrors}, its model)``. The first of the best wins a tie.
    """
    scores, models = {}, {}
    for method in methods:
        proto = float8_qdq_model(model, result.with_activations(method))
        scores[method] = compare_outputs(model, proto, batches, providers, FLOAT8_SESSION)
        models[method] = proto
    best = max(methods, key=lambda m: sqnr_rank(scores[m].score()))
    return best, scores, models[best]


def save_model(proto, path) -> None:
    """Save ``proto`` at ``path`` (with a ``.data`` sidecar for models over 1 GiB)."""
    import onnx

    large = model_bytes(proto) > INLINE_LIMIT
    location = f"{path.name}.data"
    onnx.save_model(proto, str(path), save_as_external_data=large, location=location)
