"""Peak memory of the command on one large tensor, beyond the interpreter's own baseline.

Goal (issue 12): at most 2x the tensor's size. The command runs in a subprocess; its peak
resident set (``ru_maxrss``) is compared with that of the same interpreter importing the
command and loading the tensor file's bytes once (the tensor itself).

    python benchmarks/bench_memory.py [--values 100000000] [--method all]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402


def peak_rss(code: list[str]) -> tuple[float, float]:
    """Run ``code`` in a fresh interpreter; return (peak RSS in bytes, seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run([sys.executable, *code], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if after <= before:
        raise RuntimeError("a later child must peak higher than the earlier ones")
    return after * 1024.0, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--values", type=int, default=100_000_000)
    parser.add_argument("--method", default="all")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.npy"
        x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.values,))
        rng = np.random.default_rng(0)
        for i in range(0, args.values, 1 << 22):
            x[i : i + (1 << 22)] = rng.standard_normal(min(1 << 22, args.values - i))
        x.flush()
        del x
        tensor = args.values * 4
        # ru_maxrss of children is a running maximum: measure the baseline first
        base, _ = peak_rss(["-c", f"import encanalyze.cli, numpy; numpy.load({str(path)!r})"])
        run, seconds = peak_rss(
            ["-m", "encanalyze", "calibrate", str(path), "--method", args.method]
        )
    print(f"# {args.values:.0e} float32 values ({tensor / 2**20:.0f} MiB); {machine()}")
    print(f"baseline (interpreter + the tensor): {base / 2**20:8.0f} MiB")
    print(f"command --method {args.method:<10}        {run / 2**20:8.0f} MiB  ({seconds:.0f} s)")
    print(f"peak extra beyond the baseline: {(run - base) / tensor:.2f}x the tensor (goal <= 2x)")


if __name__ == "__main__":
    main()
