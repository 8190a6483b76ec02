"""Issue 21's model-job row: its baseline measured in the same run, and its goal.

- ``model-job``: the command's model job on the public OCR recognizer (PaddleOCR v4, fetched
  with pip into ``.model-cache/``; 8 samples of 3x48x160 rendered text) with every
  ``--method``, each in a child process, against ``--method percentile``. Goal: the default
  within 5x of it, no method above 10x.

Issue 21's analyzer rows (per-channel percentile and SQNR against the reference, the small
min-max tensor, JAX) are timed, with issue 33's goals, by ``benchmarks/bench_issue33.py``;
``benchmarks/bench_model.py`` is the torch model row; ``bash benchmarks/gpu_check.sh`` the GPU
rows.

    python benchmarks/bench_issue21.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from common import goal_row, run_rows  # noqa: E402


def _print(*cells) -> None:
    goal_row(*cells, base_width=28, goal_width=10)


def row_model_job() -> None:
    from tests.real_models import OCR, fetch, rendered_text

    try:
        model = fetch(OCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx")
    except BaseException as err:  # pytest's Skipped outside pytest: no registry
        print(f"model-job: skipped ({err})")
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "calib.npz"
        np.savez(data, x=rendered_text(8, 48, 160))
        times = {}
        for method in ("percentile", "auto", "all", "minmax", "sqnr", "mse", "entropy", "ema"):
            cmd = [sys.executable, "-m", "encanalyze", "calibrate", str(model), "--data"]
            cmd += [str(data), "--method", method, "--format", "json"]
            start = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            times[method] = time.perf_counter() - start
            if out.returncode != 0:
                print(f"model-job --method {method}: failed\n{out.stderr[-2000:]}")
                return
    base = times["percentile"]
    for method, t in times.items():
        if method == "percentile":
            continue
        goal = 5 if method == "auto" else 10
        label = "default (auto)" if method == "auto" else method
        _print(
            f"model-job {label}",
            f"{t:.1f} s",
            f"{base:.1f} s",
            "--method percentile",
            f"{t / base:.1f}x",
            f"<= {goal}x",
            t <= goal * base,
        )


ROWS = {"model-job": row_model_job}


def main() -> None:
    run_rows(ROWS, __doc__, "issue 21 rows, float32, 8-bit", base_width=28)


if __name__ == "__main__":
    main()
