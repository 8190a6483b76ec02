"""Primitives the array API standard lacks, with native fast paths and a portable fallback.

Each function dispatches on the namespace: NumPy, torch and CuPy get native implementations
(``backends/_numpy.py``, ``_torch.py``, ``_cupy.py``); every other namespace, array-api-strict
included, gets the portable one written only with standard functions (``_portable.py``). Native
paths return exactly what the portable one returns, in the same namespace, dtype and device; the
tests check this on every backend.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
from array_api_compat import is_cupy_namespace, is_numpy_namespace, is_torch_namespace

from .._xp import Array, Namespace
from . import _portable

__all__ = [
    "bincount_rows",
    "from_numpy",
    "from_torch",
    "histogram_rows",
    "minmax",
    "to_numpy",
    "to_torch",
]


def _native(xp: Namespace):
    """Return the native module for ``xp``, or None (imported lazily: torch/cupy are optional)."""
    if is_numpy_namespace(xp):
        from . import _numpy

        return _numpy
    if is_torch_namespace(xp):
        from . import _torch

        return _torch
    if is_cupy_namespace(xp):
        from . import _cupy

        return _cupy
    return None


def minmax(
    xp: Namespace, x: Array, axes: tuple[int, ...], finite: bool = False
) -> tuple[Array, Array, Array | None]:
    """Reduce ``x`` over ``axes`` to its minimum, maximum and number of NaN values.

    NaN values (and, with ``finite=True``, infinities too) are left out of the range; a slice
    with no such value gives ``(+inf, -inf)``. Integer inputs keep their dtype. The NaN count is
    int64, or ``None`` where a host-side path knows there is no NaN (integers, or NumPy / torch
    CPU inputs without NaN).
    """
    native = _native(xp)
    if native is not None and hasattr(native, "minmax"):
        return native.minmax(x, axes, finite)
    return _portable.minmax(xp, x, axes, finite)


def bincount_rows(xp: Namespace, idx: Array, num_bins: int, weights: Array | None = None) -> Array:
    """Count (or sum ``weights`` of) the bin indices of each row of ``idx`` separately.

    ``idx`` is ``(E, N)`` integer with values in ``[0, num_bins)``; the result is
    ``(E, num_bins)``: int64 counts, or sums in ``weights``' dtype (``weights`` is ``(E, N)``).
    Sums are exact for integer-valued weights below 2**53 (float64) or 2**24 (float32).
    """
    native = _native(xp)
    if native is not None:
        return native.bincount_rows(idx, num_bins, weights)
    return _portable.bincount_rows(xp, idx, num_bins, weights)


def histogram_rows(
    xp: Namespace, rows: Array, lo: Array, hi: Array, num_bins: int, may_have_nan: bool
) -> Array:
    """Histogram each row of ``rows`` ``(E, V)`` over its own range ``[lo, hi]`` ``(E,)``.

    A value ``x`` lands in bin ``floor((x - lo) / (hi - lo) * num_bins)`` (arithmetic in
    ``rows``' floating dtype, in that order), clamped to ``[0, num_bins - 1]``: ``hi`` is in the
    last bin, values below / above the range (infinities too) in the end bins. NaN values are
    dropped (looked for only when ``may_have_nan``). Needs ``lo < hi``. Returns ``(E, num_bins)``
    int64 counts.
    """
    native = _native(xp)
    if native is not None:
        return native.histogram_rows(rows, lo, hi, num_bins, may_have_nan)
    return _portable.histogram_rows(xp, rows, lo, hi, num_bins, may_have_nan)


def to_numpy(x: Array) -> np.ndarray:
    """Return ``x`` as a host NumPy array (copied off accelerators; bfloat16 becomes float32)."""
    if array_api_compat.is_numpy_array(x):
        return np.asarray(x)
    if array_api_compat.is_torch_array(x):
        from . import _torch

        return _torch.to_numpy(x)
    if array_api_compat.is_cupy_array(x):
        return x.get()
    return np.from_dlpack(x)


def from_numpy(xp: Namespace, a: np.ndarray, device=None, dtype_name: str | None = None) -> Array:
    """Return host array ``a`` in namespace ``xp`` on ``device`` (restoring torch bfloat16)."""
    if is_torch_namespace(xp):
        from . import _torch

        return _torch.from_numpy(a, device, dtype_name)
    return xp.asarray(a) if device is None else xp.asarray(a, device=device)


def to_torch(x: Array, device=None):
    """Return ``x`` as a torch tensor on ``device`` (zero-copy through DLPack where possible)."""
    from . import _torch

    return _torch.to_torch(x, device)


def from_torch(xp: Namespace, t, device) -> Array:
    """Return torch tensor ``t`` as an array of ``xp`` on ``device`` (zero-copy where possible)."""
    from . import _torch

    return _torch.from_torch(xp, t, device)
