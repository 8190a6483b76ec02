"""Weight-only MX and NVFP4 models of real models: output SQNR by method, and the cost.

The models, data and preparation of ``bench_quality.py`` (PaddleOCR's classifier, detector and
recognizer; rendered text). Each block format's model job, as the command runs it
(``--number-format F --data``): ``calibrate_blocks`` on the model's Conv, ConvTranspose, Gemm
and MatMul weights, one weight-only block QDQ model per method (``minmax``: the references'
scales; ``mse``: each block's least-error scale), each scored by its output SQNR against the
float model on 8 held-out batches of 8 samples (the choice's data) and on 8 more (fresh
samples, to check the choice). No peer quantizes these formats in ONNX (ONNX Runtime's FP8
calibration is FP8 only; see bench_float8.py); FP8 E4M3 per-channel weights (no activation
quantized) are the reference row.

    python benchmarks/bench_blocks.py [--models classifier detector recognizer]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_quality import BATCH, BATCHES, MODELS, OPS, _mean, prepare  # noqa: E402

FORMATS = ("mxfp8_e4m3", "mxfp6_e2m3", "mxfp4", "nvfp4")


def main() -> None:
    import logging
    import warnings

    import onnx

    from encanalyze import formats
    from encanalyze.cli._parser import NUMBER_FORMATS
    from encanalyze.onnx import block_qdq_model, calibrate_blocks, output_sqnr
    from encanalyze.onnx._float8 import FLOAT8_SESSION, calibrate_float8, float8_qdq_model
    from tests.real_models import OCR, fetch, rendered_text

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    print("| model | format | weights in blocks | minmax dB | mse dB | kept | fresh dB | time s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        member, (h, w) = MODELS[name]
        try:
            source = fetch(OCR, f"rapidocr_onnxruntime/models/{member}")
        except BaseException as err:  # pytest's Skipped outside pytest: no registry
            print(f"| {name} | skipped: {err} | | | | | | |")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            model = onnx.load(str(prepare(source, Path(tmp))))
            judged = [rendered_text(BATCH, h, w, seed=100 + s) for s in range(BATCHES)]
            fresh = [rendered_text(BATCH, h, w, seed=200 + s) for s in range(BATCHES)]
            for number_format in FORMATS:
                scheme, fmt = NUMBER_FORMATS[number_format]
                start = time.perf_counter()
                result = calibrate_blocks(model, scheme, fmt, op_types=OPS)
                scores, models = {}, {}
                for method in ("minmax", "mse"):
                    models[method] = block_qdq_model(model, result, method)
                    scores[method] = _mean(output_sqnr(model, models[method], judged))
                seconds = time.perf_counter() - start
                kept = max(scores, key=scores.get)
                again = _mean(output_sqnr(model, models[kept], fresh))
                total = len(result.weights) + len(result.unquantized)
                print(
                    f"| {name} | {number_format} | {len(result.weights)} of {total} | "
                    f"{scores['minmax']:.2f} | {scores['mse']:.2f} | {kept} | {again:.2f} | "
                    f"{seconds:.1f} |"
                )
                sys.stdout.flush()
            fp8 = calibrate_float8(model, None, formats.E4M3FN, op_types=OPS)
            proto = float8_qdq_model(model, fp8)
            db = [
                _mean(output_sqnr(model, proto, d, None, FLOAT8_SESSION)) for d in (judged, fresh)
            ]
            print(
                f"| {name} | FP8 E4M3 per channel | {len(fp8.encodings)} of "
                f"{len(fp8.encodings) + len(fp8.unquantized)} | {db[0]:.2f} | | | {db[1]:.2f} | |"
            )


if __name__ == "__main__":
    main()
