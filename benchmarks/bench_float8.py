"""FP8 (E4M3FN) model quality against ONNX Runtime's own FP8 calibration, on real models.

The models, data and preparation of ``bench_quality.py`` (PaddleOCR's classifier, detector and
recognizer; rendered text, 8 calibration and 8 held-out batches of 8 per draw). Both tools
quantize Conv, ConvTranspose, Gemm and MatMul to FLOAT8E4M3FN QDQ with per-channel weights:

- ONNX Runtime's ``quantize_static`` (``QFLOAT8E4M3FN`` activations and weights; FP8 takes only
  its ``Distribution`` calibrator);
- encanalyze's FP8 model job: ``encanalyze.onnx._float8.calibrate_float8`` on 6 of the 8
  calibration batches, the activations' method chosen by the QDQ model's output on the other
  two (the command's ``--number-format float8_e4m3fn --holdout 0.25``).

Every QDQ model runs with ONNX Runtime's basic graph optimizations (``FLOAT8_SESSION``: its
level-2 fusions change FP8 QDQ models' outputs), scored by output SQNR against the float model
on the held-out and the calibration samples.

    python benchmarks/bench_float8.py [--models classifier detector recognizer] [--draws 2]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_quality import BATCH, BATCHES, MODELS, OPS, _mean, prepare  # noqa: E402
from benchmarks.common import real_model_args  # noqa: E402


def ort_float8(model: Path, batches: list, out: Path) -> float:
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
        per_channel=True,
        activation_type=QuantType.QFLOAT8E4M3FN,
        weight_type=QuantType.QFLOAT8E4M3FN,
        calibrate_method=CalibrationMethod.Distribution,
    )
    return time.perf_counter() - start


def encanalyze_float8(model: Path, batches: list, out: Path) -> tuple[float, str]:
    from encanalyze.onnx._float8 import calibrate_float8, choose_float8_activations, save_model

    start = time.perf_counter()
    held = max(1, len(batches) // 4)
    result = calibrate_float8(str(model), batches[:-held], op_types=OPS)
    method, _, qdq = choose_float8_activations(str(model), result, batches[-held:])
    save_model(qdq, out)
    return time.perf_counter() - start, method


def main() -> None:
    from encanalyze.onnx import output_sqnr
    from encanalyze.onnx._float8 import FLOAT8_SESSION
    from tests.real_models import OCR, fetch, rendered_text

    args = real_model_args(MODELS, 2)
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
                ort_out, ours_out = folder / "ort_fp8.onnx", folder / "encanalyze_fp8.onnx"
                runs = []
                try:
                    runs.append(
                        (
                            "ONNX Runtime FP8 (Distribution)",
                            ort_out,
                            ort_float8(model, calib, ort_out),
                        )
                    )
                except Exception as err:  # noqa: BLE001 - a peer's failure is a row
                    why = " ".join(str(err).split())[:100]
                    print(
                        f"| {name} | {draw} | ONNX Runtime FP8 (Distribution) | fails: {why} | | |"
                    )
                ours_s, method = encanalyze_float8(model, calib, ours_out)
                runs.append((f"encanalyze FP8 ({method})", ours_out, ours_s))
                for tool, path, seconds in runs:
                    scores = [
                        _mean(output_sqnr(str(model), str(path), data, None, FLOAT8_SESSION))
                        for data in (held, calib)
                    ]
                    print(
                        f"| {name} | {draw} | {tool} | {scores[0]:.2f} | {scores[1]:.2f} | "
                        f"{seconds:.1f} |"
                    )
                    key = (name, tool.split(" (")[0])
                    summary.setdefault(key, []).append((*scores, seconds))
                sys.stdout.flush()
    print()
    print("| model | tool | held-out dB, mean (min..max) | calibration dB, mean | time s, mean |")
    print("| --- | --- | --- | --- | --- |")
    for (name, tool), rows in summary.items():
        a = np.array(rows)
        held = f"{a[:, 0].mean():.2f} ({a[:, 0].min():.2f}..{a[:, 0].max():.2f})"
        print(f"| {name} | {tool} | {held} | {a[:, 1].mean():.2f} | {a[:, 2].mean():.1f} |")


if __name__ == "__main__":
    main()
