"""Calibration overhead per batch on a small CNN (torch, CPU): the model's own forward pass
against the forward pass with calibration hooks, over the same batches, in one run.

Goal: <= 1.5x for min-max, <= 3x for the histogram methods (activations per tensor; weights
calibrated once at the end, included).

    python benchmarks/bench_model.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, machine  # noqa: E402

from encanalyze.torch import calibrate  # noqa: E402


def model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(64 * 8 * 8, 10),
    ).eval()


def main() -> None:
    torch.manual_seed(0)
    net = model()
    batches = [torch.randn(16, 3, 32, 32) for _ in range(20)]

    def forward():
        with torch.no_grad():
            for b in batches:
                net(b)

    runs = {
        m: (lambda m=m: calibrate(net, batches, activations=m, progress=False))
        for m in ("minmax", "percentile", "sqnr", "mse")
    }
    times = compare([forward, *runs.values()], repeat=5, warmup=1)
    print(f"# small CNN, 20 batches of (16, 3, 32, 32); {machine()}, torch {torch.__version__}")
    print(f"{'activations':<14}{'ms/batch':>10}{'x forward':>11}")
    print(f"{'(forward)':<14}{times[0] / 20 * 1e3:10.2f}{1.0:11.2f}")
    for name, t in zip(runs, times[1:]):
        print(f"{name:<14}{t / 20 * 1e3:10.2f}{t / times[0]:11.2f}")


if __name__ == "__main__":
    main()
