"""Primitives the array API standard lacks: a table of functions resolved once per namespace.

:func:`primitives` returns, for a namespace, one :class:`Primitives` table built on first use:
the native functions of its backend module where it has them (``_numpy_like.py`` serves NumPy
and CuPy, ``_torch.py`` torch, ``_jax.py`` JAX) and the portable ones, written only with
standard functions (``_portable.py``), for everything else, array-api-strict included. Native
entries return exactly what the portable ones return, in the same namespace, dtype and device;
the tests check this on every backend. A backend is one module plus one entry in ``_native``.

The conversions between namespaces (``to_numpy``, ``from_numpy``, ``to_torch``,
``from_torch``) used by persistence and the distributed path live here too.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from functools import cache, partial
from typing import NamedTuple

import array_api_compat
import array_api_compat.numpy as np_xp
import numpy as np
from array_api_compat import (
    is_array_api_strict_namespace,
    is_cupy_namespace,
    is_jax_namespace,
    is_numpy_namespace,
    is_torch_namespace,
)

from .._xp import Array, Namespace
from . import _compiled, _numpy_like, _portable

__all__ = [
    "Primitives",
    "analyzer_input",
    "bincount_rows",
    "clip",
    "compiled_update",
    "from_numpy",
    "from_torch",
    "histogram_rows",
    "minmax",
    "numpy_twin",
    "primitives",
    "quiet",
    "to_numpy",
    "to_torch",
]


class Primitives(NamedTuple):
    """The primitives of one namespace (signatures as the module-level functions, less ``xp``).

    Fused entries (``None`` where the backend has none) replace a whole pure function of the
    core, which stays their specification and fallback: ``minmax_encoding`` is
    :func:`encanalyze._encoding.minmax_encoding` less ``xp``; ``minmax_rows(x, view_shape,
    axes, num_rows)`` is ``_observers.minmax.batch_minmax`` for NaN-free floating input (it
    returns ``(min, max)`` rows, or None to send the input down the portable path); ``rebin``
    is :func:`encanalyze._histograms.rebin` less ``xp`` (or None: the portable path);
    ``noise_by_cells`` is :func:`encanalyze._rules.sqnr.noise_by_cells` less ``xp`` for float64
    host arrays (compiled, ``_compiled.py``; None where not built); ``count_checked(rows, lo, hi,
    onto, absolute)`` is ``onto + histogram_rows(rows, lo, hi, B, True)`` for float host rows
    in the work dtype, with each row's count of NaN values, of values that are not finite and
    of finite values outside ``[lo, hi]`` from the same pass (with ``absolute``, of ``|rows|``,
    and each row's count of negative values; compiled; None where not built, or, from the call,
    for other dtypes); ``round_magnitudes(a, mantissa_bits, min_exponent)`` is
    ``formats._round_magnitudes`` for a float format by the bits of float32 / float64 ``a``
    (None for other dtypes: the portable path).
    """

    minmax: Callable
    bincount_rows: Callable
    histogram_rows: Callable
    clip: Callable
    minmax_encoding: Callable | None = None
    minmax_rows: Callable | None = None
    rebin: Callable | None = None
    noise_by_cells: Callable | None = None
    count_checked: Callable | None = None
    round_magnitudes: Callable | None = None


_TABLE: dict[Namespace, Primitives] = {}
_PORTABLE = ("minmax", "bincount_rows", "histogram_rows", "clip")  # the others are fused passes


def analyzer_input(x):
    """Return ``x`` as the analyzers read it, or raise ``TypeError`` for what they cannot.

    torch tensors leave autograd (statistics never track gradients, and an input's graph is
    not kept alive) and torch's unsigned 16/32/64-bit integers, which lack reductions, are
    widened (to int64; uint64 to float64). NumPy masked arrays are refused: the statistics
    would either honour the mask or not, and neither is what every caller means.
    """
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            "masked arrays are not supported: pass x.filled(np.nan) (NaN values are left out "
            "of the statistics) or x.compressed()"
        )
    if array_api_compat.is_torch_array(x):
        return _optional("_torch").analyzer_input(x)
    return x


def _native(xp: Namespace) -> dict[str, Callable]:
    """Return the native primitives of ``xp`` (imported lazily: torch and CuPy are optional)."""
    if is_numpy_namespace(xp):
        return _numpy_like.primitives(np, host=True)
    if is_cupy_namespace(xp):
        import cupy

        return _numpy_like.primitives(cupy, host=False)
    if is_torch_namespace(xp):
        return _optional("_torch").PRIMITIVES
    if is_jax_namespace(xp):
        return _optional("_jax").PRIMITIVES
    return {}


def primitives(xp: Namespace) -> Primitives:
    """Return the primitives table of namespace ``xp`` (built on first use, then cached)."""
    table = _TABLE.get(xp)
    if table is None:
        portable = Primitives(*(partial(getattr(_portable, f), xp) for f in _PORTABLE))
        table = _TABLE[xp] = portable._replace(**_native(xp))
    return table


def minmax(
    xp: Namespace, x: Array, axes: tuple[int, ...], finite: bool = False
) -> tuple[Array, Array, Array | None]:
    """Reduce ``x`` over ``axes`` to its minimum, maximum and number of NaN values.

    NaN values (and, with ``finite=True``, infinities too) are left out of the range; a slice
    with no such value gives ``(+inf, -inf)``. Integer inputs keep their dtype. The NaN count is
    int64, or ``None`` where a host-side path knows there is no NaN (integers, or NumPy / torch
    CPU inputs without NaN).
    """
    return primitives(xp).minmax(x, axes, finite)


def clip(xp: Namespace, x: Array, lo=None, hi=None) -> Array:
    """Return ``x`` clipped to ``[lo, hi]`` (``xp.clip``; NaN stays NaN, ``x``'s dtype kept).

    Each bound is a Python number, an array broadcasting against ``x``, or None. The native
    versions never read values back to the host (array-api-compat's CuPy ``clip`` assigns
    through boolean masks, a device sync) nor copy Python numbers to the device (torch).
    """
    return primitives(xp).clip(x, lo, hi)


def bincount_rows(xp: Namespace, idx: Array, num_bins: int, weights: Array | None = None) -> Array:
    """Count (or sum ``weights`` of) the bin indices of each row of ``idx`` separately.

    ``idx`` is ``(E, N)`` integer with values in ``[0, num_bins)``; the result is
    ``(E, num_bins)``: int64 counts, or sums in ``weights``' dtype (``weights`` is ``(E, N)``).
    Sums are exact for integer-valued weights below 2**53 (float64) or 2**24 (float32).
    """
    return primitives(xp).bincount_rows(idx, num_bins, weights)


def histogram_rows(
    xp: Namespace, rows: Array, lo: Array, hi: Array, num_bins: int, may_have_nan: bool
) -> Array:
    """Histogram each row of ``rows`` ``(E, V)`` over its own range ``[lo, hi]`` ``(E,)``.

    A value ``x`` lands in bin ``floor((x - lo) / (hi - lo) * num_bins)`` (arithmetic in
    ``rows``' floating dtype, in that order), clamped to ``[0, num_bins - 1]``: ``hi`` is in the
    last bin, values below / above the range (infinities too) in the end bins. NaN values are
    dropped (looked for only when ``may_have_nan``). Needs ``lo < hi``. Returns ``(E, num_bins)``
    float32 counts (the statistics' dtype; counted in int64, so exact up to 2**24 per bin and
    batch, as casting the int64 counts is), without an int64 table of the whole batch.
    """
    return primitives(xp).histogram_rows(rows, lo, hi, num_bins, may_have_nan)


def compiled_update(
    xp: Namespace, update: Callable, state_types: tuple[type, ...] = ()
) -> Callable | None:
    """Return pure ``update(xp, x, state, want_batch)`` compiled for ``xp``, or None.

    JAX: one exact ``jax.jit`` program (see ``_jax.compiled_update``), bit-identical to the
    operations run one by one; other namespaces dispatch eagerly (or have no compiler).
    """
    if not is_jax_namespace(xp):
        return None
    return _optional("_jax").compiled_update(update, state_types)


def quiet(xp: Namespace):
    """Return a context in which ``xp``'s floating-point warnings are off (NumPy's errstate).

    The rules handle infinities and NaN themselves (IEEE arithmetic, as on every other
    backend); NumPy's warnings about them would only reach the user as noise.
    """
    if is_numpy_namespace(xp) or is_array_api_strict_namespace(xp):  # strict computes in NumPy
        return np.errstate(all="ignore")
    from contextlib import nullcontext

    return nullcontext()


HOST_TWIN = True
"""Whether host torch work runs on zero-copy NumPy views (see :func:`numpy_twin`)."""

HOST_TWIN_UPDATE = 1 << 16 if _compiled.LIBRARY is None else math.inf
"""Host torch batches of at most this many values are gathered on their NumPy views. With the
compiled kernels every batch is (they count and re-bin on threads of their own, and torch's
threads, spinning after each of its parallel kernels, would take their cores: 1.6-2x slower in
the update). Without them, larger batches run torch's own multi-threaded kernels."""


def numpy_twin(xp: Namespace, state, batch: Array | None = None, known=None):
    """Return ``(numpy namespace, state as NumPy views, back)`` for host state, else None.

    Host torch tensors and JAX arrays on the CPU (with 64-bit types on) have zero-copy NumPy
    views. With ``batch`` (an update), the views are ``(batch, state)``, for floating batches
    (torch: of at most :data:`HOST_TWIN_UPDATE` values; integer batches keep torch's float32
    ranges). ``known``: ``(state, its views)`` from an earlier call, used where ``state`` is
    that state.

    Encoding rules, and the updates of small batches, are many small array operations; torch
    pays several microseconds of dispatch (and, on a busy machine, a parallel region) per call,
    JAX tens, where NumPy pays one. On the CPU the same code runs on NumPy views of the same
    memory; ``back`` turns a result (or nested tuples of results) into the namespace's arrays.
    The results are the ones the rules compute on NumPy arrays, which the tests hold to the
    ones they compute on torch and JAX (``HOST_TWIN = False`` runs them there).
    """
    if not HOST_TWIN:
        return None
    if is_torch_namespace(xp):
        module = _optional("_torch")
        if batch is not None and (
            batch.numel() > HOST_TWIN_UPDATE or not batch.is_floating_point()
        ):
            return None
    elif is_jax_namespace(xp):
        module = _optional("_jax")
        if not module.twin_takes(batch):
            return None
    else:
        return None
    if state is None:
        views, ok = None, True
    elif known is not None and known[0] is state:
        views, ok = known[1], True
    else:
        views, ok = module.numpy_views(state)
    if ok and batch is not None:
        batch_view, ok = module.numpy_views(batch)
        views = (batch_view, views)
    if not ok:
        return None
    return np_xp, views, module.from_numpy_result


@cache
def _optional(name: str):
    """Return the backend module ``name`` (``"_torch"``, ``"_jax"``), imported on first use.

    torch and JAX are optional: their modules are imported only when an array of theirs
    arrives, and then once (the cached module costs no import machinery per call).
    """
    return importlib.import_module(f".{name}", __package__)


def to_numpy(x: Array) -> np.ndarray:
    """Return ``x`` as a host NumPy array (copied off accelerators; bfloat16 becomes float32)."""
    if array_api_compat.is_numpy_array(x):
        return np.asarray(x)
    if array_api_compat.is_torch_array(x):
        return _optional("_torch").to_numpy(x)
    if array_api_compat.is_cupy_array(x):
        return x.get()
    return np.from_dlpack(x)


def from_numpy(xp: Namespace, a: np.ndarray, device=None, dtype_name: str | None = None) -> Array:
    """Return host array ``a`` in namespace ``xp`` on ``device`` (restoring torch bfloat16)."""
    if is_torch_namespace(xp):
        return _optional("_torch").from_numpy(a, device, dtype_name)
    return xp.asarray(a) if device is None else xp.asarray(a, device=device)


def to_torch(x: Array, device=None):
    """Return ``x`` as a torch tensor on ``device`` (zero-copy through DLPack where possible)."""
    return _optional("_torch").to_torch(x, device)


def from_torch(xp: Namespace, t, device) -> Array:
    """Return torch tensor ``t`` as an array of ``xp`` on ``device`` (zero-copy where possible)."""
    return _optional("_torch").from_torch(xp, t, device)
