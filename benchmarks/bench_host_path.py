"""Which path host torch batches take: torch's kernels or the NumPy views, at 1 and 2 threads.

``encanalyze._backends.HOST_TWIN_UPDATE`` is the largest host torch batch (in values) whose
update runs on its NumPy views; larger ones run torch's own kernels. With the compiled kernels
built it is every batch. This times ``encanalyze.torch.calibrate`` (percentile and SQNR
activations) on the small CNN of ``bench_model.py`` (20 batches of (16, 3, 32, 32)) with the
threshold at 2**16 (the old one: its large activations on torch's kernels) and at every batch,
with torch at 1 and 2 threads, interleaved, best of 5 after a warm-up, and checks that the
encodings are identical either way.

    python benchmarks/bench_host_path.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import workload  # noqa: E402
from common import compare, machine  # noqa: E402

from encanalyze import _backends  # noqa: E402
from encanalyze.torch import calibrate  # noqa: E402

THRESHOLDS = {"torch kernels past 2**16": 1 << 16, "NumPy views, every batch": math.inf}


def main() -> None:
    net, batches, _ = workload()
    print(f"# small CNN, 20 batches of (16, 3, 32, 32); {machine()}, torch {torch.__version__}")
    print(f"{'threads':<9}{'method':<12}" + "".join(f"{k:>28}" for k in THRESHOLDS) + "   ratio")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for method in ("percentile", "sqnr"):
            results = {}

            def run(label, method=method, results=results):
                _backends.HOST_TWIN_UPDATE = THRESHOLDS[label]
                results[label] = calibrate(net, batches, activations=method, progress=False)

            times = compare([lambda k=k: run(k) for k in THRESHOLDS], repeat=5, warmup=1)
            first, second = results.values()
            same = first.encodings.keys() == second.encodings.keys() and all(
                np.array_equal(np.asarray(e.scale), np.asarray(second[n].scale))
                and np.array_equal(np.asarray(e.offset), np.asarray(second[n].offset))
                for n, e in first.encodings.items()
            )
            cells = "".join(f"{t * 1e3:>25.0f} ms" for t in times)
            print(f"{threads:<9}{method:<12}{cells}{times[0] / times[1]:>7.2f}x"
                  f"  {'identical encodings' if same else 'ENCODINGS DIFFER'}")  # fmt: skip
    _backends.HOST_TWIN_UPDATE = THRESHOLDS["NumPy views, every batch"]


if __name__ == "__main__":
    main()
