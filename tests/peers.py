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
