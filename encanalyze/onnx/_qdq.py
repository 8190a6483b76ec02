"""QDQ models from encanalyze's encodings, built by ONNX Runtime's own quantization tooling."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from .._calibration import CalibrationResult
from .._encoding import to_scale_offset
from .._io import (
    Outputs,
    all_graphs,
    float_weights,
    load_model,
    model_bytes,
    model_files,
    own_model,
    save_with_stub_data,
    without_large_initializers,
)
from .._output_errors import OutputErrors
from .._warnings import warn
from ._branches import inline_branches
from ._calibrate import (
    INLINE_LIMIT,
    QUANTIZABLE_OPS,
    SHARED_BYTES,
    feeds,
    is_bias,
    model_inputs,
    run_batch,
    session,
)
from ._pieces import OUTPUT_BYTES, Pieces, nbytes
from ._qdq_graph import (
    Quantizer,
    at_least_opset,
    insert_qdq,
    on_axis,
    opset_of,
    save_model,
    tensor_types,
)

__all__ = [
    "calibrated_on",
    "check_qdq",
    "compare_outputs",
    "compare_outputs_on",
    "constants_to_initializers",
    "model_outputs",
    "output_pieces",
    "output_sqnr",
    "own_qdq_model",
    "QDQ_OPSET",
    "quantized_tensors",
    "stage_qdq_model",
    "unencoded_nodes",
    "write_qdq_model",
]

QDQ_OPSET = 13
"""The first ONNX opset whose ``QuantizeLinear``/``DequantizeLinear`` take an ``axis``: models
of older opsets are converted to it for per-channel weights."""

_FLOAT = 1  # onnx.TensorProto.FLOAT
_CONSTANT_VALUES = {"value", "value_float", "value_floats"}
_QUANT_TYPES = {4: ("QInt4", "QUInt4"), 8: ("QInt8", "QUInt8"), 16: ("QInt16", "QUInt16")}


def constants_to_initializers(model) -> None:
    """Turn the main graph's ``Constant`` nodes into initializers.

    ONNX Runtime quantizes as weights only tensors that are initializers.
    """
    from onnx import helper, numpy_helper

    keep = []
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and node.output and set(attrs) & _CONSTANT_VALUES:
            if "value" in attrs:
                tensor = type(attrs["value"].t)()
                tensor.CopyFrom(attrs["value"].t)
            else:
                value = helper.get_attribute_value(next(iter(attrs.values())))
                tensor = numpy_helper.from_array(np.asarray(value, dtype=np.float32))
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def unencoded_nodes(proto, result: CalibrationResult, op_types) -> list[str]:
    """Name the main graph's ``op_types`` nodes that touch a tensor without an encoding.

    ONNX Runtime quantizes a node only with ranges for all its inputs and outputs; such nodes
    (next to an activation left in floating point, or a tensor deselected) stay in floating
    point. Unnamed nodes get unique names first.
    """
    taken = {n.name for n in proto.graph.node if n.name}
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    out = []
    for node in proto.graph.node:
        if op_types is not None and node.op_type not in op_types:
            continue
        inputs = [n for i, n in enumerate(node.input) if n and not is_bias(node, i)]
        if any(n not in result.encodings for n in (*inputs, *node.output) if n):
            out.append(node.name)
    return out


def quantized_tensors(proto, result: CalibrationResult, op_types) -> list[str]:
    """Name the tensors a QDQ model of ``result`` quantizes, in graph order.

    The inputs (biases left out) and outputs of the main graph's ``op_types`` nodes that have
    an encoding, of nodes all of whose tensors have one (:func:`unencoded_nodes`).
    """
    excluded = set(unencoded_nodes(proto, result, op_types))
    names: dict[str, None] = {}
    for node in proto.graph.node:
        if node.name in excluded or (op_types is not None and node.op_type not in op_types):
            continue
        ins = [n for i, n in enumerate(node.input) if n and not is_bias(node, i)]
        names |= {n: None for n in (*ins, *node.output) if n in result.encodings}
    return list(names)


def _overrides(result: CalibrationResult, present: set[str]) -> tuple[dict, dict]:
    """``TensorQuantOverrides`` (exact scale and zero point) and activation ranges.

    Only tensors ``present`` in the model count (an inlined ``If`` drops the other branch's
    weights).
    """
    qdq = result.onnx_qdq()["tensors"]
    overrides, ranges = {}, {}
    for name, e in result.encodings.items():
        if name not in present:
            continue
        item = qdq[name]
        zp_dtype = np.dtype(f"{'' if e.symmetric else 'u'}int{max(8, result.bits)}")
        pairs = [
            {"scale": np.array(s, np.float32), "zero_point": np.array(z, zp_dtype)}
            for s, z in zip(item["scale"], item["zero_point"], strict=True)
        ]
        if e.axis is not None:
            pairs[0]["axis"] = e.axis
        overrides[name] = pairs
        if e.kind == "activation":
            lo = np.asarray(e.min, dtype=np.float32).reshape(-1)[0]
            hi = np.asarray(e.max, dtype=np.float32).reshape(-1)[0]
            ranges[name] = (lo, hi)
    return overrides, ranges


def check_qdq(result: CalibrationResult) -> None:
    """Raise ``ValueError`` when ``result`` cannot become a QDQ model (before any work)."""
    if result.bits not in _QUANT_TYPES:
        raise ValueError(f"QDQ models take 4, 8 or 16 bits, not {result.bits}")
    if not any(e.kind == "activation" for e in result.encodings.values()):
        raise ValueError("the result holds no activation encodings: calibrate with batches")
    if any(e.kind == "activation" and e.axis is not None for e in result.encodings.values()):
        raise ValueError(
            "ONNX Runtime's QDQ models quantize activations per tensor: calibrate "
            "them without activation_axis"
        )


def calibrated_on(proto, names) -> set[str]:
    """Return the model's tensor names; ``ValueError`` where ``names`` hold none of them.

    Initializers, node outputs and graph inputs (of subgraphs too): a result whose encodings
    name none of them was calibrated on another model, and would quantize nothing. ``names``
    may be a result's encodings: where its activations name none of them (a torch result, keyed
    by module), ``ValueError`` too.
    """
    present = {t.name for g in all_graphs(proto.graph) for t in g.initializer}
    present |= {o for g in all_graphs(proto.graph) for n in g.node for o in n.output}
    present |= {i.name for i in proto.graph.input}
    if names and not present & set(names):
        raise ValueError(
            "the result's encodings name none of the model's tensors: it was calibrated on "
            "another model"
        )
    acts = [n for n, e in getattr(names, "items", dict)() if getattr(e, "kind", "") == "activation"]
    if acts and not present & set(acts):  # weights alone would match: a model without them
        hooks = [n for n in acts if n.endswith((":input", ":output"))]
        where = (
            f" ({hooks[0]!r} names a torch module's input or output, not an ONNX tensor: export "
            "the model to ONNX and calibrate that with encanalyze.onnx.calibrate)"
            if hooks
            else ""
        )
        raise ValueError(
            f"the result's activation encodings name none of the model's tensors{where}; its "
            "QDQ model would quantize no activation"
        )
    return present


def _per_tensor_weights(result: CalibrationResult) -> CalibrationResult:
    """Return ``result`` with each per-channel weight encoding joined into one per tensor."""
    num_steps = 2**result.bits - 1
    encodings = {}
    for name, e in result.encodings.items():
        if e.axis is not None:
            lo = np.min(np.asarray(e.min, np.float32), keepdims=False).reshape(1)
            hi = np.max(np.asarray(e.max, np.float32), keepdims=False).reshape(1)
            scale, offset = to_scale_offset(lo, hi, num_steps, e.symmetric)
            e = dataclasses.replace(e, min=lo, max=hi, scale=scale, offset=offset, axis=None)
        encodings[name] = e
    return dataclasses.replace(result, encodings=encodings)


def fit_opset(proto, result: CalibrationResult) -> tuple[object, CalibrationResult, str]:
    """Make per-channel weights expressible; return the model, the result and what was done.

    The model is converted to :data:`QDQ_OPSET`, or else its weights fall back to per tensor.
    """
    opset = opset_of(proto)
    if opset >= QDQ_OPSET or all(e.axis is None for e in result.encodings.values()):
        return proto, result, f"opset {opset}"
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(proto, QDQ_OPSET)
        if model_bytes(converted) <= INLINE_LIMIT:  # the converted model must load
            session(converted)
    except Exception as err:  # noqa: BLE001 - the converter raises many kinds
        why = " ".join(str(err).split())[:200]
        note = (
            f"opset {opset} has no per-channel QuantizeLinear and the model could not be "
            f"converted to opset {QDQ_OPSET} ({why}): weights quantized per tensor"
        )
        warn(note, UserWarning)
        return proto, _per_tensor_weights(result), note
    note = f"opset {opset} converted to {QDQ_OPSET} for per-channel weights"
    warn(f"QDQ model: {note}", UserWarning)
    return converted, result, note


def write_qdq_model(model, result: CalibrationResult, path, *, op_types=QUANTIZABLE_OPS) -> Path:
    """Write a QDQ model that quantizes ``model`` with ``result``'s encodings; return its path.

    ONNX Runtime's ``quantize_static`` builds the model (QDQ format, ``op_types`` nodes, per
    channel where the weights' encodings are) with encanalyze's scales and zero points as its
    per-tensor overrides and encanalyze's activation ranges as its calibration cache, so it
    runs no calibration of its own. Bit widths 4, 8 and 16; asymmetric encodings become
    unsigned types, symmetric ones signed (zero point 0), for the activations' and the weights'
    grids separately. Tensors in ``result.unquantized``
    stay in floating point; ``If`` nodes that calibration inlined (``result.branches``) are
    inlined here too, so the QDQ model serves the branch the data took. A model of an opset
    before 13 (no per-channel ``DequantizeLinear``)
    is converted to opset 13, or, where it cannot be, its weights are quantized per tensor (a
    ``UserWarning`` says which). The model, and its ``.data`` sidecar for models over 1 GiB, are
    written in a temporary folder beside ``path`` and moved into place only when complete: a
    failure leaves the previous file as it was. Needs onnxruntime with
    ``calibration_cache_path`` (1.32 or newer).
    """
    with Outputs(model_files(model)) as out:  # stage_qdq_model checks the result first
        staged = out.file(path, "QDQ model", sidecar=True)
        stage_qdq_model(model, result, staged, op_types=op_types)
        out.commit()
    return Path(path)


def stage_qdq_model(
    model, result: CalibrationResult, path: Path, *, op_types=QUANTIZABLE_OPS
) -> tuple[Path, str]:
    """Write the QDQ model at ``path`` (a staging file); return it and what the opset got."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as quantize
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    if "calibration_cache_path" not in inspect.signature(quantize).parameters:
        raise ImportError("write_qdq_model needs onnxruntime 1.32 or newer")
    check_qdq(result)
    signed, unsigned = (getattr(QuantType, t) for t in _QUANT_TYPES[result.bits])
    act_type = signed if result.symmetric else unsigned
    weight_type = signed if result.weights_symmetric else unsigned
    source, _ = load_model(model)
    # the model without its large initializers' data (stubs): written from the caller's model
    # one tensor at a time, never copied whole; opset conversions and the float16 path read
    # the data and work on a copy
    proto, taken = without_large_initializers(source, SHARED_BYTES, for_session=False)
    names, types = quantized_tensors(proto, result, op_types), tensor_types(proto)
    half = any(types.get(n, _FLOAT) != _FLOAT for n in names)
    if half or opset_of(proto) < QDQ_OPSET:
        proto, taken = own_model(model), []
    data = {t.name: t for t in taken}
    large = model_bytes(source) > INLINE_LIMIT
    del source
    proto = inline_branches(proto, result.branches)
    constants_to_initializers(proto)
    names = quantized_tensors(proto, result, op_types)
    if half:  # float16 / bfloat16 tensors
        calibrated_on(proto, result.encodings)
        proto, opset_note = own_qdq_model(proto, result, names)
        save_model(proto, path)
        return path, opset_note
    excluded = unencoded_nodes(proto, result, op_types)
    proto, result, opset_note = fit_opset(proto, result)
    present = calibrated_on(proto, result.encodings)
    overrides, ranges = _overrides(result, present)
    with tempfile.TemporaryDirectory(prefix="encanalyze-") as workdir:
        import onnx

        source = Path(workdir) / "float.onnx"
        if data:
            save_with_stub_data(proto, data, source)
        else:
            onnx.save_model(proto, str(source), save_as_external_data=large, location="float.data")
        del proto, data, taken
        cache = Path(workdir) / "ranges.json"
        data = {n: TensorData(lowest=lo, highest=hi) for n, (lo, hi) in ranges.items()}
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        options = {
            "calibration_data_reader": None,
            "quant_format": QuantFormat.QDQ,
            "op_types_to_quantize": None if op_types is None else list(op_types),
            "nodes_to_exclude": excluded,
            "per_channel": any(e.axis is not None for e in result.encodings.values()),
            "activation_type": act_type,
            "weight_type": weight_type,
            "calibrate_method": CalibrationMethod.MinMax,
            "calibration_cache_path": str(cache),
            "use_external_data_format": large,
            "extra_options": {
                "TensorQuantOverrides": overrides,
                "ActivationSymmetric": result.symmetric,
                "WeightSymmetric": result.weights_symmetric,
            },
        }
        logging.disable(logging.WARNING)  # its "consider pre-processing" advice, on the root logger
        try:
            quantize(str(source), str(path), **options)
        finally:
            logging.disable(logging.NOTSET)
    return path, opset_note


def output_sqnr(
    float_model, quantized_model, batches: Iterable, providers=None, config: dict | None = None
) -> dict:
    """Return the SQNR in dB of each float output of ``quantized_model`` against ``float_model``.

    Both run with ONNX Runtime on the same batches; ``10 log10(sum(y**2) / sum((y - q)**2))``
    over all batches, in float64 (``inf`` where the outputs agree exactly). ``config``: the
    quantized model's session config entries. Integer and bool outputs have no SQNR: see
    :func:`compare_outputs`.
    """
    return compare_outputs(float_model, quantized_model, batches, providers, config).sqnr_db()


def compare_outputs(
    float_model,
    quantized_model,
    batches: Iterable,
    providers=None,
    config: dict | None = None,
    sample_axes: Mapping[str, int | None] | None = None,
) -> OutputErrors:
    """Return how far each output of ``quantized_model`` is from ``float_model``'s, by sample.

    Both run with ONNX Runtime on the same batches (``config``: the quantized model's session
    config entries). Float outputs are judged by their SQNR, integer and bool ones by their
    agreement (:class:`~encanalyze._output_errors.OutputErrors`). ``sample_axes``: each
    input's sample axis (:func:`output_pieces`).
    """
    return compare_outputs_on(
        float_model, quantized_model, [batches], providers, config, sample_axes
    )[0]


def compare_outputs_on(
    float_model,
    quantized_model,
    batch_sets: Sequence[Iterable],
    providers=None,
    config: dict | None = None,
    sample_axes: Mapping[str, int | None] | None = None,
) -> list[OutputErrors]:
    """:func:`compare_outputs` on each of ``batch_sets`` (each non-empty), in one session each.

    One ONNX Runtime session per model serves every set: a large model pays for its sessions
    once (a BERT-base's two cost about 3 s to make).
    """
    reference, _ = load_model(float_model)
    names = [o.name for o in reference.graph.output]
    inputs = model_inputs(reference)
    want = session(reference, providers)
    del reference
    got = session(load_model(quantized_model)[0], providers, config)
    out = []
    for batches in batch_sets:  # both models in step: one piece's outputs at a time
        first, second = itertools.tee(output_pieces(want, inputs, names, batches, sample_axes))
        out.append(
            OutputErrors.measure(
                names,
                (run_batch(want, names, feed) for feed in first),
                (run_batch(got, names, feed) for feed in second),
            )
        )
    return out


def output_pieces(
    run, inputs, names: list[str], batches: Iterable, axes: Mapping[str, int | None] | None
) -> Iterator[dict]:
    """Yield ``batches`` as feeds, cut into pieces whose outputs take about 32 MiB or less.

    ``run``: a session of the float model, which measures one sample's ``names`` outputs
    (:data:`~._pieces.OUTPUT_BYTES`); ``axes``: each input's sample axis (``None``: nothing is
    cut). Samples stay whole, so that per-sample errors are those of the whole batches.
    """
    fed = (feeds(batch, inputs) for batch in batches)
    if axes is None:
        yield from fed
        return
    pieces = Pieces(axes, lambda f: nbytes(run_batch(run, names, f)), OUTPUT_BYTES)
    for piece, _ in pieces.cut(fed):
        yield piece


def model_outputs(
    proto, batches: Iterable, names: list[str], providers, config: dict | None = None
) -> Iterator[list]:
    """Yield ``names`` computed by ``proto`` (a loaded model, not changed) on each batch."""
    inputs = model_inputs(proto)
    run = session(proto, providers, config)
    del proto
    for batch in batches:
        yield run_batch(run, names, feeds(batch, inputs))


def own_qdq_model(proto, result: CalibrationResult, names: list[str]) -> tuple[object, str]:
    """Return the integer QDQ model of ``proto`` (a model of the caller's) quantizing ``names``.

    For float16 / bfloat16 models (ONNX Runtime's ``quantize_static`` would store their scales
    in half precision, in ``DequantizeLinear`` nodes its opset does not allow) and for exactly
    the tensors named (a torch model's export: no node needs all of its tensors encoded, as
    ``quantize_static`` does). Each of ``names`` is quantized in float32 with encanalyze's
    exact FP32 scales and zero points, between ``Cast`` nodes where the tensor is not float32
    (:func:`~._qdq_graph.insert_qdq`); biases stay in floating point. 8 bits need opset 13,
    4 and 16 bits opset 21 (older models are converted: ``ValueError`` where they cannot be).
    Returns the model and what its opset got.
    """
    from onnx import TensorProto, helper

    before = opset_of(proto)
    opset = QDQ_OPSET if result.bits == 8 else 21
    proto = at_least_opset(proto, opset, f"no {result.bits}-bit QuantizeLinear")
    note = f"opset {before}" if before >= opset else f"opset {before} converted to {opset}"
    tensors = result.onnx_qdq()["tensors"]
    weights = float_weights(proto)
    quantizers = {}
    for name in names:
        e = result.encodings[name]
        onnx_type = getattr(TensorProto, f"{'' if e.symmetric else 'U'}INT{result.bits}")
        low = -(2 ** (result.bits - 1)) if e.symmetric else 0
        scale = np.asarray(tensors[name]["scale"], np.float32)
        zero = np.asarray(tensors[name]["zero_point"], np.int64)
        if e.axis is None:
            scale, zero = scale.reshape(()), zero.reshape(())
        values = None
        if e.kind == "param" and name in weights:
            w = np.asarray(weights[name], np.float32)
            s, z = (on_axis(a, w.ndim, e.axis) for a in (scale, zero))
            q = np.rint(w / s) + z  # QuantizeLinear's
            q = np.clip(q, low, low + 2**result.bits - 1)
            values = q.astype(helper.tensor_dtype_to_np_dtype(onnx_type))
        quantizers[name] = Quantizer(scale, zero, e.axis, values, onnx_type)
    insert_qdq(proto, quantizers, "int", outputs=True)
    return proto, note
