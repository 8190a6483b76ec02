"""all_reduce_stats of 4096-channel, 2048-bin histograms across 2 gloo ranks on the CPU.

Reports the time of one all_reduce_stats call (MIN of the ranges, local re-binning, SUM of the
counts) and of a bare SUM all-reduce of a same-sized float64 tensor, for scale.

    python benchmarks/bench_allreduce.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

CHANNELS, BINS, REPEAT = 4096, 2048, 5


def _rank(rank: int, world: int, init: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from encanalyze import PercentileEncodingAnalyzer
    from encanalyze.distributed import all_reduce_stats

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    x = np.random.default_rng(rank).standard_normal((CHANNELS, 256), dtype=np.float32)
    analyzers = []
    for _ in range(REPEAT + 1):
        a = PercentileEncodingAnalyzer((CHANNELS, 1), num_bins=BINS)
        a.update_stats(torch.from_numpy(x * (1 + rank)))
        analyzers.append(a)
    all_reduce_stats(analyzers[0])  # warm-up
    times = []
    for a in analyzers[1:]:
        dist.barrier()
        t0 = time.perf_counter()
        all_reduce_stats(a)
        times.append(time.perf_counter() - t0)
    bare = torch.zeros((CHANNELS, BINS + 1), dtype=torch.float64)
    dist.all_reduce(bare)
    raw = []
    for _ in range(REPEAT):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(bare)
        raw.append(time.perf_counter() - t0)
    if rank == 0:
        Path(out).write_text(f"{min(times) * 1e3:.1f} {min(raw) * 1e3:.1f}")
    dist.destroy_process_group()


def main() -> None:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result")
        mp.spawn(_rank, args=(2, os.path.join(tmp, "init"), out), nprocs=2, join=True)
        ours, raw = Path(out).read_text().split()
    print(f"# all_reduce_stats, {CHANNELS} channels x {BINS} bins, 2 gloo ranks; {machine()}")
    print(f"all_reduce_stats: {ours} ms; one bare SUM all-reduce of the same counts: {raw} ms")


if __name__ == "__main__":
    main()
