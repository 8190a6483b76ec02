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


def calibration(cls, x, enc, *, sym=False, **kw):
    """Return a function that builds ``cls(enc, **kw)``, updates it with ``x`` and encodes."""

    def run():
        a = cls(enc, **kw)
        a.update_stats(x)
        return a.compute_encodings(255, sym)

    return run


def goal_row(name, ours, base, base_name, ratio, goal, met, *, base_width=24, goal_width=16):
    """Print one row of a goal table: ours, the baseline, the ratio, the goal and met or not."""
    print(
        f"{name:<24}{ours:>12}{base:>14}  {base_name:<{base_width}}{ratio:>9}  "
        f"{goal:<{goal_width}}{'met' if met else 'NOT met'}",
        flush=True,
    )


def run_rows(rows: dict, doc: str, title: str, base_width: int = 24) -> None:
    """Parse ``--rows`` (comma-separated names of ``rows``), print the header, run each row."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rows", default=",".join(rows), help="comma-separated row names")
    args = parser.parse_args()
    print(f"# {title}; {machine()}")
    print(
        f"{'row':<24}{'ours':>12}{'baseline':>14}  {'baseline is':<{base_width}}{'ratio':>9}  goal"
    )
    for name in args.rows.split(","):
        rows[name]()
