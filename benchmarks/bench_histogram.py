"""Histogram statistics (PercentileEncodingAnalyzer) against one native histogram pass.

Native baselines over the same values: torch: ``torch.histc``; NumPy: the faster of
``np.histogram`` and a hand-written index pass + ``np.bincount``. Goals: per-channel (512 x 4096,
two updates plus compute) within 3x; per-tensor (4M values, one update plus compute) within
1.5x. Also prints peak extra memory of an update (NumPy, tracemalloc) against the input size.
``--device cuda``: per-channel 1024 x 8192 on torch CUDA and CuPy against one ``torch.histc``
pass over the same 8M values (goal: within 3x).

    python benchmarks/bench_histogram.py [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, machine, row  # noqa: E402

from encanalyze import PercentileEncodingAnalyzer  # noqa: E402

B = 2048
CASES = [  # name, batch shape, encoding shape, updates
    ("per-channel 512x4096 x2", (512, 4096), (512, 1), 2),
    ("per-tensor 4M x1", (4 * 1024 * 1024,), (1,), 1),
]
GPU_CASES = [("per-channel 1024x8192 x2", (1024, 8192), (1024, 1), 2)]


def _numpy_index_bincount(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(), x.max()
    t = (x - lo) * np.float32(B / (hi - lo))
    np.clip(t, 0, B - 1, out=t)
    return np.bincount(t.astype(np.intp).ravel(), minlength=B)


def _numpy_rows_bincount(x: np.ndarray) -> np.ndarray:
    """A native per-row histogram: every row over its own range, one offset bincount."""
    rows = x.reshape(x.shape[0], -1)
    lo, hi = rows.min(axis=1, keepdims=True), rows.max(axis=1, keepdims=True)
    t = (rows - lo) * (np.float32(B) / (hi - lo))
    np.clip(t, 0, B - 1, out=t)
    keys = t.astype(np.intp) + (np.arange(rows.shape[0]) * B)[:, None]
    return np.bincount(keys.ravel(), minlength=rows.shape[0] * B)


def bench(backend: str, device: str = "cpu") -> list[str]:
    rng = np.random.default_rng(0)
    lines = []
    for name, shape, enc, updates in CASES if device == "cpu" else GPU_CASES:
        batches = [rng.standard_normal(shape, dtype=np.float32) * (1 + i) for i in range(updates)]
        sync = None
        if backend == "numpy":
            xs = batches

            def natives(xs=xs):
                return [
                    lambda: [np.histogram(x, B) for x in xs],
                    lambda: [_numpy_index_bincount(x) for x in xs],
                ]
        else:
            import torch

            ts = [torch.from_numpy(b).to(device) for b in batches]
            sync = torch.cuda.synchronize if device != "cpu" else None
            xs = ts
            if backend == "cupy":  # same data, shared with torch through DLPack
                import cupy

                xs = [cupy.from_dlpack(t) for t in ts]

            def natives(ts=ts):
                return [lambda: [torch.histc(t, B) for t in ts]]

        def ours(xs=xs, enc=enc):
            analyzer = PercentileEncodingAnalyzer(enc, num_bins=B, percentile=99.9)
            for x in xs:
                analyzer.update_stats(x)
            return analyzer.compute_encodings(255, False)

        fns = natives()
        per_row = backend == "numpy" and len(enc) > 1
        if per_row:  # context: a native pass that also keeps the channels apart
            fns.append(lambda xs=xs: [_numpy_rows_bincount(x) for x in xs])
        *t_native, t_ours = compare([*fns, ours], repeat=7, sync=sync)
        label = backend if device == "cpu" else f"{backend}-{device}"
        base = min(t_native[:-1] if per_row else t_native)
        lines.append(
            row(label, name, f"{base * 1e3:.2f}", f"{t_ours * 1e3:.2f}", f"{t_ours / base:.2f}")
        )
        if per_row:
            lines.append(
                row(
                    label,
                    "  vs per-row bincount",
                    f"{t_native[-1] * 1e3:.2f}",
                    f"{t_ours * 1e3:.2f}",
                    f"{t_ours / t_native[-1]:.2f}",
                )
            )
    return lines


def peak_memory() -> str:
    x = np.random.default_rng(0).standard_normal((512, 4096), dtype=np.float32)
    analyzer = PercentileEncodingAnalyzer((1, 4096), num_bins=B)  # channels on the last axis
    analyzer.update_stats(x)
    tracemalloc.start()
    analyzer.update_stats(x * 2)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    table = 4096 * B * 4
    return (
        f"peak extra memory of a second update, (1, 4096) encodings on a {x.nbytes >> 20} MiB "
        f"input: {peak / 2**20:.1f} MiB = {peak / x.nbytes:.1f} x input "
        f"+ ({table >> 20} MiB per E x num_bins float32 table)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    args = parser.parse_args()
    print(f"# Percentile histograms, {B} bins, float32; {machine()}")
    print(row("backend", "case", "native ms", "ours ms", "ratio"))
    backends = ["numpy"] if args.device == "cpu" else []
    try:
        import torch  # noqa: F401

        backends.append("torch")
    except ImportError:
        pass
    if args.device != "cpu":
        try:
            import cupy  # noqa: F401

            backends.append("cupy")
        except ImportError:
            pass
    for b in backends:
        for line in bench(b, args.device):
            print(line, flush=True)
    if args.device == "cpu":
        print(peak_memory())


if __name__ == "__main__":
    main()
