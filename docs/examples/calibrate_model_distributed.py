"""Calibrate a torch model on a shard of the data per rank; every rank gets all the encodings.

Run with ``torchrun --standalone --nproc-per-node 2 docs/examples/calibrate_model_distributed.py``
(gloo on the CPU, NCCL on GPUs). Rank 0 writes the encodings (AIMET JSON).
"""

import json

import torch
import torch.distributed as dist

from encanalyze.torch import calibrate

use_cuda = torch.cuda.is_available()
dist.init_process_group("nccl" if use_cuda else "gloo")
rank, world = dist.get_rank(), dist.get_world_size()
device = torch.device("cuda", rank % torch.cuda.device_count()) if use_cuda else "cpu"
if use_cuda:
    torch.cuda.set_device(device)

torch.manual_seed(0)  # the same model on every rank
model = (
    torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 6 * 6, 10),
    )
    .to(device)
    .eval()
)
dataset = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
shard = dataset[rank::world].to(device)  # this rank's samples
batches = torch.split(shard, 8)

result = calibrate(model, batches, activations="percentile", group=dist.group.WORLD)
print(
    f"rank {rank}: {result.num_batches} batches from {world} ranks, "
    f"0:input scale {float(result['0:input'].scale[0]):.6f}"
)
if rank == 0:
    with open("encodings.json", "w") as f:
        json.dump(result.aimet(), f)
dist.destroy_process_group()
