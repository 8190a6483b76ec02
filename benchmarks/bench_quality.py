"""Model quality against ONNX Runtime's own calibrators, on real public models, in one run.

For each real model of the test suite (PaddleOCR's classifier, detector and recognizer, which
ship inside ``rapidocr-onnxruntime``; fetched with pip into ``.model-cache/``), the float model
is prepared once for both tools (opset raised to 13, ONNX Runtime's ``quant_pre_process``), then
quantized to QDQ (Conv, ConvTranspose, Gemm, MatMul; uint8 asymmetric activations, int8
symmetric weights per channel) by:

- ONNX Runtime's ``quantize_static`` with its MinMax, Entropy and Percentile calibrators;
- encanalyze's default model job: ``encanalyze.onnx.calibrate`` with the ``auto`` weight and
  activation candidates (``weight_symmetric=True``) on 6 of the 8 calibration
  batches, then ``choose_encodings`` on the other two (the command's ``--holdout 0.25``),
  which builds the chosen QDQ model.

Each QDQ model's output SQNR against the float model is measured on 64 held-out samples of
rendered text (real words in matplotlib's own font, half upside down:
``tests.real_models.rendered_text``) and on the 64 calibration samples (batches of 8), with the
wall time of each tool; ``--draws`` sample sets (3) per model, each a row, then the mean and
range over the draws (on one draw the output SQNR of a confident classifier moves by a few dB
from one sample set to the next).

    python benchmarks/bench_quality.py [--models classifier detector recognizer] [--draws 3]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import real_model_args  # noqa: E402

MODELS = {
    "classifier": ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (48, 192)),
    "detector": ("ch_PP-OCRv4_det_infer.onnx", (96, 160)),
    "recognizer": ("ch_PP-OCRv4_rec_infer.onnx", (48, 160)),
}
OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul"]
BATCH = 8
BATCHES = 8
CHOICES: list[str] = []


def prepare(source: Path, folder: Path) -> Path:
    """Opset 13 and ONNX Runtime's pre-processing, once, for both tools."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    converted = folder / "opset13.onnx"
    onnx.save(version_converter.convert_version(onnx.load(str(source)), 13), str(converted))
    prepared = folder / "float.onnx"
    quant_pre_process(str(converted), str(prepared), skip_symbolic_shape=True)
    return prepared


def ort_quantize(
    model: Path, batches: list, method: str, out: Path, per_channel: bool = True
) -> float:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter({"x": b} for b in batches)

        def get_next(self):
            return next(self.items, None)

    start = time.perf_counter()
    quantize_static(
        str(model),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=OPS,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
    )
    return time.perf_counter() - start


def encanalyze_quantize(
    model: Path, batches: list, out: Path, per_channel: bool = True, bias_correction: bool = False
) -> float:
    from encanalyze._io import Outputs
    from encanalyze._registry import AUTO_ACTIVATIONS
    from encanalyze.cli._data import AUTO_WEIGHTS
    from encanalyze.onnx import calibrate, choose_encodings, correct_biases
    from encanalyze.onnx._qdq import stage_qdq_model

    weights = dict.fromkeys(AUTO_WEIGHTS)  # --method auto
    start = time.perf_counter()
    held = max(1, len(batches) // 4)
    result = calibrate(
        str(model), batches[:-held], activations=AUTO_ACTIVATIONS, weights=weights,
        weight_symmetric=True, per_channel_weights=per_channel, progress=False,
    )  # fmt: skip
    with Outputs([model]) as outputs:  # the chosen QDQ model is built while choosing, as the
        stage = outputs.file(out, "QDQ model", sidecar=True)  # command builds it
        result, choice = choose_encodings(str(model), result, batches[-held:], stage=stage)
        if bias_correction:  # the command's --bias-correction: the QDQ model written again
            corrected, _ = correct_biases(str(model), result, batches[:-held])
            stage_qdq_model(corrected, result, stage)
        outputs.commit()
    CHOICES.append(choice.chosen.label)
    return time.perf_counter() - start


def main() -> None:
    from encanalyze.onnx import output_sqnr
    from tests.real_models import OCR, fetch, rendered_text

    args = real_model_args(MODELS, 3)
    print("| model | draw | tool | held-out dB | calibration dB | time s |")
    print("| --- | --- | --- | --- | --- | --- |")
    summary: dict = {}
    for name in args.models:
        member, (h, w) = MODELS[name]
        try:
            source = fetch(OCR, f"rapidocr_onnxruntime/models/{member}")
        except BaseException as err:  # pytest's Skipped outside pytest: no registry
            print(f"| {name} | | skipped: {err} | | | |")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            model = prepare(source, folder)
            for draw in range(args.draws):
                seed = 1000 * draw
                calib = [rendered_text(BATCH, h, w, seed=seed + s) for s in range(BATCHES)]
                held = [rendered_text(BATCH, h, w, seed=seed + 100 + s) for s in range(BATCHES)]
                runs = []
                for method in ("MinMax", "Entropy", "Percentile"):
                    out = folder / f"ort_{method}.onnx"
                    seconds = ort_quantize(model, calib, method, out)
                    runs.append((f"ONNX Runtime {method}", out, seconds))
                out = folder / "encanalyze.onnx"
                seconds = encanalyze_quantize(model, calib, out)
                runs.append(("encanalyze default", out, seconds))
                for tool, path, seconds in runs:
                    held_db = _mean(output_sqnr(str(model), str(path), held))
                    calib_db = _mean(output_sqnr(str(model), str(path), calib))
                    label = f"{tool} ({CHOICES[-1]})" if tool.startswith("encanalyze") else tool
                    print(
                        f"| {name} | {draw} | {label} | {held_db:.2f} | {calib_db:.2f} | "
                        f"{seconds:.1f} |"
                    )
                    summary.setdefault((name, tool), []).append((held_db, calib_db, seconds))
                sys.stdout.flush()
    print()
    print("| model | tool | held-out dB, mean (min..max) | calibration dB, mean | time s, mean |")
    print("| --- | --- | --- | --- | --- |")
    for (name, tool), rows in summary.items():
        a = np.array(rows)
        held = f"{a[:, 0].mean():.2f} ({a[:, 0].min():.2f}..{a[:, 0].max():.2f})"
        print(f"| {name} | {tool} | {held} | {a[:, 1].mean():.2f} | {a[:, 2].mean():.1f} |")


def _mean(sqnr: dict) -> float:
    return float(np.mean(list(sqnr.values())))


if __name__ == "__main__":
    main()
