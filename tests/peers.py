"""Small transcriptions of the peers' algorithms, written from their documented behaviour.

They run only in the tests, as independent references for the methods that reproduce a peer.
"""

from __future__ import annotations

import numpy as np


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """``scipy.stats.entropy(p, q)``: both normalised, ``sum(p log(p / q))``."""
    p = p / p.sum()
    q = q / q.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return float(np.sum(np.where((p > 0) & (q == 0), np.inf, terms)))


def entropy_amax(hist, edges, num_bits: int, unsigned: bool, start_bin: int = 128) -> float:
    """Model Optimizer's ``_compute_amax_entropy``, one threshold and one bin at a time."""
    bins = np.array(hist, dtype=np.float64)
    bins[0] = bins[1]
    nbins = 1 << (num_bits - 1 + int(unsigned))
    divergences = []
    for i in range(start_bin, len(bins) + 1):
        space = np.linspace(0, i, num=nbins + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        density = np.zeros(nbins)
        members = np.zeros(nbins)
        for k, d in enumerate(digitized):
            if d != -1:
                density[d] += bins[k]
                members[d] += 1
        new = np.zeros(i)
        for k, d in enumerate(digitized):
            if d != -1:
                new[k] = density[d] / members[d]
        reference = bins[:i].copy()
        reference[-1] += bins[i:].sum()
        divergences.append(_kl(reference, new))
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - np.argmin(divergences[::-1])
    return float(edges[last_argmin + start_bin])


# -- Model Optimizer's FP8 and NVFP4 scaling (modelopt.torch.quantization.qtensor, read at
# NVIDIA/TensorRT-Model-Optimizer 2017cd9 / 0ad6e5f: FP8QTensor, NVFP4QTensor) --------------
def modelopt_fp8(x, axis=None):
    """FP8 E4M3: ``scale = amax / 448`` over the reduced axes, elements ``x / scale`` cast.

    Returns (elements as float32, scales), torch tensors; ``axis`` are the reduced axes.
    """
    import torch

    amax = x.abs().amax() if axis is None else x.abs().amax(dim=axis, keepdim=True)
    scale = amax.float() / 448.0
    return (x / scale).to(torch.float8_e4m3fn).float(), scale


def modelopt_nvfp4(x, block_size: int = 16):
    """NVFP4: tensor scale ``amax / (6 * 448)``; block scale ``block amax / (6 * ts)``, zero
    blocks 1.0, cast to E4M3; elements ``x / (block scale * ts)`` rounded to E2M1 through the
    searchsorted table of its ``_cast_fp4`` (ties to even). Returns (elements, block scales,
    tensor scale) as float32 torch tensors."""
    import torch

    ts = x.abs().amax().float() / (6.0 * 448.0)
    blocks = x.reshape(*x.shape[:-1], -1, block_size)
    per_block = blocks.abs().amax(dim=-1).float() / (6.0 * ts)
    per_block[per_block == 0] = 1.0
    fp8 = per_block.to(torch.float8_e4m3fn).float()
    scaled = (blocks / (fp8 * ts).unsqueeze(-1)).reshape(x.shape)
    bounds = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    values = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    mag = scaled.abs()
    code = torch.searchsorted(bounds, mag)  # the first bound >= |v|: ties go down ...
    code = code + torch.isin(mag, bounds[[1, 3, 5]]).long()  # ... except onto an odd code
    return torch.where(scaled < 0, -values[code], values[code]), fp8, ts
