"""torch fast paths."""

from __future__ import annotations

import threading

import array_api_compat
import array_api_compat.torch as xp
import numpy as np
import torch

from . import _compiled, _numpy_like, _portable
from ._trees import NoView, map_leaves, views_or_none

__all__ = [
    "PRIMITIVES",
    "bincount_rows",
    "clip",
    "from_numpy",
    "from_torch",
    "histogram_rows",
    "minmax",
    "to_numpy",
    "to_torch",
]


def _aminmax(x: torch.Tensor, axes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(axes) == x.ndim:
        return torch.aminmax(x)
    # on the CPU, aminmax along a dim is ~10x slower than amin + amax (torch 2.13)
    return torch.amin(x, dim=axes), torch.amax(x, dim=axes)


NUMPY_MINMAX = 1 << 22
"""Float CPU tensors up to this many values take their range on the NumPy views: one
single-threaded pass costs less than waking torch's threads between the compiled counts."""


def minmax(x: torch.Tensor, axes: tuple[int, ...], finite: bool = False) -> tuple:
    """``aminmax`` for full reductions, ``amin`` + ``amax`` along dims.

    On the CPU the masking path runs only when the reduced result is not clean (checking it is
    a host read, not a device sync). On accelerators the masking path always runs, so that an
    update never waits for the device.
    """
    if x.is_floating_point() and x.device.type != "cpu":
        return _portable.minmax(xp, x, axes, finite)
    if x.is_floating_point() and x.dtype in _NUMPY_DTYPES and x.numel() <= NUMPY_MINMAX:
        axis = None if len(axes) == x.ndim else axes
        found = _numpy_like.clean_minmax(np, x.numpy(), axis, finite)
        if found is None:
            return _portable.minmax(xp, x, axes, finite)
        return torch.from_numpy(found[0]), torch.from_numpy(found[1]), None
    lo, hi = _aminmax(x, axes)
    if x.is_floating_point():
        clean = (
            bool(torch.isfinite(lo).all() & torch.isfinite(hi).all())
            if finite
            else not bool(torch.isnan(lo).any())
        )
        if not clean:
            return _portable.minmax(xp, x, axes, finite)
    return lo, hi, None


def bincount_rows(
    idx: torch.Tensor, num_bins: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``scatter_add_`` along the rows (no offsets, no flattening).

    ``torch.bincount`` (used for one row on the CPU) reads the largest index back to the host
    to size its result, a device sync on an accelerator; ``scatter_add_`` never does.
    """
    rows = idx.shape[0]
    if weights is None:
        if rows == 1 and idx.device.type == "cpu":
            return torch.bincount(idx.reshape(-1), minlength=num_bins).reshape(1, num_bins)
        weights = torch.ones((), dtype=torch.int64, device=idx.device).expand(idx.shape)
    out = torch.zeros((rows, num_bins), dtype=weights.dtype, device=idx.device)
    return out.scatter_add_(1, idx, weights)


SCRATCH_LIMIT = 1 << 22
"""Batches of up to this many values are binned in per-thread scratch buffers on the CPU."""


class _Scratch(threading.local):
    """Per-thread CPU buffers for bin positions, kept between updates.

    A fresh multi-megabyte tensor per update costs more in page faults than the binning itself;
    reusing one buffer per dtype (at most :data:`SCRATCH_LIMIT` values each) halves the time of
    an activation histogram.
    """

    def __init__(self) -> None:
        self.buffers: dict[torch.dtype, torch.Tensor] = {}

    def get(self, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor | None:
        n = shape[0] * shape[1]
        if n > SCRATCH_LIMIT:
            return None
        buf = self.buffers.get(dtype)
        if buf is None or buf.numel() < n:
            buf = self.buffers[dtype] = torch.empty(max(n, 1 << 16), dtype=dtype)
        return buf[:n].view(shape)


_SCRATCH = _Scratch()


def histogram_rows(
    rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, num_bins: int, may_have_nan: bool
) -> torch.Tensor:
    """Apply the portable formula in place, then count with :func:`bincount_rows` (float64).

    Float CPU tensors are counted by the compiled host kernel on their NumPy views, where it
    was built. The position is clamped to ``[0, B - 1]`` before the conversion to integers, whose
    truncation is then the formula's ``floor``; NaN goes to an extra bin that is cut off.
    """
    if rows.device.type == "cpu" and _compiled.LIBRARY is not None:  # on the NumPy views
        arrays = (rows, lo, hi)
        if all(a.dtype in (torch.float32, torch.float64) for a in arrays):
            found = _compiled.count_rows(*(a.numpy() for a in arrays), num_bins)
            if found is not None:
                return torch.from_numpy(found)
    wide = torch.float32 if rows.device.type == "mps" else torch.float64  # MPS lacks float64
    counts = _count_rows(rows, lo, hi, num_bins, may_have_nan)
    return counts if counts.dtype == wide else counts.to(wide)


def _count_rows(rows, lo, hi, num_bins: int, may_have_nan: bool) -> torch.Tensor:
    """Bin and count; int64 counts, or float64 ones where the CPU counts several rows.

    Several rows on the CPU are counted by ``scatter_add_`` of float64 ones straight into the
    float64 table (exact below 2**53): an int64 table and its conversion would each cost as
    much again (an (E, B) table is megabytes).
    """
    shape = tuple(rows.shape)
    cpu = rows.device.type == "cpu"
    step = max(1, SCRATCH_LIMIT // max(shape[0], 1))
    if cpu and shape[0] * shape[1] > SCRATCH_LIMIT and step < shape[1]:  # bounded temporaries
        parts = [
            _count_rows(rows[:, c : c + step], lo, hi, num_bins, may_have_nan)
            for c in range(0, shape[1], step)
        ]
        return sum(parts[1:], parts[0])
    dtype = torch.promote_types(rows.dtype, lo.dtype)
    t = _SCRATCH.get(shape, dtype) if cpu else None
    t = torch.sub(rows, lo[:, None]) if t is None else torch.sub(rows, lo[:, None], out=t)
    t.div_((hi - lo)[:, None]).mul_(num_bins).clamp_(0, num_bins - 1)
    nbins = num_bins + 1 if may_have_nan else num_bins
    if may_have_nan:
        t = torch.nan_to_num_(t, nan=float(num_bins))
    idx = _SCRATCH.get(shape, torch.int64) if cpu else None
    idx = t.long() if idx is None else idx.copy_(t)
    if cpu and shape[0] > 1:
        out = torch.zeros((shape[0], nbins), dtype=torch.float64)
        ones = torch.ones((), dtype=torch.float64).expand(shape)
        return out.scatter_add_(1, idx, ones)[:, :num_bins]
    return bincount_rows(idx, nbins)[:, :num_bins]


_WIDENED = {  # torch builds without the unsigned types have none of them to widen
    getattr(torch, name): wider
    for name, wider in (("uint16", torch.int64), ("uint32", torch.int64), ("uint64", torch.float64))
    if hasattr(torch, name)
}


def analyzer_input(x: torch.Tensor) -> torch.Tensor:
    """Detach ``x`` from autograd; widen the unsigned integers torch cannot reduce."""
    if x.requires_grad or x.grad_fn is not None:
        x = x.detach()
    wider = _WIDENED.get(x.dtype)
    return x if wider is None else x.to(wider)


def clip(x: torch.Tensor, lo=None, hi=None) -> torch.Tensor:
    """``torch.clamp``, which takes two numbers or two tensors (one of each: two passes)."""
    if (
        lo is not None
        and hi is not None
        and isinstance(lo, torch.Tensor) != isinstance(hi, torch.Tensor)
    ):
        return torch.clamp(torch.clamp(x, min=lo), max=hi)
    return torch.clamp(x, lo, hi)


def rebin(counts, lo, hi, new_lo, new_hi, whole: bool = False) -> torch.Tensor | None:
    """Re-bin CPU tensors on their NumPy views (None elsewhere: the portable path)."""
    arrays = (counts, lo, hi, new_lo, new_hi)
    if any(a.device.type != "cpu" or a.dtype not in _NUMPY_DTYPES for a in arrays):
        return None
    views = [a.numpy() for a in arrays]
    found = None if _compiled.LIBRARY is None else _compiled.rebin_rows(*views)
    return torch.from_numpy(_numpy_like.rebin_rows(*views, whole) if found is None else found)


def noise_by_cells(counts, edges, deltas, offsets, n: int, gamma: float, scale=None):
    """Run the compiled SQNR cells search on CPU tensors' NumPy views (None elsewhere)."""
    arrays = [a for a in (counts, edges, deltas, offsets, scale) if a is not None]
    if _compiled.LIBRARY is None or any(
        a.device.type != "cpu" or a.dtype not in _NUMPY_DTYPES for a in arrays
    ):
        return None
    views = (a.numpy() for a in (counts, edges, deltas, offsets))
    found = _compiled.noise_by_cells(*views, n, gamma, None if scale is None else scale.numpy())
    return None if found is None else torch.from_numpy(found)


_BITS = {torch.float32: (torch.int32, 23), torch.float64: (torch.int64, 52)}


def round_magnitudes(a: torch.Tensor, mantissa_bits: int, min_exponent: int):
    """``_numpy_like.round_magnitudes`` in torch (signed twins: ``a`` is non-negative)."""
    twin = _BITS.get(a.dtype)
    if twin is None:
        return None
    signed, width = twin
    drop = width - mantissa_bits
    bits = a.view(signed)
    kept = (bits >> drop) & 1
    rounded = (((bits + ((1 << (drop - 1)) - 1) + kept) >> drop) << drop).view(a.dtype)
    magic = 2.0 ** (min_exponent - mantissa_bits + width)
    tiny = (a + magic) - magic
    out = torch.where(a < 2.0**min_exponent, tiny, rounded)
    return torch.where(torch.isnan(a), a, out)


PRIMITIVES = {
    "round_magnitudes": round_magnitudes,
    "noise_by_cells": noise_by_cells,
    "rebin": rebin,
    "minmax": minmax,
    "bincount_rows": bincount_rows,
    "histogram_rows": histogram_rows,
    "clip": clip,
}


_NUMPY_DTYPES = frozenset(
    (
        torch.float16,
        torch.float32,
        torch.float64,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
    )
)


def _view(t):
    if not isinstance(t, torch.Tensor):
        return t  # not an array (a flag, a count kept on the host)
    if not t.is_cpu or t.dtype not in _NUMPY_DTYPES or t.requires_grad:
        raise NoView
    return t.numpy()


def numpy_views(tree):
    """Return ``(tree as NumPy views, True)``, or ``(None, False)`` where a leaf has none.

    Only CPU tensors of dtypes NumPy shares (not bfloat16) have a zero-copy NumPy view.
    """
    return views_or_none(_view, tree)


def _tensor(a):
    if not isinstance(a, (np.ndarray, np.generic)):
        return a
    a = np.asarray(a)
    # views may be read-only or run backwards (torch takes neither); fresh arrays never are
    if a.base is not None and (not a.flags.writeable or (a.ndim and min(a.strides) < 0)):
        a = a.copy()
    return torch.from_numpy(a)


def from_numpy_result(tree):
    """Return NumPy results (nested as :func:`numpy_views` takes them) as CPU tensors."""
    return map_leaves(_tensor, tree)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Copy ``t`` to a host NumPy array (bfloat16, which NumPy lacks, becomes float32)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.cpu().numpy()


def from_numpy(a: np.ndarray, device, dtype_name: str | None) -> torch.Tensor:
    """Return ``a`` as a tensor on ``device``, as bfloat16 where ``dtype_name`` says so."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype_name == "bfloat16":
        t = t.to(torch.bfloat16)
    return t if device is None else t.to(device)


def to_torch(x, device=None) -> torch.Tensor:
    """Return any supported array as a tensor on ``device`` (DLPack where it can be shared)."""
    if array_api_compat.is_torch_array(x):
        t = x
    elif array_api_compat.is_numpy_array(x):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:  # CuPy and other DLPack producers; host-only ones go through NumPy
        try:
            t = torch.from_dlpack(x)
        except (RuntimeError, TypeError, BufferError):
            t = torch.from_numpy(np.from_dlpack(x))
    return t if device is None else t.to(device)


def from_torch(xp_out, t: torch.Tensor, device):
    """Return tensor ``t`` in namespace ``xp_out`` on ``device``."""
    if array_api_compat.is_torch_namespace(xp_out):
        return t.to(device)
    if array_api_compat.is_cupy_namespace(xp_out):
        import cupy

        with cupy.cuda.Device(device.id if hasattr(device, "id") else device):
            return cupy.from_dlpack(t.to(f"cuda:{cupy.cuda.Device().id}").contiguous())
    host = t.detach().cpu().numpy()
    return (
        xp_out.asarray(host)
        if array_api_compat.is_numpy_namespace(xp_out)
        else (xp_out.asarray(host, device=device))
    )
