"""MinMaxEncodingAnalyzer.update_stats against the fastest native pass over the same data.

Baselines: torch: the faster of ``torch.aminmax`` (one fused pass) and ``torch.amin`` +
``torch.amax`` (along a dim the fused kernel is ~10x slower on the CPU); NumPy has no fused
min-max, so its baseline is ``np.min`` + ``np.max``. Goal: ratio <= 1.3.

    python benchmarks/bench_minmax.py [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, machine, row  # noqa: E402

from encanalyze import MinMaxEncodingAnalyzer  # noqa: E402

N = 4 * 1024 * 1024
LAYOUTS = [  # name, input shape, encoding shape, reduced axis of the native baseline
    ("per-tensor", (N,), (1,), None),
    ("per-channel (C,1) axis 0", (1024, N // 1024), (1024, 1), 1),
    ("per-channel (1,C) last axis", (N // 1024, 1024), (1, 1024), 0),
]


def bench(backend: str, device: str = "cpu") -> list[str]:
    rng = np.random.default_rng(0)
    lines = []
    for name, in_shape, shape, axis in LAYOUTS:
        data = rng.standard_normal(in_shape, dtype=np.float32)
        analyzer = MinMaxEncodingAnalyzer(shape)
        sync = None
        if backend == "numpy":
            x = data

            def native(x=x, axis=axis):
                return np.min(x, axis=axis), np.max(x, axis=axis)
        else:
            import torch

            x = torch.from_numpy(data).to(device)
            sync = torch.cuda.synchronize if device != "cpu" else None

            def native(x=x, axis=axis):
                return torch.aminmax(x) if axis is None else torch.aminmax(x, dim=axis)

            def native2(x=x, axis=axis):
                return torch.amin(x, dim=axis), torch.amax(x, dim=axis)

        natives = [native] if backend == "numpy" or axis is None else [native, native2]
        *t_natives, t_ours = compare(
            [*natives, lambda x=x, a=analyzer: a.update_stats(x)], sync=sync
        )
        t_native = min(t_natives)
        label = backend if device == "cpu" else f"{backend}-{device}"
        lines.append(
            row(
                label,
                name,
                f"{t_native * 1e3:.3f}",
                f"{t_ours * 1e3:.3f}",
                f"{t_ours / t_native:.2f}",
            )
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    args = parser.parse_args()
    print(f"# MinMax update_stats, 4M float32 values; {machine()}")
    print(row("backend", "layout", "native ms", "ours ms", "ratio"))
    backends = ["numpy"] if args.device == "cpu" else []
    try:
        import torch  # noqa: F401

        backends.append("torch")
    except ImportError:
        pass
    for b in backends:
        for line in bench(b, args.device):
            print(line, flush=True)


if __name__ == "__main__":
    main()
