"""The reference itself (AIMET's torch encoding analyzers) against encanalyze, where installed.

Same workloads as ``bench_speed.py``'s reference rows, both timed in this run (the reference on
torch tensors, ours on NumPy arrays of the same values), with the encodings compared. The
reference is installed by ``bash ../shared/reference/install.sh``; without it this says so and
exits 0: the reference is not a dependency.

    python benchmarks/bench_reference.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import _weights  # noqa: E402
from common import compare, machine, reference  # noqa: E402

import encanalyze as ea  # noqa: E402

WORKLOADS = [  # name, analyzer name, weight shape, symmetric
    ("sqnr-asym (1024,1)x512", "SqnrEncodingAnalyzer", (1024, 512), False),
    ("sqnr-sym (1024,1)x512", "SqnrEncodingAnalyzer", (1024, 512), True),
    ("percentile (1024,1)x512", "PercentileEncodingAnalyzer", (1024, 512), False),
    ("sqnr-asym (64,1)x64", "SqnrEncodingAnalyzer", (64, 64), False),
]


def main() -> None:
    ref = reference()
    if ref is None:
        print("the reference is not installed (bash ../shared/reference/install.sh): nothing run")
        return
    import torch

    print(f"# the reference against encanalyze, float32, 8-bit; {machine()}")
    print(f"{'workload':<26}{'reference':>11}{'ours':>10}{'speed-up':>10}  same")
    for name, cls, shape, sym in WORKLOADS:
        w = _weights(shape)
        theirs = _calibrate(getattr(ref, cls), torch.from_numpy(w), (shape[0], 1), sym)
        ours = _calibrate(getattr(ea, cls), w, (shape[0], 1), sym)
        t_ref, t_ours = compare([theirs, ours], repeat=1, warmup=1)
        same = all(np.allclose(a.detach().numpy(), b, rtol=1e-5) for a, b in zip(theirs(), ours()))
        print(f"{name:<26}{t_ref:>10.2f}s{t_ours:>9.3f}s{t_ref / t_ours:>9.1f}x  {same}")


def _calibrate(cls, x, enc, sym):
    def run():
        analyzer = cls(enc)
        analyzer.update_stats(x)
        return analyzer.compute_encodings(255, sym)

    return run


if __name__ == "__main__":
    main()
