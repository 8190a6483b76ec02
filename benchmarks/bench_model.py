"""Calibration overhead per batch on a small CNN (torch, CPU): the model's own forward pass
against the forward pass with calibration hooks, over the same batches, in one run.

Goal: <= 1.5x for min-max, <= 3x for the histogram methods (activations per tensor; weights
calibrated once at the end, included). "(native hist)" is the forward pass plus the least a
histogram update can do per activation (torch min/max, the bin formula and one bincount, with
reused buffers): the floor for any exact histogram method.

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


def workload():
    """Return the small CNN, its 20 batches of (16, 3, 32, 32), and its forward passes over them."""
    torch.manual_seed(0)
    net = model()
    batches = [torch.randn(16, 3, 32, 32) for _ in range(20)]

    def forward():
        with torch.no_grad():
            for b in batches:
                net(b)

    return net, batches, forward


def main() -> None:
    net, batches, forward = workload()
    activations = captured(net, batches)

    def floor():  # forward + one native min/max and one bincount pass per activation
        forward()
        for a in activations:
            native_histogram(a)

    runs = {
        m: (lambda m=m: calibrate(net, batches, activations=m, progress=False))
        for m in ("minmax", "percentile", "sqnr", "mse")
    }
    times = compare([forward, floor, *runs.values()], repeat=5, warmup=1)
    print(f"# small CNN, 20 batches of (16, 3, 32, 32); {machine()}, torch {torch.__version__}")
    print(f"{'activations':<14}{'ms/batch':>10}{'x forward':>11}")
    print(f"{'(forward)':<14}{times[0] / 20 * 1e3:10.2f}{1.0:11.2f}")
    print(f"{'(native hist)':<14}{times[1] / 20 * 1e3:10.2f}{times[1] / times[0]:11.2f}")
    for name, t in zip(runs, times[2:]):
        print(f"{name:<14}{t / 20 * 1e3:10.2f}{t / times[0]:11.2f}")


def captured(net: torch.nn.Module, batches: list) -> list[torch.Tensor]:
    """Every input and output of the quantizable modules, as the calibration hooks see them."""
    out = []

    def hook(module, inputs, output):
        out.extend([inputs[0], output])

    handles = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        for b in batches:
            net(b)
    for h in handles:
        h.remove()
    return out


_BUFFERS = {}


def native_histogram(x: torch.Tensor, num_bins: int = 2048) -> torch.Tensor:
    """The least a histogram update does: min and max, the bin formula, one bincount (buffers
    reused, no checks, no merge)."""
    n = x.numel()
    if n > _BUFFERS.get("n", 0):
        _BUFFERS.update(n=n, f=torch.empty(n), i=torch.empty(n, dtype=torch.int64))
    flat = x.reshape(-1)
    lo, hi = flat.amin(), flat.amax()
    t = torch.sub(flat, lo, out=_BUFFERS["f"][:n])
    t.div_(hi - lo).mul_(num_bins).clamp_(0, num_bins - 1)
    return torch.bincount(_BUFFERS["i"][:n].copy_(t), minlength=num_bins)


if __name__ == "__main__":
    main()
