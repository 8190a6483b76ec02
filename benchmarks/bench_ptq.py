"""AIMET's model-level steps (BatchNorm folding, CLE, bias correction) on real models.

PaddleOCR's classifier, detector and recognizer as ``rapidocr-onnxruntime`` ships them (opset
raised to 13, nothing else done), quantized by encanalyze's default model job
(``bench_quality.encanalyze_quantize``: 6 calibration batches of 8 rendered-text samples, the
choice on 2) on the model as it is, after ``--fold-batchnorm`` (``encanalyze.onnx.fold_batchnorm``),
after it and ``--cross-layer-equalization`` (``encanalyze.onnx.equalize_layers``), and after
both with ``--bias-correction`` (``encanalyze.onnx.correct_biases`` of the chosen encodings), with
per-channel int8 weights (the default) and per-tensor ones (where equalization matters), and by
ONNX Runtime's ``quantize_static`` (Percentile) after its own ``quant_pre_process`` (which folds
BatchNorm too); every QDQ model scored by its output SQNR against the shipped float model on 64
held-out samples, ``--draws`` sample sets.

    python benchmarks/bench_ptq.py [--models classifier detector recognizer] [--draws 2]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_quality import (  # noqa: E402
    BATCH,
    BATCHES,
    MODELS,
    encanalyze_quantize,
    ort_quantize,
    prepare,
)
from benchmarks.common import machine, real_model_args  # noqa: E402


def main() -> None:
    import onnx
    from onnx import version_converter

    from encanalyze.onnx import equalize_layers, fold_batchnorm, output_sqnr
    from tests.real_models import OCR, fetch, rendered_text

    args = real_model_args(MODELS, 2)
    print(f"# bench_ptq ({machine()})")
    print("| model | draw | weights | tool | held-out dB |")
    print("| --- | --- | --- | --- | --- |")
    means: dict = {}
    for name in args.models:
        member, (h, w) = MODELS[name]
        source = fetch(OCR, f"rapidocr_onnxruntime/models/{member}")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            shipped = folder / "shipped.onnx"
            onnx.save(version_converter.convert_version(onnx.load(str(source)), 13), shipped)
            folded, norms = fold_batchnorm(str(shipped))
            onnx.save(folded, folder / "folded.onnx")
            equalized, pairs = equalize_layers(folded)
            onnx.save(equalized, folder / "equalized.onnx")
            peer_model = prepare(source, folder)  # ONNX Runtime's own pre-processing
            print(f"| {name} | | | {len(norms)} BatchNormalization folded, {len(pairs)} Conv "
                  "pairs equalized | |")  # fmt: skip
            steps = "--fold-batchnorm --cross-layer-equalization"
            models = {  # tool: (model, bias correction)
                "encanalyze default, as shipped": (shipped, False),
                "encanalyze default, --fold-batchnorm": (folder / "folded.onnx", False),
                f"encanalyze default, {steps}": (folder / "equalized.onnx", False),
                f"encanalyze default, {steps} --bias-correction": (folder / "equalized.onnx", True),
            }
            for draw in range(args.draws):
                seed = 1000 * draw
                calib = [rendered_text(BATCH, h, w, seed=seed + s) for s in range(BATCHES)]
                held = [rendered_text(BATCH, h, w, seed=seed + 100 + s) for s in range(BATCHES)]
                for per_channel in (True, False):
                    weights = "per channel" if per_channel else "per tensor"
                    runs = {}
                    for tool, (model, corrected) in models.items():
                        out = folder / f"{len(runs)}.onnx"
                        encanalyze_quantize(model, calib, out, per_channel, corrected)
                        runs[tool] = out
                    out = folder / "ort.onnx"
                    ort_quantize(peer_model, calib, "Percentile", out, per_channel)
                    runs["ONNX Runtime Percentile (quant_pre_process)"] = out
                    for tool, path in runs.items():
                        sqnr = output_sqnr(str(shipped), str(path), held)
                        db = float(np.mean(list(sqnr.values())))
                        means.setdefault((name, weights, tool), []).append(db)
                        print(f"| {name} | {draw} | {weights} | {tool} | {db:.2f} |", flush=True)
    print("\n| model | weights | tool | held-out dB, mean over draws (each draw) |")
    print("| --- | --- | --- | --- |")
    for (name, weights, tool), dbs in means.items():
        each = " / ".join(f"{d:.2f}" for d in dbs)
        print(f"| {name} | {weights} | {tool} | {np.mean(dbs):.2f} ({each}) |")


if __name__ == "__main__":
    main()
