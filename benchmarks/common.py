"""Shared timing helpers for the benchmark scripts."""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import os
import platform
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]


def timeit(fn, repeat: int = 30, warmup: int = 2, sync=None) -> float:
    """Best wall time of ``fn()`` in seconds over ``repeat`` runs (``sync()`` after each)."""
    return compare([fn], repeat, warmup, sync)[0]


def compare(fns, repeat: int = 30, warmup: int = 2, sync=None, inner: int = 1) -> list[float]:
    """Best wall time of each of ``fns``, their runs interleaved so that noise hits all alike.

    ``inner``: each round runs each function that many times in a row (its steady state, as
    when a user calibrates tensor after tensor: the allocator's state left by another
    function's large arrays is not what it meets), keeping the best.
    """
    for fn in fns * warmup:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            for _ in range(inner):
                if sync:
                    sync()
                t0 = time.perf_counter()
                fn()
                if sync:
                    sync()
                best[i] = min(best[i], time.perf_counter() - t0)
    return best


def machine() -> str:
    """One line describing this machine, and its load (1-minute load average) when measured."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    quiet = "quiet" if load < 0.5 * (os.cpu_count() or 1) else "LOADED"
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load {load:.2f} ({quiet})"
    )


class _Absent(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Stands in for modules the reference imports but its analyzers never use."""

    def __init__(self):
        self.names: set[str] = set()

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.names:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = mock.MagicMock()
        module.__path__, module.__name__, module.__spec__ = [], spec.name, spec
        return module

    def exec_module(self, module):
        pass


@functools.cache
def reference():
    """Return the reference's analyzers (``aimet_reference``), or ``None`` where not installed.

    ``bash ../shared/reference/install.sh`` puts AIMET's released analyzers into ``.reference/``;
    ``../shared/reference/aimet_reference.py`` imports them with torch and NumPy alone. Modules
    its package imports that are not installed here (ONNX export helpers) are stubbed for the
    import only.
    """
    paths = [ROOT / ".reference", ROOT.parent / "shared" / "reference"]
    if not all(p.is_dir() for p in paths):
        return None
    sys.path[:0] = [str(p) for p in paths if str(p) not in sys.path]
    absent = _Absent()
    sys.meta_path.insert(0, absent)
    try:
        for _ in range(20):
            try:
                import aimet_reference

                return aimet_reference
            except ModuleNotFoundError as err:
                top = (err.name or "").split(".")[0]
                if not top or top in absent.names or top in ("torch", "numpy", "aimet_torch"):
                    raise
                absent.names.add(top)
                for name in [m for m in sys.modules if m.startswith(("aimet", top))]:
                    del sys.modules[name]
        return None
    finally:
        sys.meta_path.remove(absent)


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


def with_reference(name, w, enc, ours, *, sym=False, repeat=3, **kw):
    """Time ``ours`` and the reference's ``name`` analyzer on ``w`` (as a torch tensor) together.

    Both are updated with the same values and encode 8-bit grids, interleaved after a warm-up,
    best of ``repeat``; ``kw`` goes to the reference's constructor. Returns ``(ours, reference)``
    in seconds; the reference's is ``None`` where it is not installed.
    """
    import torch

    module = reference()
    if module is None:
        return compare([ours], repeat=repeat, warmup=1)[0], None
    theirs = calibration(getattr(module, name), torch.from_numpy(w), enc, sym=sym, **kw)
    t_ours, t_ref = compare([ours, theirs], repeat=repeat, warmup=1)
    return t_ours, t_ref


def versus_reference(name, t, ref, goal=20, scale=1e3, unit="ms", **widths):
    """Print ours against the reference timed in this run: a speed-up of at least ``goal``."""
    if ref is None:
        goal_row(name, f"{t * scale:.1f} {unit}", "not measured", "reference (not installed)",
                 "-", f">= {goal}x", False, **widths)  # fmt: skip
        return
    goal_row(name, f"{t * scale:.1f} {unit}", f"{ref * scale:.1f} {unit}", "reference, same run",
             f"{ref / t:.1f}x", f">= {goal}x", ref / t >= goal, **widths)  # fmt: skip


def real_model_args(models, draws: int, argv=None):
    """Parse ``--models`` (of ``models``) and ``--draws`` (default ``draws``) of the benchmarks
    on real models; ONNX Runtime's logging and Python's warnings go quiet for their tables."""
    import argparse
    import logging
    import warnings

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", choices=sorted(models), default=sorted(models))
    parser.add_argument("--draws", type=int, default=draws, help=f"sample sets per model ({draws})")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    return args
