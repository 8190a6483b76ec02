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
from .._calibration import Progress, encode_activation
from .._io import float_weights, load_model, own_model
from .._report import layout_for, sqnr_db, sqnr_rank
from .._report_data import QuantizerView, per_axis, scaled_range
from .._rules.percentile import PercentileEncodingAnalyzer
from .._shapes import plan, to_rows
from ._branches import inline_branches
from ._calibrate import (
    QUANTIZABLE_OPS,
    chosen_weights,
    histograms,
    observe_activations,
)
from ._qdq import calibrated_on, compare_outputs, constants_to_initializers
from ._qdq_graph import Quantizer, at_least_opset, insert_qdq, on_axis
from ._switches import SwitchedModel

__all__ = [
    "FLOAT8_FORMATS",
    "FLOAT8_OPSET",
    "FLOAT8_SESSION",
    "Float8Calibration",
    "Float8Encoding",
    "Float8Switches",
    "activation_scales",
    "calibrate_float8",
    "float8_weight",
    "choose_float8_activations",
    "float8_qdq_model",
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

FLOAT8_FORMATS = {n: f.onnx_type for n, f in formats.NUMBER_FORMATS.items() if f.onnx_type}
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

    def quantizer_views(self) -> list[QuantizerView]:
        """Return each tensor as the report shows it (:class:`QuantizerView`).

        A method's range is ``+-`` its largest scale times the format's largest value; a
        weight's SQNR its own quantize-dequantize.
        """
        out = []
        for name, e in self.encodings.items():
            rows = {
                m: scaled_range(scale, self.fmt, None if e.sqnr_db is None else e.sqnr_db[m])
                for m, scale in e.scales.items()
            }
            layout = per_axis(e.axis, int(np.size(e.scale)))
            out.append(QuantizerView(name, e.kind, layout, e.method, rows))
        return out

    def with_activations(self, method: str) -> Float8Calibration:
        """Return a copy whose activations use ``method``."""
        encodings = {
            n: dataclasses.replace(e, method=method) if e.kind == "activation" else e
            for n, e in self.encodings.items()
        }
        return dataclasses.replace(self, encodings=encodings)


def activation_scales(fmt, stats, methods, percentile=99.99, gamma=3.0) -> dict:
    """Return each method's scales (float32, flat) from ``stats`` (a histogram)."""
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
    group=None,
    sample_axes=None,
) -> Float8Calibration:
    """Calibrate an ONNX model's weights and activations for an FP8 format.

    The same weights and activations as :func:`encanalyze.onnx.calibrate` (``op_types``
    nodes, ``tensors`` predicate, ``If`` branches inlined); each gets the scales of every
    method of ``methods`` (:data:`encanalyze.formats.FLOAT_METHODS`) from one histogram of
    ``num_bins`` bins. Weights keep their best-SQNR method, activations the first of
    ``methods`` (:meth:`Float8Calibration.with_activations` switches them). ``statistics``, a
    dict, receives what the analysis report shows (each activation's histogram and per-batch
    range, as :func:`encanalyze.onnx.calibrate`'s). ``group``: a ``torch.distributed`` process
    group over which the activations' statistics are all-reduced, as
    :func:`encanalyze.onnx.calibrate`'s.
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
        found = float8_weight(name, w, axis, fmt, methods, num_bins, percentile, gamma)
        if isinstance(found, str):
            unquantized[name] = found
        else:
            encodings[name] = found
        bar.advance()
    count, branches = 0, {}
    if batches is not None:
        options = {"percentile": {"num_bins": num_bins, "percentile": 100.0}}
        ranges = None if statistics is None else statistics.setdefault("ranges", {})
        analyzers, count, branches = observe_activations(
            proto, values, batches, options, op_types, providers, bar, tensors, None, ranges,
            sample_axes, group,
        )  # fmt: skip
        if statistics is not None:
            statistics["histograms"] = histograms(analyzers)
        for name, (made, _) in analyzers.items():
            # the integer job's rule: no batch, never a finite value or an infinite range
            # leave the tensor in floating point, with the reason
            found = encode_activation(name, made["percentile"], 255, False, None, "percentile")
            if isinstance(found, str):
                unquantized[name] = found
                continue
            stats = made["percentile"].get_stats()
            scales = activation_scales(fmt, stats, methods, percentile, gamma)
            encodings[name] = Float8Encoding(name, "activation", None, scales, methods[0])
    return Float8Calibration(fmt, encodings, unquantized, branches, count)


def float8_weight(
    name: str,
    w: np.ndarray,
    axis: int | None,
    fmt: formats.FloatFormat,
    methods: tuple = formats.FLOAT_METHODS,
    num_bins: int = 2048,
    percentile: float = 99.99,
    gamma: float = 3.0,
) -> Float8Encoding | str:
    """Return a weight's float-format scales by each method (per channel of ``axis``).

    The search methods are never worse than amax on the weight itself; the method of best
    SQNR is the one in use. A channel without a finite value: the reason, instead.
    """
    methods = tuple(methods)
    layout = layout_for(w.shape, axis)
    rows = to_rows(np, w, plan(w.shape, layout.shape))
    if not np.isfinite(rows).any(axis=1).all():
        return "a channel without a finite value"
    stats = PercentileEncodingAnalyzer(layout.shape, num_bins).update_stats(w)
    scales = activation_scales(fmt, stats, methods, percentile, gamma)
    for m in set(methods) & set(formats.SEARCH_METHODS):  # never worse than amax on it
        scale = formats.no_worse_than_amax(rows, fmt, scales[m][:, None], axis=1)
        scales[m] = np.asarray(scale, np.float32).reshape(-1)
    sqnr = {
        m: _sqnr(rows, formats.quantize_scaled(rows, fmt, scale=s[:, None]))
        for m, s in scales.items()
    }
    best = max(sqnr, key=lambda m: (sqnr[m], -methods.index(m)))
    return Float8Encoding(name, "param", layout.axis, scales, best, sqnr)


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
    from onnx import TensorProto, helper

    proto = inline_branches(own_model(model), result.branches)
    constants_to_initializers(proto)
    calibrated_on(proto, result.encodings)
    proto = at_least_opset(proto, FLOAT8_OPSET, "no FLOAT8 QuantizeLinear")
    ftype = getattr(TensorProto, FLOAT8_FORMATS[result.fmt.name])
    fp8 = helper.tensor_dtype_to_np_dtype(ftype)  # holds the quantized values exactly
    inits = {t.name for t in proto.graph.initializer}
    values = float_weights(proto)
    quantizers = {}
    for name, e in result.encodings.items():
        scale = e.scales[(methods or {}).get(name, e.method)].astype(np.float32)
        if e.axis is None:
            scale = scale.reshape(())
        q = None
        if e.kind == "param" and name in inits:
            w = np.asarray(values[name], np.float32)
            q = formats.quantize(w / on_axis(scale, w.ndim, e.axis), result.fmt)
            q = np.asarray(q).astype(fp8)
        elif e.kind != "activation":
            continue
        zero = np.zeros(scale.shape)
        quantizers[name] = Quantizer(scale, zero, e.axis if q is not None else None, q, ftype)
    insert_qdq(proto, quantizers, "fp8", saturate=True, switches=switches)
    return proto


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
    model,
    result: Float8Calibration,
    batches,
    methods=formats.FLOAT_METHODS,
    providers=None,
    sample_axes=None,
) -> tuple[str, dict, object]:
    """Return the activation method whose FP8 QDQ model's output is closest to the float one.

    Each of ``methods`` builds the QDQ model (:func:`float8_qdq_model`), run by ONNX Runtime
    (with :data:`FLOAT8_SESSION`) on ``batches`` (a list: held-out data), scored by the mean
    of its float outputs' SQNR (integer and bool outputs only where none is float, by their
    agreement: :class:`~encanalyze._output_errors.OutputErrors`); returns
    ``(method, {method: OutputErrors}, its model)``. The first of the best wins a tie.
    ``sample_axes``: each input's sample axis (:func:`~._qdq.output_pieces`).
    """
    scores, models = {}, {}
    for method in methods:
        proto = float8_qdq_model(model, result.with_activations(method))
        scores[method] = compare_outputs(
            model, proto, batches, providers, FLOAT8_SESSION, sample_axes
        )
        models[method] = proto
    best = max(methods, key=lambda m: sqnr_rank(scores[m].score()))
    return best, scores, models[best]
