"""torch fast paths."""

from __future__ import annotations

import array_api_compat
import array_api_compat.torch as xp
import numpy as np
import torch

from . import _portable

__all__ = [
    "PRIMITIVES",
    "bincount_rows",
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


def minmax(x: torch.Tensor, axes: tuple[int, ...], finite: bool = False) -> tuple:
    """``aminmax`` for full reductions, ``amin`` + ``amax`` along dims.

    On the CPU the masking path runs only when the reduced result is not clean (checking it is
    a host read, not a device sync). On accelerators the masking path always runs, so that an
    update never waits for the device.
    """
    if x.is_floating_point() and x.device.type != "cpu":
        return _portable.minmax(xp, x, axes, finite)
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
    """``scatter_add_`` along the rows (no offsets, no flattening)."""
    rows = idx.shape[0]
    if weights is None:
        if rows == 1:
            return torch.bincount(idx.reshape(-1), minlength=num_bins).reshape(1, num_bins)
        weights = torch.ones((), dtype=torch.int64, device=idx.device).expand(idx.shape)
    out = torch.zeros((rows, num_bins), dtype=weights.dtype, device=idx.device)
    return out.scatter_add_(1, idx, weights)


def histogram_rows(
    rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, num_bins: int, may_have_nan: bool
) -> torch.Tensor:
    """Apply the portable formula in place, then count with :func:`bincount_rows`."""
    t = torch.sub(rows, lo[:, None])
    t.div_((hi - lo)[:, None]).mul_(num_bins).floor_().clamp_(0, num_bins - 1)
    nbins = num_bins + 1 if may_have_nan else num_bins
    if may_have_nan:
        t = torch.nan_to_num_(t, nan=float(num_bins))
    return bincount_rows(t.long(), nbins)[:, :num_bins]


PRIMITIVES = {"minmax": minmax, "bincount_rows": bincount_rows, "histogram_rows": histogram_rows}


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
