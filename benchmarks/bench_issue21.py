"""Issue 21's table: each row one workload, its baseline measured in the same run, its goal.

Rows (``--rows``, comma-separated; default: all):

- ``model-job``: the command's model job on the public OCR recognizer (PaddleOCR v4, fetched
  with pip into ``.model-cache/``; 8 samples of 3x48x160 rendered text) with every
  ``--method``, each in a child process, against ``--method percentile``. Goal: the default
  within 5x of it, no method above 10x.
- ``percentile-weights``: per-channel percentile of a (1024, 512) weight (update and compute),
  NumPy and torch inputs, against one ``torch.histc`` pass over the same values and the
  reference on them, both timed in this run. Goal: <= 3x; >= 20x.
- ``sqnr-sym``: per-channel symmetric SQNR of the same weight against the reference, same run.
  Goal: >= 20x.
- ``minmax-small``: min-max update and compute of one (64, 64) tensor against the reference,
  same run. Goal: at least 2x faster.

The reference is AIMET's released analyzers (``bash ../shared/reference/install.sh``); where it
is not installed its rows say "not measured".
- ``jax``: updates of JAX (CPU) arrays against NumPy's on the same data; the first call of each
  shape (tracing and compiling) reported apart. Goal: within 2x.

``benchmarks/bench_model.py`` is the torch model row; ``bash benchmarks/gpu_check.sh`` the GPU
rows.

    python benchmarks/bench_issue21.py [--rows model-job,percentile-weights,...]
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
from common import calibration, compare, goal_row, run_rows, versus_reference, with_reference  # noqa: E402

import encanalyze as ea  # noqa: E402

WIDTHS = {"base_width": 28, "goal_width": 10}


def _print(*cells) -> None:
    goal_row(*cells, base_width=28, goal_width=10)


def _weights(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_t(4, shape) * 0.05).astype(np.float32)


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


def row_percentile_weights() -> None:
    import torch

    w = _weights((1024, 512))
    wt = torch.from_numpy(w)
    fns = [
        calibration(ea.PercentileEncodingAnalyzer, w, (1024, 1)),
        calibration(ea.PercentileEncodingAnalyzer, wt, (1024, 1)),
        lambda: torch.histc(wt, 2048),
    ]
    t_np, t_torch, t_histc = compare(fns, repeat=10, warmup=1)
    _, ref = with_reference("PercentileEncodingAnalyzer", w, (1024, 1), fns[0])
    for label, t in (("percentile-weights", t_np), ("  torch input", t_torch)):
        versus_reference(label, t, ref, **WIDTHS)
        _print("", "", f"{t_histc * 1e3:.2f} ms", "one torch.histc pass",
               f"{t / t_histc:.1f}x", "<= 3x", t <= 3 * t_histc)  # fmt: skip


def row_sqnr_sym() -> None:
    w = _weights((1024, 512))
    ours = calibration(ea.SqnrEncodingAnalyzer, w, (1024, 1), sym=True)
    t, ref = with_reference("SqnrEncodingAnalyzer", w, (1024, 1), ours, sym=True, repeat=2)
    versus_reference("sqnr-sym (1024,1)x512", t, ref, **WIDTHS)


def row_minmax_small() -> None:
    import torch

    w = _weights((64, 64))
    fns = [
        calibration(ea.MinMaxEncodingAnalyzer, w, (1,)),
        calibration(ea.MinMaxEncodingAnalyzer, torch.from_numpy(w), (1,)),
        lambda: (w.min(), w.max()),
    ]
    t_np, t_torch, t_native = compare(fns, repeat=2000, warmup=50)
    _, ref = with_reference("MinMaxEncodingAnalyzer", w, (1,), fns[0], repeat=2000)
    for label, t in (("minmax-64x64 numpy", t_np), ("minmax-64x64 torch", t_torch)):
        versus_reference(label, t, ref, goal=2, scale=1e6, unit="us", **WIDTHS)
    print(f"{'':<24}{'':>12}{t_native * 1e6:>11.1f} us  native min + max (context)")


def row_jax() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    cases = [
        ("minmax per tensor", ea.MinMaxEncodingAnalyzer, (1,), (256, 1024)),
        ("minmax per channel", ea.MinMaxEncodingAnalyzer, (256, 1), (256, 1024)),
        ("percentile per tensor", ea.PercentileEncodingAnalyzer, (1,), (256, 1024)),
        ("percentile per channel", ea.PercentileEncodingAnalyzer, (256, 1), (256, 1024)),
    ]
    for label, cls, shape, in_shape in cases:
        xs = [rng.standard_normal(in_shape).astype(np.float32) * s for s in (1.0, 1.5)]
        xjs = [jnp.asarray(x) for x in xs]

        def updates(batches, cls=cls, shape=shape):
            a = cls(shape)

            def run():
                for b in batches:  # a second, wider batch: the re-binning path too
                    a.update_stats(b)
                jax.block_until_ready(a._state)

            return run

        first = updates([jnp.asarray(x * 3) for x in xs])
        start = time.perf_counter()
        first()
        warm = time.perf_counter() - start
        t_np, t_jax = compare([updates(xs), updates(xjs)], repeat=10, warmup=2)
        _print(f"jax {label}", f"{t_jax * 1e3:.2f} ms", f"{t_np * 1e3:.2f} ms",
               f"numpy (first call {warm:.2f} s)", f"{t_jax / t_np:.1f}x", "<= 2x",
               t_jax <= 2 * t_np)  # fmt: skip


ROWS = {
    "model-job": row_model_job,
    "percentile-weights": row_percentile_weights,
    "sqnr-sym": row_sqnr_sym,
    "minmax-small": row_minmax_small,
    "jax": row_jax,
}


def main() -> None:
    run_rows(ROWS, __doc__, "issue 21 rows, float32, 8-bit", base_width=28)


if __name__ == "__main__":
    main()
