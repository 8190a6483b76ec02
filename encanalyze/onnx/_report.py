"""The analysis report of an ONNX model: quantizers, sensitivity, ONNX Runtime's calibrators."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .._calibration import CalibrationResult
from .._onnx_graph import float_weights, load_model, own_model
from .._report_data import model_quantizers
from ._branches import inline_branches
from ._calibrate import QUANTIZABLE_OPS, feeds, model_inputs
from ._qdq import fit_opset, output_sqnr
from ._sensitivity import sensitivity

__all__ = ["ORT_CALIBRATORS", "activation_sqnr", "model_report", "ort_calibrators_sqnr"]

ORT_CALIBRATORS = ("MinMax", "Entropy", "Percentile")
"""ONNX Runtime's static calibrators the report compares against."""

_ORT_TYPES = {4: ("QInt4", "QUInt4"), 8: ("QInt8", "QUInt8"), 16: ("QInt16", "QUInt16")}


def _mean(sqnr: dict) -> float:
    values = list(sqnr.values())
    return float(sum(values) / len(values)) if values else float("nan")


def activation_sqnr(model, result: CalibrationResult, batches: Sequence, providers=None) -> dict:
    """Return each per-tensor activation's own SQNR (dB) on ``batches``, by method.

    ``{name: {method: dB}}`` for the activation's encoding and every candidate of
    ``result.candidates``. The float model runs with the activations as extra outputs; each is
    quantized and dequantized with the encoding (``QuantizeLinear``'s rounding, half to even),
    and the SQNR sums signal and noise over every batch (finite values only).
    """
    import numpy as np

    from .._report import sqnr_db
    from ._calibrate import run_batch, session, value_infos

    proto = inline_branches(own_model(model), result.branches)
    acts = {n: e for n, e in result.encodings.items() if e.kind == "activation" and e.axis is None}
    typed = {vi.name: vi for vi in value_infos(proto)}
    inputs = model_inputs(proto)
    fed = {i.name for i in inputs}
    wanted = [n for n in acts if n in typed and n not in fed]
    have = {o.name for o in proto.graph.output}
    proto.graph.output.extend(typed[n] for n in wanted if n not in have)
    every = {n: result.candidates.get(n) or {e.method: e} for n, e in acts.items()}
    energy = {n: {m: [0.0, 0.0] for m in every[n]} for n in acts}
    n_steps = 2**result.bits - 1
    with tempfile.TemporaryDirectory(prefix="encanalyze-") as tmp:
        run = session(proto, providers, tmp)
        for batch in batches:
            feed = feeds(batch, inputs)
            got = dict(zip(wanted, run_batch(run, wanted, feed), strict=True)) if wanted else {}
            for name in acts:
                if name not in got and name not in feed:
                    continue
                x = np.asarray(got[name] if name in got else feed[name], np.float64)
                x = x[np.isfinite(x)]
                for method, e in every[name].items():
                    s, o = float(np.ravel(e.scale)[0]), float(np.ravel(e.offset)[0])
                    q = (np.clip(np.round(x / s) - o, 0, n_steps) + o) * s
                    energy[name][method][0] += float(np.sum(x * x))
                    energy[name][method][1] += float(np.sum((x - q) ** 2))
    return {
        n: {m: sqnr_db(*v) for m, v in by.items()}
        for n, by in energy.items()
        if any(v != [0.0, 0.0] for v in by.values())
    }


def ort_calibrators_sqnr(
    model,
    result: CalibrationResult,
    calibration: Sequence,
    judged: Sequence,
    *,
    op_types=QUANTIZABLE_OPS,
    providers=None,
) -> dict[str, float]:
    """Return the output SQNR (dB, mean over outputs) of ONNX Runtime's own QDQ models.

    ``quantize_static`` with each of :data:`ORT_CALIBRATORS` on the ``calibration`` batches,
    the grids of ``result`` (bits, activations' and weights' symmetry, per-channel weights where
    ``result``'s are), scored on ``judged``; a calibrator that fails gets ``nan``. The model is
    prepared as ONNX Runtime advises (opset 13 for per-channel weights, its
    ``quant_pre_process``; where that fails, the model as it is).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    proto, _ = load_model(model)
    proto = own_model(proto)
    proto, _, _ = fit_opset(proto, result)
    inputs = model_inputs(proto)
    signed, unsigned = (getattr(QuantType, t) for t in _ORT_TYPES[result.bits])
    per_channel = any(e.axis is not None for e in result.encodings.values() if e.kind == "param")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds(b, inputs) for b in calibration)

        def get_next(self):
            return next(self.items, None)

    out = {}
    with tempfile.TemporaryDirectory(prefix="encanalyze-") as tmp:
        import onnx

        source = Path(tmp) / "float.onnx"
        onnx.save_model(proto, str(source))
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            prepared = Path(tmp) / "prepared.onnx"
            logging.disable(logging.WARNING)
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            source = prepared
        except Exception:  # noqa: BLE001 - its advice, not a requirement
            pass
        finally:
            logging.disable(logging.NOTSET)
        for method in ORT_CALIBRATORS:
            target = Path(tmp) / f"{method}.onnx"
            logging.disable(logging.WARNING)
            try:
                quantize_static(
                    str(source),
                    str(target),
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=None if op_types is None else list(op_types),
                    per_channel=per_channel,
                    activation_type=signed if result.symmetric else unsigned,
                    weight_type=signed if result.weights_symmetric else unsigned,
                    calibrate_method=getattr(CalibrationMethod, method),
                    extra_options={
                        "ActivationSymmetric": result.symmetric,
                        "WeightSymmetric": result.weights_symmetric,
                    },
                )
                out[method] = _mean(output_sqnr(proto, str(target), judged, providers))
            except Exception:  # noqa: BLE001 - a peer's failure is a row, not the report's
                out[method] = float("nan")
            finally:
                logging.disable(logging.NOTSET)
    return out


def model_report(
    model,
    result: CalibrationResult,
    calibration: Sequence,
    judged: Sequence,
    *,
    statistics: dict | None = None,
    summary: dict | None = None,
    comparison: list[dict] | None = None,
    measured_on: str = "held-out",
    op_types=QUANTIZABLE_OPS,
    providers=None,
    peers: bool = True,
) -> dict:
    """Return the report data of a calibrated ONNX model.

    Quantizers (every method's range and SQNR, histograms: the weights' own, the activations'
    from ``statistics`` of :func:`encanalyze.onnx.calibrate`), the layer sensitivity and each
    quantizer's gain in floating point (:func:`sensitivity` on ``judged``), and the output SQNR
    of ``comparison``'s rows plus ONNX Runtime's calibrators (``peers``; on ``calibration``,
    scored on ``judged``).
    """
    start = time.perf_counter()
    statistics = statistics or {}
    proto, _ = load_model(model)
    weights = float_weights(proto)
    quantizers = model_quantizers(
        result, weights, statistics.get("histograms", {}), statistics.get("ranges", {})
    )
    rows = list(comparison or [])
    sens = None
    if judged and any(e.kind == "activation" for e in result.encodings.values()):
        sens = sensitivity(model, result, judged, op_types=op_types, providers=providers)
        own = activation_sqnr(model, result, judged, providers)
        for q in quantizers:
            q["gain_db"] = sens.gain_db.get(q["name"])
            if q["kind"] == "activation" and q["name"] in own:
                for method, db in own[q["name"]].items():
                    if method in q["methods"]:
                        q["methods"][method]["sqnr_db"] = db
                q["own_sqnr_db"] = own[q["name"]].get(q["best"])
        rows.append(
            {
                "label": "encanalyze, as chosen (emulated)",
                "output_sqnr_db": sens.output_sqnr_db,
                "measured_on": measured_on,
            }
        )
        if peers:
            for method, db in ort_calibrators_sqnr(
                model, result, calibration, judged, op_types=op_types, providers=providers
            ).items():
                label = f"ONNX Runtime {method} (quantize_static)"
                rows.append({"label": label, "output_sqnr_db": db, "measured_on": measured_on})
    methods = list(dict.fromkeys(m for q in quantizers for m in q["methods"]))
    summary = dict(summary or {})
    summary["report built in"] = f"{time.perf_counter() - start:.1f} s"
    return {
        "title": "encanalyze calibration report",
        "summary": summary,
        "methods": methods,
        "quantizers": quantizers,
        "sensitivity": [] if sens is None else [layer.as_dict() for layer in sens.layers],
        "comparison": rows,
    }
