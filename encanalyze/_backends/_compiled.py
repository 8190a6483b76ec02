"""Compiled host kernels: C loaded with ctypes, absent (``LIBRARY is None``) where not built.

``pip install`` compiles ``native/*.c`` into ``_cells`` (an optional extension: without a C
compiler the install goes on and every caller takes the portable path): the SQNR cells search,
per-row histogram counting and re-binning. ctypes releases the GIL for each call, so the rows
(or, for few rows, the values) are split between threads, one per available core. Each entry
returns None for inputs it does not take (other dtypes): the caller's portable path answers.
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

__all__ = ["LIBRARY", "count_rows", "count_checked", "noise_by_cells", "rebin_rows"]

_P, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
_SIGNATURES = {
    "encanalyze_noise_by_cells": [_I] * 4 + [_D] + [_P] * 2 + [_I] + [_P] * 4,
    "encanalyze_count_rows_f64": [_I] * 3 + [_P] * 3 + [_I] + [_P] * 5,
    "encanalyze_count_rows_f32": [_I] * 3 + [_P] * 3 + [_I] + [_P] * 5,
    "encanalyze_rebin_rows_f64": [_I] * 2 + [_P] * 7,
    "encanalyze_rebin_rows_f32": [_I] * 2 + [_P] * 7,
}


def _load() -> ctypes.CDLL | None:
    """Return the compiled library beside this module, or None where it was not built."""
    if _cells is None or os.environ.get("ENCANALYZE_NATIVE", "1") == "0":
        return None
    lib = ctypes.CDLL(_cells.__file__)
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int
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


def _in_threads(run, num_rows: int, min_rows: int = MIN_ROWS_PER_THREAD) -> None:
    """Call ``run(start, stop)`` on contiguous row ranges, one per worker, and wait for all.

    Ranges hold at least ``min_rows`` rows (fewer parts where there are not enough).
    """
    parts = max(1, min(_WORKERS or 1, num_rows // max(1, min_rows)))
    step = -(-num_rows // parts)
    ranges = [(s, min(s + step, num_rows)) for s in range(0, num_rows, step)] or [(0, 0)]
    futures = [_pool().submit(run, *r) for r in ranges[1:]]
    try:
        run(*ranges[0])
    finally:  # never leave a worker writing into arrays the caller drops
        for f in futures:
            f.result()


def _check(status: int) -> None:
    if status == -1:
        raise MemoryError("a compiled kernel could not allocate its scratch memory")
    if status != 0:
        raise RuntimeError(f"a compiled kernel failed (status {status})")


_FLOATS = {np.dtype(np.float64): "f64", np.dtype(np.float32): "f32"}
MIN_VALUES_PER_THREAD = 1 << 18
"""Host counting splits its values between threads from this many per thread (a thread's
hand-off costs tens of microseconds)."""


def count_rows(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, num_bins: int):
    """Count like ``_portable.histogram_rows``: float host rows, ``(E, B)`` float64 counts.

    ``rows (E, N)`` and ``lo``/``hi (E,)`` in one float dtype (the work dtype); NaN values are
    left out. None for other dtypes (or a float32 rule this compiler cannot round as float32).
    """
    found = _count(rows, lo, hi, num_bins, None, 0)
    return None if found is None else found[0]


def count_checked(
    rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, onto: np.ndarray, absolute: bool = False
):
    """``onto`` plus the counts of ``rows`` over ``[lo, hi]``, checked in the same pass.

    Returns ``(counts, nans, odd, outside)``: the ``(E, B)`` sum (whole counts: exact in any
    order) and, per row, its NaN values, its values that are not finite and its finite values
    outside ``[lo, hi]`` (int64); with ``absolute``, of ``|rows|``, and a fifth: each row's
    values below 0. None as :func:`count_rows`.
    """
    return _count(rows, lo, hi, onto.shape[1], onto, 4 if absolute else 3)


def _count(rows, lo, hi, num_bins: int, onto, checks: int):
    kind = _FLOATS.get(rows.dtype)
    if kind is None or lo.dtype != rows.dtype or hi.dtype != rows.dtype or num_bins >= 2**31:
        return None
    fn = getattr(LIBRARY, f"encanalyze_count_rows_{kind}")
    num_rows, num_values = rows.shape
    if num_rows and rows.strides[1] != rows.itemsize or rows.strides[0] < 0:
        rows = np.ascontiguousarray(rows)
    lo, hi = np.ascontiguousarray(lo), np.ascontiguousarray(hi)
    stride = rows.strides[0] // rows.itemsize if num_rows > 1 else num_values
    if onto is None:
        out = np.zeros((num_rows, num_bins), dtype=np.float64)
    else:
        out = np.array(onto, dtype=np.float64, order="C")
    outputs = _checks(num_rows, checks)
    if num_rows == 0 or num_values == 0:
        return out, *outputs
    size = rows.itemsize
    base, lo_at, hi_at, out_at = rows.ctypes.data, lo.ctypes.data, hi.ctypes.data, out.ctypes.data

    def addresses(parts, start: int) -> list[int]:  # the checks' outputs from row ``start``
        found = [a.ctypes.data + start * a.itemsize for a in parts]
        return found + [0] * (4 - len(found))

    def by_rows(start: int, stop: int) -> None:
        _check(
            fn(stop - start, num_values, stride, base + start * stride * size,
               lo_at + start * size, hi_at + start * size, num_bins, out_at + start * num_bins * 8,
               *addresses(outputs, start))
        )  # fmt: skip

    if num_rows >= (_WORKERS or 1) or num_values < 2 * MIN_VALUES_PER_THREAD:
        _in_threads(by_rows, num_rows, max(1, MIN_VALUES_PER_THREAD // num_values))
        return out, *outputs
    # few long rows: each thread counts a range of columns into its own table (whole numbers:
    # the tables add exactly), and checks them
    step = -(-num_values // max(1, min(_WORKERS or 1, num_values // MIN_VALUES_PER_THREAD)))
    parts = -(-num_values // step)
    tables = [out] + [np.zeros_like(out) for _ in range(1, parts)]
    part_checks = [_checks(num_rows, checks) for _ in range(parts)]

    def by_columns(start: int, stop: int) -> None:
        table = tables[start // step].ctypes.data
        _check(fn(num_rows, stop - start, stride, base + start * size, lo_at, hi_at, num_bins,
                  table, *addresses(part_checks[start // step], 0)))  # fmt: skip

    _in_threads(by_columns, num_values, MIN_VALUES_PER_THREAD)
    for t in tables[1:]:
        out += t
    return out, *(sum(c) for c in zip(*part_checks, strict=True))


def _checks(num_rows: int, checks: int) -> tuple[np.ndarray, ...]:
    """Return ``checks`` of the outputs (NaN, not finite, outside, negative), zero."""
    return tuple(np.zeros(num_rows, np.int64) for _ in range(checks))


def rebin_rows(counts, lo, hi, new_lo, new_hi) -> np.ndarray | None:
    """:func:`encanalyze._histograms._rebin` of host arrays: ``(E, B)`` float64 counts.

    ``counts`` float64; ``lo``, ``hi``, ``new_lo``, ``new_hi`` ``(E,)`` in one float dtype
    (float64 rules, else float32's). None for other dtypes.
    """
    kind = _FLOATS.get(lo.dtype)
    ranges = (lo, hi, new_lo, new_hi)
    if kind is None or counts.dtype != np.float64 or any(a.dtype != lo.dtype for a in ranges):
        return None
    num_rows, num_bins = counts.shape
    if num_bins >= 2**31:
        return None
    fn = getattr(LIBRARY, f"encanalyze_rebin_rows_{kind}")
    counts = np.ascontiguousarray(counts)
    ranges = [np.ascontiguousarray(a) for a in ranges]
    out = np.empty((num_rows, num_bins), dtype=np.float64)
    if num_rows == 0:
        return out
    size = lo.itemsize

    def run(start: int, stop: int) -> None:
        scratch = np.empty(3 * num_bins)
        _check(
            fn(stop - start, num_bins, counts[start:].ctypes.data,
               *(a.ctypes.data + start * size for a in ranges), scratch.ctypes.data,
               out[start:].ctypes.data)
        )  # fmt: skip

    _in_threads(run, num_rows, max(1, (1 << 18) // max(num_bins, 1)))
    return out


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
        _check(status)

    _in_threads(run, rows)
    return out
