"""Giving freed memory back to the operating system between the phases of a job."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from functools import cache

__all__ = ["MAPPED_BYTES", "map_large_blocks", "release_freed_memory"]


@cache
def _libc():
    """Return glibc, or None (another C library or platform)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - glibc's, or AttributeError
    except (OSError, AttributeError):
        return None
    return libc


MAPPED_BYTES = 4 << 20
"""Blocks of this many bytes or more get pages of their own (4 MiB): :func:`map_large_blocks`."""

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def map_large_blocks(threshold: int = MAPPED_BYTES) -> bool:
    """Have glibc map every block of ``threshold`` bytes or more on its own pages.

    glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB), after
    which a model's activations (a BERT-base batch's: 12 MB each, allocated and freed on every
    run) come from the heap, whose free holes it cannot give back: an emulated BERT-base
    grew 1.5 GB that way. A fixed threshold returns each freed block at once. Returns whether it
    was set (glibc only); the model job sets it for its process.
    """
    libc = _libc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))


def release_freed_memory(collect: bool = True) -> None:
    """Collect garbage and return the C heap's free pages to the system (glibc).

    A session of a large model frees its weights' copies and a batch's activations in many
    pieces that glibc keeps in its heap (for a BERT-base, 0.7 GB after calibration), so the
    next phase's allocations come on top of them; ``malloc_trim(0)`` hands them back. Nothing
    happens elsewhere than on glibc. ``collect=False`` leaves the garbage collector out (a full
    collection takes ~0.15 s in a process with many objects; what is freed by reference
    counting needs none).
    """
    if collect:
        gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
