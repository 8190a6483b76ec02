"""Issue 33's table: every row's two sides timed in this run, on this machine, with its goal.

Rows (``--rows``, comma-separated; default: all):

- ``percentile-weights``: per-channel percentile (update + compute) of a (1024, 512) weight,
  NumPy and torch inputs, against the native per-channel histogram in the same library (the
  bin formula, one ``bincount`` of ``row * bins + bin``, then ``cumsum``: what any exact
  per-channel percentile must do) and against the reference. Goals: <= 2x native, >= 25x the
  reference.
- ``percentile-activations``: per-channel percentile of two (256, 2048) batches (the second
  wider: its histograms are re-binned) against two native per-channel histograms. Goal: <= 2x.
- ``sqnr-asym``, ``sqnr-sym``: per-channel SQNR of the (1024, 512) weight against the
  reference. Goal: >= 20x.
- ``minmax-small``: min-max update + compute of one (64, 64) tensor, NumPy and torch, against
  the reference. Goal: at most half its time.
- ``jax``: percentile updates of JAX (CPU) arrays against NumPy's, per channel and per tensor.
  Goal: <= 2x.
- ``torch-model``: ``encanalyze.torch.calibrate`` with a histogram method on a small CNN against
  its forward pass over the same batches. Goal: <= 2x.
- ``model-job``: the default model job (``bench_quality.py``'s: the ``auto`` candidates on 6
  batches, the choice by the output on 2, the chosen QDQ model written) against ONNX Runtime's
  ``quantize_static`` with its Percentile and MinMax calibrators on the same prepared model and
  8 batches, for each real model of the test suite (fetched with pip; skipped without the
  registry). Goals: <= 1.5x Percentile, <= 3x MinMax.

The reference is AIMET's released analyzers (``bash ../shared/reference/install.sh``); without
it its rows say "not measured".

    python benchmarks/bench_issue33.py [--rows percentile-weights,sqnr-sym,...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import calibration, compare, goal_row, run_rows, versus_reference, with_reference  # noqa: E402

import encanalyze as ea  # noqa: E402

WIDTHS = {"base_width": 30, "goal_width": 10}
NUM_BINS = 2048


def _print(*cells) -> None:
    goal_row(*cells, **WIDTHS)


def _weights(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_t(4, shape) * 0.05).astype(np.float32)


def native_numpy(x: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """Per-row histograms and their cumulative counts: NumPy's least exact work."""
    rows = x.shape[0]
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    t = x - lo
    t /= hi - lo
    t *= num_bins
    np.clip(t, 0, num_bins - 1, out=t)
    idx = t.astype(np.intp)
    idx += np.arange(rows)[:, None] * num_bins
    counts = np.bincount(idx.ravel(), minlength=rows * num_bins).reshape(rows, num_bins)
    return np.cumsum(counts, axis=1)


def native_torch(x, num_bins: int = NUM_BINS):
    """Per-row histograms and their cumulative counts: torch's least exact work."""
    import torch

    rows = x.shape[0]
    lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    t = (x - lo).div_(hi - lo).mul_(num_bins).clamp_(0, num_bins - 1).long()
    t += torch.arange(rows)[:, None] * num_bins
    counts = torch.bincount(t.reshape(-1), minlength=rows * num_bins).reshape(rows, num_bins)
    return torch.cumsum(counts, dim=1)


def _versus_native(label, t, t_native, goal=2):
    _print(label, f"{t * 1e3:.2f} ms", f"{t_native * 1e3:.2f} ms", "native per-channel histogram",
           f"{t / t_native:.2f}x", f"<= {goal}x", t <= goal * t_native)  # fmt: skip


def row_percentile_weights() -> None:
    import torch

    w = _weights((1024, 512))
    wt = torch.from_numpy(w)
    fns = [
        calibration(ea.PercentileEncodingAnalyzer, w, (1024, 1), percentile=99.99),
        lambda: native_numpy(w),
        calibration(ea.PercentileEncodingAnalyzer, wt, (1024, 1), percentile=99.99),
        lambda: native_torch(wt),
    ]
    t_np, n_np, t_torch, n_torch = compare(fns, repeat=8, warmup=2, inner=3)
    _, ref = with_reference(
        "PercentileEncodingAnalyzer", w, (1024, 1), fns[0], repeat=5, percentile=99.99
    )
    for label, t, native in (("percentile-weights", t_np, n_np), ("  torch", t_torch, n_torch)):
        _versus_native(label, t, native)
        versus_reference("", t, ref, goal=25, **WIDTHS)


def row_percentile_activations() -> None:
    import torch

    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((256, 2048), dtype=np.float32) * (1 + i) for i in range(2)]
    xts = [torch.from_numpy(x) for x in xs]

    def ours(batches):
        def run():
            a = ea.PercentileEncodingAnalyzer((256, 1), percentile=99.99)
            for b in batches:
                a.update_stats(b)
            return a.compute_encodings(255, False)

        return run

    fns = [
        ours(xs),
        lambda: [native_numpy(x) for x in xs],
        ours(xts),
        lambda: [native_torch(x) for x in xts],
    ]
    t_np, n_np, t_torch, n_torch = compare(fns, repeat=8, warmup=2, inner=3)
    _versus_native("percentile-activations", t_np, n_np)
    _versus_native("  torch", t_torch, n_torch)


def row_sqnr(sym: bool) -> None:
    w = _weights((1024, 512))
    ours = calibration(ea.SqnrEncodingAnalyzer, w, (1024, 1), sym=sym)
    t, ref = with_reference("SqnrEncodingAnalyzer", w, (1024, 1), ours, sym=sym, repeat=2)
    versus_reference(f"sqnr-{'sym' if sym else 'asym'} (1024,1)x512", t, ref, **WIDTHS)


def row_minmax_small() -> None:
    import torch

    w = _weights((64, 64))
    fns = [
        calibration(ea.MinMaxEncodingAnalyzer, w, (1,)),
        calibration(ea.MinMaxEncodingAnalyzer, torch.from_numpy(w), (1,)),
        lambda: (w.min(), w.max()),
    ]
    t_np, t_torch, t_native = compare(fns, repeat=3000, warmup=100)
    _, ref = with_reference("MinMaxEncodingAnalyzer", w, (1,), fns[0], repeat=3000)
    for label, t in (("minmax-64x64 numpy", t_np), ("minmax-64x64 torch", t_torch)):
        versus_reference(label, t, ref, goal=2, scale=1e6, unit="us", **WIDTHS)
    print(f"{'':<24}{'':>12}{t_native * 1e6:>11.1f} us  native min + max (context)")


def row_jax() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    for label, shape in (("per channel", (256, 1)), ("per tensor", (1,))):
        xs = [rng.standard_normal((256, 1024)).astype(np.float32) * s for s in (1.0, 1.5)]
        xjs = [jnp.asarray(x) for x in xs]

        def updates(batches, shape=shape):
            def run():
                a = ea.PercentileEncodingAnalyzer(shape)
                for b in batches:  # the second, wider batch re-bins
                    a.update_stats(b)
                jax.block_until_ready(a._state)

            return run

        start = time.perf_counter()
        updates([jnp.asarray(x * 3) for x in xs])()
        first = time.perf_counter() - start
        t_np, t_jax = compare([updates(xs), updates(xjs)], repeat=10, warmup=2)
        _print(f"jax percentile {label}", f"{t_jax * 1e3:.2f} ms", f"{t_np * 1e3:.2f} ms",
               f"numpy (first call {first:.2f} s)", f"{t_jax / t_np:.2f}x", "<= 2x",
               t_jax <= 2 * t_np)  # fmt: skip


def row_torch_model() -> None:
    from bench_model import workload

    from encanalyze.torch import calibrate

    net, batches, forward = workload()
    methods = ("percentile", "sqnr")
    runs = [lambda m=m: calibrate(net, batches, activations=m, progress=False) for m in methods]
    t_fwd, *times = compare([forward, *runs], repeat=5, warmup=1)
    for method, t in zip(methods, times):
        _print(f"torch-model {method}", f"{t * 1e3:.0f} ms", f"{t_fwd * 1e3:.0f} ms",
               "the forward passes", f"{t / t_fwd:.2f}x", "<= 2x", t <= 2 * t_fwd)  # fmt: skip


def row_model_job() -> None:
    import logging
    import tempfile
    import warnings

    import bench_quality as bq

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.real_models import OCR, fetch, rendered_text

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    for name, (member, (h, w)) in bq.MODELS.items():
        try:
            source = fetch(OCR, f"rapidocr_onnxruntime/models/{member}")
        except BaseException as err:  # pytest's Skipped outside pytest: no registry
            _print(f"model-job {name}", "-", "not measured", f"skipped: {err}", "-", "-", False)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            model = bq.prepare(source, folder)
            calib = [rendered_text(bq.BATCH, h, w, seed=s) for s in range(bq.BATCHES)]
            best = _model_job_times(bq, model, calib, folder)
        for tool, goal in (("Percentile", 1.5), ("MinMax", 3)):
            ratio = best["ours"] / best[tool]
            ours, base = f"{best['ours']:.2f} s", f"{best[tool]:.2f} s"
            _print(f"model-job {name}", ours, base, f"ONNX Runtime {tool}", f"{ratio:.2f}x",
                   f"<= {goal}x", ratio <= goal)  # fmt: skip


def _model_job_times(bq, model: Path, calib: list, folder: Path) -> dict[str, float]:
    """Best wall time of each tool on ``model`` over 3 interleaved rounds."""
    import contextlib
    import io

    runs = {
        "ours": lambda: bq.encanalyze_quantize(model, calib, folder / "ours.onnx"),
        "Percentile": lambda: bq.ort_quantize(model, calib, "Percentile", folder / "p.onnx"),
        "MinMax": lambda: bq.ort_quantize(model, calib, "MinMax", folder / "m.onnx"),
    }
    best = dict.fromkeys(runs, float("inf"))
    with contextlib.redirect_stdout(io.StringIO()):  # ONNX Runtime's progress prints
        for _ in range(3):
            for tool, run in runs.items():
                best[tool] = min(best[tool], run())
    return best


ROWS = {
    "percentile-weights": row_percentile_weights,
    "percentile-activations": row_percentile_activations,
    "sqnr-asym": lambda: row_sqnr(False),
    "sqnr-sym": lambda: row_sqnr(True),
    "minmax-small": row_minmax_small,
    "jax": row_jax,
    "torch-model": row_torch_model,
    "model-job": row_model_job,
}


def main() -> None:
    run_rows(ROWS, __doc__, "issue 33 rows, float32, 8-bit", base_width=WIDTHS["base_width"])


if __name__ == "__main__":
    main()
