"""``calibrate(group=...)`` on 1 and 2 gloo ranks (CPU): wall time, the same encodings.

The small CNN of ``bench_model.py`` and its 20 batches of (16, 3, 32, 32), through
``encanalyze.torch.calibrate`` and, exported to ONNX, ``encanalyze.onnx.calibrate``; with N ranks
each takes every N-th batch and runs it through its copy of the model with one thread, the
ranks update their histograms in lockstep and all-reduce the rest. Each rank times its
``calibrate`` call (best of 3 after a warm-up; the slowest rank counts) and the encodings of
every rank are compared with one process's on all the batches.

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


def frontend(name: str, out_dir: str):
    """Return ``(calibrate, model, batches)`` of the torch or ONNX (exported once) CNN."""
    import torch
    from bench_model import workload

    net, batches, _ = workload()
    if name == "torch":
        from encanalyze.torch import calibrate

        return calibrate, net, batches
    from encanalyze.onnx import calibrate

    path = os.path.join(out_dir, "cnn.onnx")
    if not os.path.exists(path):
        torch.onnx.export(net, (batches[0],), path, dynamo=False, input_names=["x"])
    return calibrate, path, [b.numpy() for b in batches]


def rank_main(out_dir: str, name: str) -> None:
    """One rank (under torchrun): calibrate this rank's batches, time it, save the scales."""
    import onnxruntime
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    onnxruntime.set_default_logger_severity(3)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    calibrate, model, batches = frontend(name, out_dir)
    shard = batches[rank::world]
    best = float("inf")
    extra = {"providers": [("CPUExecutionProvider", {})]} if name == "onnx" else {}
    for _ in range(4):  # a warm-up and 3 timed runs
        dist.barrier()
        t0 = time.perf_counter()
        result = calibrate(model, shard, activations="percentile", group=dist.group.WORLD, **extra)
        best = min(best, time.perf_counter() - t0)
    scales = {k: np.asarray(e.scale) for k, e in result.encodings.items()}
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), seconds=best, **scales)
    dist.destroy_process_group()


def main() -> None:
    sys.path.insert(0, str(HERE.parent))
    import torch
    from common import machine

    torch.set_num_threads(1)
    print(f"# {machine()}, torch {torch.__version__}; 20 batches of (16, 3, 32, 32), percentile")
    for name in ("torch", "onnx"):
        with tempfile.TemporaryDirectory() as shared:
            calibrate, model, batches = frontend(name, shared)
            extra = {"providers": [("CPUExecutionProvider", {})]} if name == "onnx" else {}
            one = calibrate(model, batches, activations="percentile", **extra)
            for world in (1, 2):
                out = os.path.join(shared, f"world{world}")
                os.mkdir(out)
                if name == "onnx":
                    os.link(model, os.path.join(out, "cnn.onnx"))
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc-per-node", str(world), __file__, "--rank", out, name]  # fmt: skip
                run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
                if run.returncode:
                    raise SystemExit(run.stderr[-3000:])
                ranks = [dict(np.load(Path(out) / f"rank{r}.npz")) for r in range(world)]
                seconds = max(float(r.pop("seconds")) for r in ranks)
                same = all(
                    np.array_equal(r[k], np.asarray(e.scale))
                    for r in ranks
                    for k, e in one.encodings.items()
                )
                print(
                    f"{name:5s} {world} rank(s): {seconds * 1e3:7.1f} ms per calibration (slowest "
                    f"rank); every rank's encodings {'equal' if same else 'DIFFER FROM'} one "
                    "process's bit for bit"
                )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rank":
        rank_main(sys.argv[2], sys.argv[3])
    else:
        main()
