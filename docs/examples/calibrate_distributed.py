"""Calibrate on every rank, merge the statistics across ranks, compute encodings once.

Run with ``torchrun --standalone --nproc-per-node 2 docs/examples/calibrate_distributed.py``
(NCCL on GPUs, gloo on the CPU).
"""

import torch
import torch.distributed as dist

from encanalyze import PercentileEncodingAnalyzer, SqnrEncodingAnalyzer
from encanalyze.distributed import all_reduce_stats

use_cuda = torch.cuda.is_available()
dist.init_process_group("nccl" if use_cuda else "gloo")
rank, world = dist.get_rank(), dist.get_world_size()
device = torch.device("cuda", rank % torch.cuda.device_count()) if use_cuda else "cpu"
if use_cuda:
    torch.cuda.set_device(device)

# each rank sees its own shard of the calibration data: here (N, 64) activations
torch.manual_seed(rank)
analyzers = {
    "percentile": PercentileEncodingAnalyzer(shape=(1, 64), num_bins=512, percentile=99.9),
    "sqnr": SqnrEncodingAnalyzer(shape=(1, 64), num_bins=512),
}
for _ in range(4):
    activations = torch.randn(256, 64, device=device) * (1 + rank)
    for analyzer in analyzers.values():
        analyzer.update_stats(activations)

for name, analyzer in analyzers.items():
    all_reduce_stats(analyzer)  # every rank now holds the statistics of all ranks
    enc_min, enc_max = analyzer.compute_encodings(num_steps=255, is_symmetric=False)
    if rank == 0:
        total = int(analyzer.get_stats().histogram.sum())
        print(
            f"{name}: {total} values from {world} ranks, "
            f"channel 0 range [{enc_min[0, 0]:.4f}, {enc_max[0, 0]:.4f}]"
        )
dist.destroy_process_group()
