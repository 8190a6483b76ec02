"""QDQ models from encanalyze's encodings, built by ONNX Runtime's own quantization tooling."""

from __future__ import annotations

import inspect
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .._calibration import CalibrationResult
from .._onnx_graph import model_bytes, own_model
from .._report import sqnr_db
from ._calibrate import INLINE_LIMIT, QUANTIZABLE_OPS, feeds, model_inputs, session

__all__ = ["output_sqnr", "write_qdq_model"]

_CONSTANT_VALUES = {"value", "value_float", "value_floats"}
_QUANT_TYPES = {4: ("QInt4", "QUInt4"), 8: ("QInt8", "QUInt8"), 16: ("QInt16", "QUInt16")}


def _constants_to_initializers(model) -> None:
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


def _overrides(result: CalibrationResult) -> tuple[dict, dict]:
    """``TensorQuantOverrides`` (exact scale and zero point) and activation ranges."""
    qdq = result.onnx_qdq()["tensors"]
    zp_dtype = np.dtype(f"{'' if result.symmetric else 'u'}int{max(8, result.bits)}")
    overrides, ranges = {}, {}
    for name, e in result.encodings.items():
        item = qdq[name]
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


def write_qdq_model(model, result: CalibrationResult, path, *, op_types=QUANTIZABLE_OPS) -> Path:
    """Write a QDQ model that quantizes ``model`` with ``result``'s encodings; return its path.

    ONNX Runtime's ``quantize_static`` builds the model (QDQ format, ``op_types`` nodes, per
    channel where the weights' encodings are) with encanalyze's scales and zero points as its
    per-tensor overrides and encanalyze's activation ranges as its calibration cache, so it
    runs no calibration of its own. Bit widths 4, 8 and 16; asymmetric encodings become
    unsigned types, symmetric ones signed (zero point 0). Needs onnxruntime with
    ``calibration_cache_path`` (1.32 or newer).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as quantize
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    if "calibration_cache_path" not in inspect.signature(quantize).parameters:
        raise ImportError("write_qdq_model needs onnxruntime 1.32 or newer")
    if result.bits not in _QUANT_TYPES:
        raise ValueError(f"QDQ models take 4, 8 or 16 bits, not {result.bits}")
    if not any(e.kind == "activation" for e in result.encodings.values()):
        raise ValueError("the result holds no activation encodings: calibrate with batches")
    signed, unsigned = (getattr(QuantType, t) for t in _QUANT_TYPES[result.bits])
    qtype = signed if result.symmetric else unsigned
    proto = own_model(model)
    _constants_to_initializers(proto)
    overrides, ranges = _overrides(result)
    path = Path(path)
    large = model_bytes(proto) > INLINE_LIMIT
    with tempfile.TemporaryDirectory(prefix="encanalyze-") as workdir:
        import onnx

        source = Path(workdir) / "float.onnx"
        onnx.save_model(proto, str(source), save_as_external_data=large, location="float.data")
        del proto
        cache = Path(workdir) / "ranges.json"
        data = {n: TensorData(lowest=lo, highest=hi) for n, (lo, hi) in ranges.items()}
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        options = {
            "calibration_data_reader": None,
            "quant_format": QuantFormat.QDQ,
            "op_types_to_quantize": None if op_types is None else list(op_types),
            "per_channel": any(e.axis is not None for e in result.encodings.values()),
            "activation_type": qtype,
            "weight_type": qtype,
            "calibrate_method": CalibrationMethod.MinMax,
            "calibration_cache_path": str(cache),
            "use_external_data_format": large,
            "extra_options": {
                "TensorQuantOverrides": overrides,
                "ActivationSymmetric": result.symmetric,
                "WeightSymmetric": result.symmetric,
            },
        }
        logging.disable(logging.WARNING)  # its "consider pre-processing" advice, on the root logger
        try:
            quantize(str(source), str(path), **options)
        finally:
            logging.disable(logging.NOTSET)
    return path


def output_sqnr(float_model, quantized_model, batches: Iterable, providers=None) -> dict:
    """Return the SQNR in dB of each output of ``quantized_model`` against ``float_model``.

    Both run with ONNX Runtime on the same batches; ``10 log10(sum(y**2) / sum((y - q)**2))``
    over all batches, in float64 (``inf`` where the outputs agree exactly).
    """
    protos = [own_model(m) for m in (float_model, quantized_model)]  # session() may convert
    inputs = model_inputs(protos[0])
    names = [o.name for o in protos[0].graph.output]
    signal = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    with tempfile.TemporaryDirectory(prefix="encanalyze-") as workdir:
        runs = []
        for i, proto in enumerate(protos):
            folder = Path(workdir) / str(i)
            folder.mkdir()
            runs.append(session(proto, providers, str(folder)))
        del protos
        for batch in batches:
            feed = feeds(batch, inputs)
            want, got = (run.run(names, feed) for run in runs)
            for name, y, q in zip(names, want, got, strict=True):
                y, q = np.asarray(y, np.float64), np.asarray(q, np.float64)
                signal[name] += float(np.sum(y * y))
                noise[name] += float(np.sum((y - q) ** 2))
    return {n: sqnr_db(signal[n], noise[n]) for n in names}
