"""The analysis report on real models: what it shows (the quality table) and what it costs.

For PaddleOCR's classifier, detector and recognizer (``bench_quality.py``'s models and data:
rendered text, 48 calibration and 16 held-out samples in batches of 8), the command's model
job with ``--method all --report`` (``--holdout 0.25``), then, from the page's own data: the
output SQNR of every row of its comparison (encanalyze's per-method QDQ models, the chosen
encodings, ONNX Runtime's MinMax, Entropy and Percentile calibrators on the same data), the
most sensitive layer, the largest gain in float, the job's and the report's time and the
page's size.

    python benchmarks/bench_report.py [--models classifier detector recognizer]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_quality import BATCH, MODELS  # noqa: E402


def main() -> None:
    import logging
    import warnings

    from encanalyze.cli import main as command
    from tests.real_models import OCR, fetch, rendered_text

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    print("| model | row | output SQNR dB (held-out) |")
    print("| --- | --- | --- |")
    notes = []
    for name in args.models:
        member, (h, w) = MODELS[name]
        try:
            source = fetch(OCR, f"rapidocr_onnxruntime/models/{member}")
        except BaseException as err:  # pytest's Skipped outside pytest: no registry
            print(f"| {name} | skipped: {err} | |")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            x = np.concatenate([rendered_text(BATCH, h, w, seed=s) for s in range(8)])
            np.savez(folder / "data.npz", x=x)
            report = folder / "report.html"
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # its own JSON report
                status = command(
                    ["calibrate", str(source), "--data", str(folder / "data.npz"), "--batch-size",
                     str(BATCH), "--method", "all", "--report", str(report), "--format", "json"]
                )  # fmt: skip
            seconds = time.perf_counter() - start
            if status != 0:
                print(f"| {name} | the job failed ({status}) | |")
                continue
            page = report.read_text()
            raw = re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1)
            data = json.loads(raw.replace("<\\/", "</"))
            for row in data["comparison"]:
                db = row["output_sqnr_db"]
                print(f"| {name} | {row['label']} | {'n/a' if db is None else f'{db:.2f}'} |")
            layer = data["sensitivity"][0]
            gains = [q for q in data["quantizers"] if q.get("gain_db") is not None]
            top = max(gains, key=lambda q: q["gain_db"])
            worst = min(
                v for v in (layer["weights_sqnr_db"], layer["activations_sqnr_db"]) if v is not None
            )
            notes.append(
                f"{name}: {len(data['quantizers'])} quantizers, {len(data['sensitivity'])} "
                f"layers; most sensitive {layer['layer']} ({layer['op']}, {worst:.2f} dB alone); "
                f"largest gain in float {top['name']} (+{top['gain_db']:.2f} dB); job "
                f"{seconds:.1f} s, of which the report {data['summary']['report built in']}; "
                f"page {len(page) / 1e6:.2f} MB"
            )
            sys.stdout.flush()
    print()
    for line in notes:
        print(f"- {line}")


if __name__ == "__main__":
    main()
