"""The analysis report of an ONNX model: quantizers, sensitivity, ONNX Runtime's calibrators."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .. import formats
from .._calibration import CalibrationResult, measure_models
from .._io import float_weights, load_model, own_model
from .._report import sqnr_db
from .._report_data import model_quantizers
from ._blocks import BlockCalibration, BlockSwitches
from ._branches import inline_branches
from ._calibrate import QUANTIZABLE_OPS, feeds, model_inputs, run_batch, session, value_infos
from ._emulate import Emulator
from ._float8 import FLOAT8_SESSION, Float8Calibration, Float8Switches
from ._qdq import compare_outputs, fit_opset
from ._sensitivity import sensitivity

__all__ = [
    "ORT_CALIBRATORS",
    "activation_sqnr",
    "float8_activation_sqnr",
    "model_report",
    "ort_calibrators_sqnr",
    "ort_float8_sqnr",
    "own_sqnr",
]

ORT_CALIBRATORS = ("MinMax", "Entropy", "Percentile")
"""ONNX Runtime's static calibrators the report compares against."""

_ORT_TYPES = {4: ("QInt4", "QUInt4"), 8: ("QInt8", "QUInt8"), 16: ("QInt16", "QUInt16")}


def activation_sqnr(model, result: CalibrationResult, batches: Sequence, providers=None) -> dict:
    """Return each per-tensor activation's own SQNR (dB) on ``batches``, by method.

    ``{name: {method: dB}}`` for the activation's encoding and every candidate of
    ``result.candidates``: quantized and dequantized with the encoding as ``QuantizeLinear``
    rounds (half to even); see :func:`own_sqnr`.
    """
    import numpy as np

    n_steps = 2**result.bits - 1

    def qdq(e):
        s, o = float(np.ravel(e.scale)[0]), float(np.ravel(e.offset)[0])
        return lambda x: (np.clip(np.round(x / s) - o, 0, n_steps) + o) * s

    acts = {n: e for n, e in result.encodings.items() if e.kind == "activation" and e.axis is None}
    every = {n: result.candidates.get(n) or {e.method: e} for n, e in acts.items()}
    fns = {n: {m: qdq(e) for m, e in by.items()} for n, by in every.items()}
    return own_sqnr(model, result.branches, fns, batches, providers)


def float8_activation_sqnr(model, result, batches: Sequence, providers=None) -> dict:
    """Return each FP8 activation's own SQNR (dB) on ``batches`` by method (``{name: {m: dB}}``).

    ``result`` is a :class:`~._float8.Float8Calibration`; each method's scale quantizes as
    ``QuantizeLinear`` to the format does (``x / scale`` in float32, saturating, nearest even).
    """
    import numpy as np

    def qdq(scale):
        s = np.float32(np.ravel(scale)[0])
        return lambda x: formats.quantize_scaled(x.astype(np.float32), result.fmt, scale=s)

    fns = {
        n: {m: qdq(s) for m, s in e.scales.items()}
        for n, e in result.encodings.items()
        if e.kind == "activation"
    }
    return own_sqnr(model, result.branches, fns, batches, providers)


def own_sqnr(model, branches: dict, qdq: dict, batches: Sequence, providers=None) -> dict:
    """Return each tensor's SQNR (dB) under each quantize-dequantize of ``qdq`` on ``batches``.

    ``qdq`` maps tensor names to ``{method: function}`` (a NumPy array to its
    quantize-dequantize). The float model (``branches`` inlined) runs with the tensors as
    extra outputs; signal and noise are summed over every batch (finite values only). Tensors
    no batch reached are left out.
    """
    import numpy as np

    proto = inline_branches(load_model(model)[0], branches)
    typed = {vi.name: vi for vi in value_infos(proto)}
    inputs = model_inputs(proto)
    fed = {i.name for i in inputs}
    wanted = [n for n in qdq if n in typed and n not in fed]
    have = {o.name for o in proto.graph.output}
    energy = {n: {m: [0.0, 0.0] for m in by} for n, by in qdq.items()}
    run = session(proto, providers, outputs=[typed[n] for n in wanted if n not in have])
    for batch in batches:
        feed = feeds(batch, inputs)
        got = dict(zip(wanted, run_batch(run, wanted, feed), strict=True)) if wanted else {}
        for name, by in qdq.items():
            if name not in got and name not in feed:
                continue
            x = np.asarray(got[name] if name in got else feed[name], np.float64)
            x = x[np.isfinite(x)]
            for method, fn in by.items():
                q = np.asarray(fn(x), np.float64)
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
    sample_axes: Mapping | None = None,
) -> dict[str, float | str]:
    """Return the output SQNR (dB, mean over outputs) of ONNX Runtime's own QDQ models.

    ``quantize_static`` with each of :data:`ORT_CALIBRATORS` on the ``calibration`` batches,
    the grids of ``result`` (bits, activations' and weights' symmetry, per-channel weights where
    ``result``'s are), scored on ``judged``; a calibrator that fails gets its error's first line
    (a ``str``: variable-length activations fail its histogram calibrators). The model is
    prepared as ONNX Runtime advises (opset 13 for per-channel weights, its
    ``quant_pre_process``; where that fails, the model as it is).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantType

    proto, _ = load_model(model)
    proto, _, _ = fit_opset(own_model(proto), result)
    signed, unsigned = (getattr(QuantType, t) for t in _ORT_TYPES[result.bits])
    grids = {
        "activation_type": signed if result.symmetric else unsigned,
        "weight_type": signed if result.weights_symmetric else unsigned,
        "extra_options": {
            "ActivationSymmetric": result.symmetric,
            "WeightSymmetric": result.weights_symmetric,
        },
    }
    configs = {
        m: {**grids, "calibrate_method": getattr(CalibrationMethod, m)} for m in ORT_CALIBRATORS
    }
    per_channel = any(e.axis is not None for e in result.encodings.values() if e.kind == "param")
    return _ort_sqnr(
        proto, calibration, judged, configs, per_channel, op_types, providers, None, sample_axes
    )


def ort_float8_sqnr(
    model,
    result,
    calibration: Sequence,
    judged: Sequence,
    *,
    op_types=QUANTIZABLE_OPS,
    providers=None,
    sample_axes: Mapping | None = None,
) -> float | str:
    """Return the output SQNR (dB) of ONNX Runtime's own FP8 QDQ model (or why it failed).

    ``quantize_static`` with ``QFLOAT8E4M3FN`` activations and weights and its ``Distribution``
    calibrator (the only one it has for FP8), per-channel weights where ``result``'s
    (a :class:`~._float8.Float8Calibration`) are, run with :data:`~._float8.FLOAT8_SESSION`.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantType

    proto, _ = load_model(model)
    fp8 = QuantType.QFLOAT8E4M3FN
    config = {
        "activation_type": fp8,
        "weight_type": fp8,
        "calibrate_method": CalibrationMethod.Distribution,
    }
    per_channel = any(e.axis is not None for e in result.encodings.values() if e.kind == "param")
    return _ort_sqnr(
        own_model(proto),
        calibration,
        judged,
        {"Distribution": config},
        per_channel,
        op_types,
        providers,
        FLOAT8_SESSION,
        sample_axes,
    )["Distribution"]


def even_feeds(batches: Sequence, inputs, axes: Mapping | None) -> list[dict]:
    """Return the feeds of ``batches`` in batches of one number of samples.

    ONNX Runtime's histogram calibrators stack every batch's outputs and fail on batches of
    different sizes ("inhomogeneous shape"); a split by samples leaves a smaller last batch.
    Where the inputs' sample axes are known (``axes``: each input's, ``None`` for a constant)
    and the batches differ in size, each is cut into batches of the sizes' greatest common
    divisor (views: the same samples, in the same order). Otherwise the batches go as they are.
    """
    fed = [feeds(b, inputs) for b in batches]
    if not axes:
        return fed
    sizes = [
        next(np.shape(v)[axes[n]] for n, v in feed.items() if axes.get(n) is not None)
        for feed in fed
    ]
    step = math.gcd(*sizes)
    if len(set(sizes)) <= 1 or step == 0:
        return fed

    def cut(v, axis: int, start: int):
        return v[(slice(None),) * axis + (slice(start, start + step),)]

    return [
        {n: v if axes.get(n) is None else cut(v, axes[n], start) for n, v in feed.items()}
        for feed, size in zip(fed, sizes, strict=True)
        for start in range(0, size, step)
    ]


def _ort_sqnr(
    proto,
    calibration: Sequence,
    judged: Sequence,
    configs: dict[str, dict],
    per_channel: bool,
    op_types,
    providers,
    session_config: dict | None = None,
    sample_axes: Mapping | None = None,
) -> dict[str, float | str]:
    """Score ``quantize_static`` with each of ``configs``' keyword arguments (``str``: failed).

    ``proto`` (a model of the caller's own) is pre-processed by ``quant_pre_process`` where
    that works; each QDQ model is calibrated on ``calibration`` (in batches of one size where
    ``sample_axes`` allow, :func:`even_feeds`) and scored by its output SQNR (mean over
    outputs) on ``judged``.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    fed = even_feeds(calibration, model_inputs(proto), sample_axes)  # once for every config

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(fed)

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
        for label, config in configs.items():
            target = Path(tmp) / f"{label}.onnx"
            logging.disable(logging.WARNING)
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
                    quantize_static(
                        str(source),
                        str(target),
                        Reader(),
                        quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=None if op_types is None else list(op_types),
                        per_channel=per_channel,
                        **config,
                    )
                errors = compare_outputs(proto, str(target), judged, providers, session_config)
                out[label] = errors.score()
            except Exception as err:  # noqa: BLE001 - a peer's failure is a row, not the report's
                text = " ".join(str(err).split()) or type(err).__name__
                out[label] = f"failed: {text[:300]}"
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
    sample_axes: Mapping | None = None,
    layers: int | None = None,
) -> dict:
    """Return the report data of a calibrated ONNX model.

    Quantizers (every method's range and SQNR, histograms: the weights' own, the activations'
    from ``statistics`` of :func:`encanalyze.onnx.calibrate`), the layer sensitivity and each
    quantizer's gain in floating point (:func:`sensitivity` on ``judged``), and the output SQNR
    of ``comparison``'s rows plus ONNX Runtime's calibrators (``peers``; on ``calibration``,
    scored on ``judged``). ``result`` may be a :class:`~._float8.Float8Calibration` (of
    :func:`~._float8.calibrate_float8`): the sensitivity then runs its real FP8 QDQ model
    (:class:`~._float8.Float8Switches`) and the peer is ONNX Runtime's FP8 calibration
    (:func:`ort_float8_sqnr`, E4M3FN only). A :class:`~._blocks.BlockCalibration` (MX or
    NVFP4 weights) runs its real block QDQ model (:class:`~._blocks.BlockSwitches`), with no
    peer. ``sample_axes``: each input's sample axis, so that the peers get batches of one size
    (:func:`even_feeds`). ``layers``: the sensitivity runs only that many layers, those whose
    quantizers' own SQNR is lowest (``None``: every layer; the summary says how many ran).
    """
    start = time.perf_counter()
    statistics = statistics or {}
    proto, _ = load_model(model)
    weights = float_weights(proto)
    fp8 = isinstance(result, Float8Calibration)
    blocks = isinstance(result, BlockCalibration)
    kind = "blocks" if blocks else "fp8" if fp8 else "int"
    quantizers = model_quantizers(
        result, weights, statistics.get("histograms", {}), statistics.get("ranges", {})
    )
    rows = list(comparison or [])
    sens = None
    if judged and (blocks or any(e.kind == "activation" for e in result.encodings.values())):
        emulator = {"blocks": BlockSwitches, "fp8": Float8Switches, "int": Emulator}[kind]
        own = {}
        if not blocks:
            measure = float8_activation_sqnr if fp8 else activation_sqnr
            own = measure(model, result, judged, providers)
        for q in quantizers:
            if q["kind"] == "activation" and q["name"] in own:
                for method, db in own[q["name"]].items():
                    if method in q["methods"]:
                        q["methods"][method]["sqnr_db"] = db
                q["own_sqnr_db"] = own[q["name"]].get(q["best"])
        proxy = {q["name"]: q["methods"].get(q["best"], {}).get("sqnr_db") for q in quantizers}
        sens = sensitivity(
            model, result, judged, op_types=op_types, providers=providers, emulator=emulator,
            proxy=proxy, top=layers,
        )  # fmt: skip
        for q in quantizers:
            q["gain_db"] = sens.gain_db.get(q["name"])
        rows.append(
            {
                "label": f"encanalyze, as chosen ({'emulated' if kind == 'int' else 'QDQ model'})",
                "output_sqnr_db": sens.output_sqnr_db,
                "measured_on": measured_on,
            }
        )
        if peers and fp8:
            if result.fmt.name == "float8_e4m3fn":
                db = ort_float8_sqnr(
                    model, result, calibration, judged, op_types=op_types, providers=providers,
                    sample_axes=sample_axes,
                )  # fmt: skip
                label = "ONNX Runtime FP8 E4M3FN, Distribution (quantize_static)"
                rows.append(_peer_row(label, db, measured_on))
        elif peers and not blocks:  # no peer calibrates MX or NVFP4 weights in ONNX
            for method, db in ort_calibrators_sqnr(
                model, result, calibration, judged, op_types=op_types, providers=providers,
                sample_axes=sample_axes,
            ).items():  # fmt: skip
                label = f"ONNX Runtime {method} (quantize_static)"
                rows.append(_peer_row(label, db, measured_on))
    methods = list(dict.fromkeys(m for q in quantizers for m in q["methods"]))
    summary = dict(summary or {})
    if sens is not None:
        ran = sum(1 for x in sens.layers if x.worst() != float("inf"))
        summary["layers measured"] = f"{ran} of {len(sens.layers)}" + (
            " (their quantizers' own SQNR lowest)" if ran < len(sens.layers) else ""
        )
    summary["report built in"] = f"{time.perf_counter() - start:.1f} s"
    page = {
        "title": "encanalyze calibration report",
        "summary": summary,
        "methods": methods,
        "quantizers": quantizers,
        "sensitivity": [] if sens is None else [layer.as_dict() for layer in sens.layers],
        "comparison": rows,
    }
    if sens is not None and sens.unit != "dB":  # no float output: scored by agreement
        page["output_unit"] = sens.unit
    return page


def _peer_row(label: str, score: float | str, measured_on: str) -> dict:
    """Return a comparison row of a peer: its score, or ``None`` and why it failed."""
    if isinstance(score, str):
        return {"label": label, "output_sqnr_db": None, "measured_on": measured_on, "note": score}
    return {"label": label, "output_sqnr_db": score, "measured_on": measured_on}


def _takes(model) -> bool:
    """Whether ``model`` is an ONNX model: a path or a ``ModelProto``."""
    return isinstance(model, (str, os.PathLike)) or type(model).__name__ == "ModelProto"


def _measure(model, result, calibration, batches, statistics, summary) -> dict:
    """:meth:`CalibrationResult.report`'s measurements of an ONNX model."""
    return model_report(
        model, result, list(calibration or []), list(batches or []),
        statistics=statistics, summary=summary, peers=calibration is not None,
    )  # fmt: skip


measure_models(_takes, _measure)
