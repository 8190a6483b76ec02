"""``encanalyze.torch.calibrate(group=...)`` on 1 and 2 gloo ranks (CPU): wall time, same encodings.

The small CNN of ``bench_model.py`` and its 20 batches of (16, 3, 32, 32); with N ranks each
takes every N-th batch, runs it through its copy of the model with one torch thread, and the
ranks all-reduce their statistics. Each rank times its ``calibrate`` call (best of 3 after a
warm-up; the slowest rank counts) and the encodings of every rank are compared with one
process's on all the batches.

    python benchmarks/bench_distributed_torch.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def rank_main(out_dir: str) -> None:
    """One rank (under torchrun): calibrate this rank's batches, time it, save the scales."""
    import torch
    import torch.distributed as dist
    from bench_model import workload

    from encanalyze.torch import calibrate

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    net, batches, _ = workload()
    shard = batches[rank::world]
    best = float("inf")
    for _ in range(4):  # a warm-up and 3 timed runs
        dist.barrier()
        t0 = time.perf_counter()
        result = calibrate(net, shard, activations="percentile", group=dist.group.WORLD)
        best = min(best, time.perf_counter() - t0)
    scales = {k: np.asarray(e.scale) for k, e in result.encodings.items()}
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), seconds=best, **scales)
    dist.destroy_process_group()


def main() -> None:
    sys.path.insert(0, str(HERE.parent))
    import torch
    from bench_model import workload
    from common import machine

    from encanalyze.torch import calibrate

    torch.set_num_threads(1)
    net, batches, _ = workload()
    one = calibrate(net, batches, activations="percentile")
    print(f"# {machine()}, torch {torch.__version__}; 20 batches of (16, 3, 32, 32), percentile")
    for world in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(world), __file__, "--rank", out]  # fmt: skip
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
            if run.returncode:
                raise SystemExit(run.stderr[-3000:])
            ranks = [dict(np.load(Path(out) / f"rank{r}.npz")) for r in range(world)]
        seconds = max(float(r.pop("seconds")) for r in ranks)
        agree = all(np.array_equal(r[k], ranks[0][k]) for r in ranks for k in ranks[0])
        worst = max(
            float(np.max(np.abs(r[k] / np.asarray(e.scale) - 1)))
            for r in ranks
            for k, e in one.encodings.items()
        )
        print(
            f"{world} rank(s): {seconds * 1e3:7.1f} ms per calibration (slowest rank); ranks "
            f"{'agree' if agree else 'DISAGREE'}; largest scale difference from one process "
            f"{worst:.2e} (relative)"
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rank":
        rank_main(sys.argv[2])
    else:
        main()
