"""Shared timing helpers for the benchmark scripts."""

from __future__ import annotations

import os
import platform
import time


def timeit(fn, repeat: int = 30, warmup: int = 2, sync=None) -> float:
    """Best wall time of ``fn()`` in seconds over ``repeat`` runs (``sync()`` after each)."""
    return compare([fn], repeat, warmup, sync)[0]


def compare(fns, repeat: int = 30, warmup: int = 2, sync=None) -> list[float]:
    """Best wall time of each of ``fns``, their runs interleaved so that noise hits all alike."""
    for fn in fns * warmup:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            if sync:
                sync()
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def machine() -> str:
    """One line describing this machine."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def row(*cells, widths=(10, 28, 12, 12, 8)) -> str:
    """Format one table row."""
    return "".join(
        f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths))
    )
