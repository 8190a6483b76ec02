"""BatchNorm folding (``--fold-batchnorm``) on real models as they ship, in one run.

PaddleOCR's classifier (35 ``BatchNormalization`` after its convolutions), detector (3) and
recognizer (6), as ``rapidocr-onnxruntime`` ships them (opset raised to 13, nothing else done):
encanalyze's default model job (``bench_quality.encanalyze_quantize``: 6 calibration batches of
8 rendered-text samples, the choice on 2) on the model as it is and on
``encanalyze.onnx.fold_batchnorm`` of it, and ONNX Runtime's ``quantize_static`` (Percentile)
after its own ``quant_pre_process`` (which folds them as well); every QDQ model scored by its
output SQNR against the shipped float model on 64 held-out samples, ``--draws`` sample sets.

    python benchmarks/bench_batchnorm.py [--models classifier detector recognizer] [--draws 2]
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

    from encanalyze.onnx import fold_batchnorm, output_sqnr
    from tests.real_models import OCR, fetch, rendered_text

    args = real_model_args(MODELS, 2)
    print(f"# bench_batchnorm ({machine()})")
    print("| model | draw | tool | held-out dB |")
    print("| --- | --- | --- | --- |")
    means: dict = {}
    for name in args.models:
        member, (h, w) = MODELS[name]
        source = fetch(OCR, f"rapidocr_onnxruntime/models/{member}")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            shipped = folder / "shipped.onnx"
            onnx.save(version_converter.convert_version(onnx.load(str(source)), 13), shipped)
            folded, names = fold_batchnorm(str(shipped))
            onnx.save(folded, folder / "folded.onnx")
            peer_model = prepare(source, folder)  # ONNX Runtime's own pre-processing
            print(f"| {name} | | {len(names)} BatchNormalization folded | |")
            for draw in range(args.draws):
                seed = 1000 * draw
                calib = [rendered_text(BATCH, h, w, seed=seed + s) for s in range(BATCHES)]
                held = [rendered_text(BATCH, h, w, seed=seed + 100 + s) for s in range(BATCHES)]
                runs = {}
                for label, model in (("as shipped", shipped), ("--fold-batchnorm", folded)):
                    out = folder / "q.onnx"
                    source_model = model if isinstance(model, Path) else folder / "folded.onnx"
                    encanalyze_quantize(source_model, calib, out)
                    runs[f"encanalyze default, {label}"] = out.read_bytes()
                out = folder / "ort.onnx"
                ort_quantize(peer_model, calib, "Percentile", out)
                runs["ONNX Runtime Percentile (quant_pre_process)"] = out.read_bytes()
                for tool, qdq in runs.items():
                    path = folder / "scored.onnx"
                    path.write_bytes(qdq)
                    sqnr = output_sqnr(str(shipped), str(path), held)
                    db = float(np.mean(list(sqnr.values())))
                    means.setdefault((name, tool), []).append(db)
                    print(f"| {name} | {draw} | {tool} | {db:.2f} |", flush=True)
    print("\n| model | tool | held-out dB, mean over draws |")
    print("| --- | --- | --- |")
    for (name, tool), dbs in means.items():
        print(f"| {name} | {tool} | {np.mean(dbs):.2f} |")


if __name__ == "__main__":
    main()
