"""Compiled host kernels: C loaded with ctypes, absent (``LIBRARY is None``) where not built.

``pip install`` compiles ``native/cells.c`` into ``_cells`` (an optional extension: without a C
compiler the install goes on and every caller takes the portable path). ctypes releases the GIL
for each call, so the rows are split between threads, one per available core.
"""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:
    from . import _cells  # the extension's module: its file is the library
except ImportError:  # not compiled (no C compiler at install time): the portable paths
    _cells = None

__all__ = ["LIBRARY", "noise_by_cells"]


def _load() -> ctypes.CDLL | None:
    """Return the compiled library beside this module, or None where it was not built."""
    if _cells is None or os.environ.get("ENCANALYZE_NATIVE", "1") == "0":
        return None
    lib = ctypes.CDLL(_cells.__file__)
    fn = lib.encanalyze_noise_by_cells
    fn.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_double] + [ctypes.c_void_p] * 2
    fn.argtypes += [ctypes.c_int64] + [ctypes.c_void_p] * 4
    fn.restype = ctypes.c_int
    return lib


LIBRARY = _load()
"""The compiled kernels, or None (then every primitive here is None in the tables)."""

_WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
_POOL: dict[int, ThreadPoolExecutor] = {}
MIN_ROWS_PER_THREAD = 8
"""Rows below this many per thread run on the calling thread alone."""


def _pool() -> ThreadPoolExecutor:
    """Return this process's worker threads.

    A forked child starts its own: threads do not survive a fork.
    """
    pid = os.getpid()
    if pid not in _POOL:
        _POOL.clear()
        _POOL[pid] = ThreadPoolExecutor(_WORKERS, thread_name_prefix="encanalyze-native")
    return _POOL[pid]


def _in_threads(run, num_rows: int) -> None:
    """Call ``run(start, stop)`` on contiguous row ranges, one per worker, and wait for all."""
    parts = max(1, min(_WORKERS or 1, num_rows // MIN_ROWS_PER_THREAD))
    if parts == 1:
        run(0, num_rows)
        return
    step = -(-num_rows // parts)
    ranges = [(s, min(s + step, num_rows)) for s in range(0, num_rows, step)]
    futures = [_pool().submit(run, *r) for r in ranges[1:]]
    run(*ranges[0])
    for f in futures:
        f.result()


def noise_by_cells(
    counts: np.ndarray,
    edges: np.ndarray,
    deltas: np.ndarray,
    offsets: np.ndarray,
    n: int,
    gamma: float,
    scale: np.ndarray | None = None,
) -> np.ndarray | None:
    """:func:`encanalyze._rules.sqnr.noise_by_cells` of host arrays, bit for bit.

    ``counts (E, B)``, ``edges (E, B + 1)`` (float32 or float64: widened row by row, never
    copied whole), ``deltas``/``offsets (E, C)``, ``scale (E, 1)`` or None; returns ``(E, C)``
    float64, or None where the dtypes are others (the portable path).
    """
    if edges.dtype not in (np.float32, np.float64) or any(
        a.dtype != np.float64 for a in (counts, deltas, offsets)
    ):
        return None
    rows, bins = counts.shape
    cands = deltas.shape[1]
    scale = np.ones(rows) if scale is None else scale.reshape(rows)
    c, e, s, d, o = (np.ascontiguousarray(a) for a in (counts, edges, scale, deltas, offsets))
    out = np.empty((rows, cands), dtype=np.float64)
    if rows == 0 or cands == 0:
        return out
    fn = LIBRARY.encanalyze_noise_by_cells
    f32 = int(e.dtype == np.float32)

    def run(start: int, stop: int) -> None:
        status = fn(
            stop - start,
            bins,
            cands,
            n,
            float(gamma),
            c[start:stop].ctypes.data,
            e[start:stop].ctypes.data,
            f32,
            s[start:stop].ctypes.data,
            d[start:stop].ctypes.data,
            o[start:stop].ctypes.data,
            out[start:stop].ctypes.data,
        )
        if status != 0:
            raise MemoryError(f"the SQNR search could not allocate {5 * (bins + 1)} float64")

    _in_threads(run, rows)
    return out
