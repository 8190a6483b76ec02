"""SQNR search: the exact O(n)-per-candidate method against brute force, identical encodings.

512 channels x 2048 bins (random histograms of Gaussian-like data), asymmetric (357 candidates)
and symmetric (101), 8 and 4 bit. Goal: >= 10x faster than brute force at 8 bit, >= 50x at
4 bit. ``--device cuda`` runs torch on the GPU with 1024 channels (and CuPy if installed).

    python benchmarks/bench_sqnr.py [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, machine  # noqa: E402

from encanalyze._rules.sqnr import sqnr_search  # noqa: E402


def histograms(channels: int, bins: int = 2048):
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.5, 3.0, channels)
    x = rng.standard_normal((channels, 8192)) * scale[:, None] + rng.uniform(-1, 1, (channels, 1))
    lo, hi = x.min(axis=1), x.max(axis=1)
    idx = np.clip(((x - lo[:, None]) / (hi - lo)[:, None] * bins).astype(int), 0, bins - 1)
    counts = np.stack([np.bincount(r, minlength=bins) for r in idx]).astype(np.float32)
    edges = lo[:, None] + np.arange(bins + 1) * ((hi - lo) / bins)[:, None]
    return counts, edges.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    channels = 512 if args.device == "cpu" else 1024
    counts, edges = histograms(channels)
    targets = []
    if args.device == "cpu":
        import array_api_compat.numpy as xnp

        targets.append(("numpy", xnp, counts, edges, None))
    try:
        import array_api_compat.torch as xt
        import torch

        sync = torch.cuda.synchronize if args.device != "cpu" else None
        tc, te = (torch.from_numpy(a).to(args.device) for a in (counts, edges))
        targets.append((f"torch-{args.device}", xt, tc, te, sync))
    except ImportError:
        pass
    if args.device != "cpu":
        try:
            import array_api_compat.cupy as xc
            import cupy

            targets.append(
                (
                    "cupy",
                    xc,
                    cupy.asarray(counts),
                    cupy.asarray(edges),
                    cupy.cuda.runtime.deviceSynchronize,
                )
            )
        except ImportError:
            pass
    print(f"# SQNR search, {channels} channels x 2048 bins, gamma 3; {machine()}")
    print(f"{'backend':<12}{'grid':<16}{'brute ms':>10}{'ours ms':>10}{'speedup':>9}  same")
    for name, xp, c, e, sync in targets:
        for bits in (8, 4):
            for sym in (False, True):
                n = 2**bits - 1
                call = (xp, c, e, e[:, 0], e[:, -1], n, sym)
                run = {
                    m: (lambda m=m, call=call: sqnr_search(*call, method=m))
                    for m in ("brute", "auto")
                }
                t_brute, t_ours = compare(
                    [run["brute"], run["auto"]], repeat=2, warmup=1, sync=sync
                )
                same = all(bool(xp.all(a == b)) for a, b in zip(run["brute"](), run["auto"]()))
                grid = f"{bits}-bit {'sym' if sym else 'asym'}"
                print(
                    f"{name:<12}{grid:<16}{t_brute * 1e3:>10.0f}{t_ours * 1e3:>10.1f}"
                    f"{t_brute / t_ours:>8.1f}x  {same}",
                    flush=True,
                )
    if args.device != "cpu":
        compute_on_gpu(targets, channels)


REFERENCE_GPU_MS = 32.0  # the reference's compute_encodings, 1024 channels, 8-bit asym (issue 13)


def compute_on_gpu(targets, channels: int) -> None:
    """Time ``SqnrEncodingAnalyzer.compute_encodings`` itself (goal: 10x the reference's 32 ms)."""
    from encanalyze import SqnrEncodingAnalyzer

    x = np.random.default_rng(1).standard_normal((channels, 8192), dtype=np.float32)
    print(
        f"# SqnrEncodingAnalyzer(({channels}, 1)).compute_encodings, one ({channels}, 8192) update"
    )
    for name, xp, c, _, sync in targets:
        analyzer = SqnrEncodingAnalyzer((channels, 1))
        analyzer.update_stats(xp.asarray(x, device=c.device))
        for sym in (False, True):
            (t,) = compare([lambda s=sym, a=analyzer: a.compute_encodings(255, s)], 5, 1, sync)
            print(
                f"{name:<12}8-bit {'sym' if sym else 'asym':<10}{t * 1e3:>10.2f} ms"
                f"  vs the reference's 8-bit asym {REFERENCE_GPU_MS:.0f} ms: "
                f"{REFERENCE_GPU_MS / 1e3 / t:.1f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
