"""The peers' methods against the peers' own search loops, same histograms, same answers.

- Entropy: Model Optimizer's KL threshold search, run channel by channel (its algorithm as
  ``tests/peers.py`` transcribes it, timed on a few channels and scaled to all of them), against
  ``kl_amax`` on 2048-bin histograms of (1024, 1) channels. Goal: >= 100x.
- MSE: PyTorch's ``HistogramObserver._non_linear_param_search`` per tensor (on its own
  histogram buffers) against ``l2_search`` on the same counts; then per channel, (1024, 1)
  channels, which no peer does (PyTorch's observer is per tensor).

Every timed pair is checked for identical results.

    python benchmarks/bench_methods.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import array_api_compat.numpy as xp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from common import compare, machine  # noqa: E402

from encanalyze._rules.entropy import kl_amax  # noqa: E402
from encanalyze._rules.mse import l2_search  # noqa: E402
from tests.peers import entropy_amax  # noqa: E402


def abs_histograms(channels: int, bins: int = 2048):
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_t(4, (channels, 4096))) * rng.uniform(0.1, 3, (channels, 1))
    top = x.max(axis=1)
    counts = np.stack([np.histogram(r, bins=bins, range=(0, t))[0] for r, t in zip(x, top)]).astype(
        np.float32
    )
    edges = (top[:, None] * np.arange(bins + 1) / bins).astype(np.float32)
    return counts, edges


def entropy(channels: int = 1024, peer_channels: int = 3) -> None:
    counts, edges = abs_histograms(channels)
    (ours,) = compare([lambda: kl_amax(xp, counts, edges, 128)], repeat=3, warmup=1)
    got = kl_amax(xp, counts, edges, 128)
    t0 = time.perf_counter()
    want = [entropy_amax(counts[r], edges[r], 8, False) for r in range(peer_channels)]
    peer = (time.perf_counter() - t0) / peer_channels * channels
    same = np.allclose(got[:peer_channels], want, rtol=1e-6)
    print(f"entropy, ({channels}, 1) channels x 2048 bins, 8-bit signed (128 levels)")
    print(f"  peer loop per channel: {peer / channels * 1e3:9.1f} ms -> {peer:9.1f} s all")
    print(f"  encanalyze, all:       {ours:9.3f} s   speedup {peer / ours:8.0f}x   same {same}")


def mse(channels: int = 1024) -> None:
    import torch
    from torch.ao.quantization.observer import HistogramObserver

    rng = np.random.default_rng(1)
    print("mse (8 bit, 256 levels), HistogramObserver histograms of 2048 bins")
    print(f"  {'data':<22}{'torch ms':>10}{'ours ms':>10}{'speedup':>9}  same")
    kinds = {
        "normal": lambda: rng.standard_normal(65536),
        "student-t(2)": lambda: rng.standard_t(2, 65536),
        "exponential": lambda: rng.exponential(1, 65536),
        "normal + 0.1% outliers": lambda: np.where(
            rng.random(65536) < 1e-3, 40.0, rng.standard_normal(65536)
        ),
    }
    hists = []
    for name, make in kinds.items():
        obs = HistogramObserver(bins=2048)
        obs(torch.from_numpy(make().astype(np.float32)))
        counts = obs.histogram.numpy()[None].copy()
        lo, hi = obs.min_val.numpy()[None].copy(), obs.max_val.numpy()[None].copy()
        torch_t, ours_t = compare(
            [
                obs._non_linear_param_search,
                lambda c=counts, a=lo, b=hi: l2_search(xp, c, a, b, 256),
            ],
            repeat=5,
            warmup=1,
        )
        want = [float(v) for v in obs._non_linear_param_search()]
        got = [float(v[0]) for v in l2_search(xp, counts, lo, hi, 256)]
        hists.append((counts[0], lo[0], hi[0]))
        print(
            f"  {name:<22}{torch_t * 1e3:10.2f}{ours_t * 1e3:10.2f}{torch_t / ours_t:8.1f}x"
            f"  {got == want}"
        )
    counts = np.stack([hists[i % len(hists)][0] for i in range(channels)])
    lo = np.float32([hists[i % len(hists)][1] for i in range(channels)])
    hi = np.float32([hists[i % len(hists)][2] for i in range(channels)])
    (ours,) = compare([lambda: l2_search(xp, counts, lo, hi, 256)], repeat=3, warmup=1)
    print(f"  per channel, ({channels}, 1): {ours * 1e3:.1f} ms for all channels at once")


def main() -> None:
    print(machine())
    entropy()
    mse()


if __name__ == "__main__":
    main()
