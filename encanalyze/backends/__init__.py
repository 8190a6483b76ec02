"""Primitives the array API standard lacks, with native fast paths and a portable fallback.

Each function dispatches on the namespace: NumPy, torch and CuPy get native implementations
(``backends/_numpy.py``, ``_torch.py``, ``_cupy.py``); every other namespace, array-api-strict
included, gets the portable one written only with standard functions (``_portable.py``). Native
paths return exactly what the portable one returns, in the same namespace, dtype and device; the
tests check this on every backend.
"""

from __future__ import annotations

from array_api_compat import is_numpy_namespace, is_torch_namespace

from .._xp import Array, Namespace
from . import _portable

__all__ = ["minmax"]


def minmax(xp: Namespace, x: Array, axes: tuple[int, ...]) -> tuple[Array, Array, Array | None]:
    """Reduce ``x`` over ``axes`` to its minimum, maximum and number of NaN values.

    NaN values are ignored; a slice with no non-NaN value gives ``(+inf, -inf)``. Integer
    inputs keep their dtype. The count is int64, or ``None`` where a host-side path knows there
    is no NaN (integers, or NumPy / torch CPU inputs without NaN).
    """
    if is_numpy_namespace(xp):
        from . import _numpy

        return _numpy.minmax(x, axes)
    if is_torch_namespace(xp):
        from . import _torch

        return _torch.minmax(x, axes)
    return _portable.minmax(xp, x, axes)
