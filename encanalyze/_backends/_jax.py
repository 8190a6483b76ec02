"""JAX fast paths: compiled binning and ranges, ``jnp.bincount`` with a static ``length``.

The per-value passes of an update (the NaN-ignoring range; bin index, clamp and count) run as
one ``jax.jit`` program each instead of a dozen eagerly dispatched operations. Compilation
must not change a bit, and XLA changes two things by default: its simplifier folds a division
by a broadcast array into a multiplication by the reciprocal (``_xp.div`` puts the broadcast
behind an optimisation barrier), and LLVM's optimiser contracts ``a * b + c`` into a fused
multiply-add (one rounding instead of two; openxla/xla#41579), which :data:`EXACT` turns off.
The tests hold every compiled entry equal to the eager, portable one. A whole update is
compiled only where it does no arithmetic that rounds (min-max: compare, select, count);
histogram updates were seen to round differently as one fused program.
"""

from __future__ import annotations

import dataclasses
import math
from functools import wraps

import jax
import jax.numpy as jnp
import numpy as np

from .._xp import div, index_dtype, wide_dtype
from . import _portable
from ._trees import NoView, map_leaves, views_or_none

__all__ = [
    "EXACT",
    "PRIMITIVES",
    "bincount_rows",
    "compiled_update",
    "from_numpy_result",
    "histogram_rows",
    "minmax",
    "numpy_views",
    "twin_takes",
]


EXACT = {"xla_backend_optimization_level": 0}
"""Compiler options under which a program computes what its operations compute one by one
(LLVM at level 0 forms no fused multiply-adds; measured cost here ~20%)."""


def _compiled(fn, static_argnums: tuple[int, ...], options: dict | None = EXACT):
    """Return ``fn`` compiled as one program (with compiler ``options``).

    Called while tracing (inside a caller's ``jax.jit``, which must own the compiler options),
    it is ``fn`` itself, inlined into the caller's program.
    """
    program = jax.jit(fn, static_argnums=static_argnums, compiler_options=options)

    @wraps(fn)
    def call(x, *args, **kwargs):
        run = fn if isinstance(x, jax.core.Tracer) else program
        return run(x, *args, **kwargs)

    return call


def _as_pytree(kind: type) -> None:
    """Let ``jax.jit`` take and return the dataclass ``kind`` (its fields are arrays)."""
    if kind not in _PYTREES:
        fields = [f.name for f in dataclasses.fields(kind)]
        jax.tree_util.register_dataclass(kind, data_fields=fields, meta_fields=[])
        _PYTREES.add(kind)


_PYTREES: set[type] = set()


def compiled_update(update, state_types: tuple[type, ...] = ()):
    """Return ``update(xp, x, state, want_batch)`` as one program, ``fn(x, state, want_batch)``.

    For observers whose update only compares, selects and counts (min-max): no rounding, so
    no optimisation can change its result, and the program is compiled with XLA's defaults
    (vectorised; :data:`EXACT` code runs several times slower). It retraces for each new input
    shape, dtype and state structure; the caller keeps it. ``state_types``: the dataclasses
    its state and statistics are made of.
    """
    for kind in state_types:
        _as_pytree(kind)
    import array_api_compat

    xp = array_api_compat.array_namespace(jnp.empty(0))

    def run(x, state, want_batch):
        return update(xp, x, state, want_batch)

    return _compiled(run, (2,), options=None)


def bincount_rows(idx, num_bins: int, weights=None):
    """One ``jnp.bincount`` over row-offset keys, its length fixed by the shapes.

    Its inputs are materialised (an optimisation barrier): fused into the scatter, the index
    and weight computations of a compiled caller were seen to differ from their own results.
    """
    rows = idx.shape[0]
    # materialised: computed inside the scatter's fusion, indices and weights can differ
    idx, weights = jax.lax.optimization_barrier((idx, weights))
    keys = idx + (jnp.arange(rows, dtype=idx.dtype) * num_bins)[:, None]
    flat_weights = None if weights is None else jnp.reshape(weights, (-1,))
    counts = jnp.bincount(jnp.reshape(keys, (-1,)), flat_weights, length=rows * num_bins)
    dtype = idx.dtype if weights is None else weights.dtype
    return jnp.reshape(counts.astype(dtype), (rows, num_bins))


def _histogram_rows(rows, lo, hi, num_bins: int, may_have_nan: bool):
    t = div(jnp, rows - lo[:, None], (hi - lo)[:, None]) * num_bins
    t = jnp.clip(jnp.floor(t), 0, num_bins - 1)
    nbins = num_bins + 1 if may_have_nan else num_bins
    if may_have_nan:
        t = jnp.where(jnp.isnan(t), num_bins, t)
    counts = bincount_rows(t.astype(index_dtype(jnp)), nbins)[:, :num_bins]
    return counts.astype(wide_dtype(jnp, None))  # float64 with x64, else float32


histogram_rows = _compiled(_histogram_rows, (3, 4))
"""The portable bin formula, then :func:`bincount_rows`, compiled as one program."""


def _minmax(x, axes: tuple[int, ...], finite: bool = False):
    import array_api_compat

    if not jnp.issubdtype(x.dtype, jnp.floating):
        return jnp.min(x, axis=axes), jnp.max(x, axis=axes), None
    lo, hi = jnp.min(x, axis=axes), jnp.max(x, axis=axes)  # NaN (and infinity) propagate
    clean = jnp.all(jnp.isfinite(lo) & jnp.isfinite(hi)) if finite else ~jnp.any(jnp.isnan(lo))
    xp = array_api_compat.array_namespace(x)

    def plain(_):
        return lo, hi, jnp.zeros(lo.shape, dtype=index_dtype(jnp))

    def masked(_):
        return _portable.minmax(xp, x, axes, finite)

    return jax.lax.cond(clean, plain, masked, None)


minmax = _compiled(_minmax, (1, 2), options=None)
"""The portable NaN-ignoring range (min, max, NaN count) as one program: two plain reductions,
and the masking ones only where a slice holds NaN (or, with ``finite``, an infinity). It only
compares and selects, so it is compiled with XLA's defaults."""


PRIMITIVES = {"bincount_rows": bincount_rows, "histogram_rows": histogram_rows, "minmax": minmax}


def twin_takes(batch) -> bool:
    """Return whether host work on ``batch`` (None: encodings) may run on NumPy views.

    With 64-bit types on (``jax_enable_x64``), where JAX's statistics have NumPy's dtypes;
    floating batches only.
    """
    if not jax.config.read("jax_enable_x64"):
        return False
    return batch is None or jnp.issubdtype(batch.dtype, jnp.floating)


def numpy_views(tree):
    """Return ``(tree as NumPy views, True)``, or ``(None, False)`` where a leaf has none.

    Arrays on the first CPU device, of dtypes NumPy has (not bfloat16), have zero-copy
    read-only views; :func:`from_numpy_result` puts results back there.
    """
    cpu = jax.devices("cpu")[0]

    def view(a):
        if not isinstance(a, jax.Array):
            return a  # not an array (a flag, a count kept on the host)
        if a.dtype == jnp.bfloat16 or a.devices() != {cpu}:
            raise NoView
        return np.asarray(a)

    return views_or_none(view, tree)


def from_numpy_result(tree):
    """Return NumPy results (nested as :func:`numpy_views` takes them) as JAX arrays.

    They go to the first CPU device, where their inputs were. Putting an array on a device
    costs tens of microseconds whatever its size, so the small ones go together: one buffer
    of each dtype, cut into the arrays by one compiled program (kept per layout).
    """
    cpu = jax.devices("cpu")[0]
    leaves: dict[int, np.ndarray] = {}  # by the id of the result's own leaf

    def collect(a):
        if isinstance(a, (np.ndarray, np.generic)):
            leaves.setdefault(id(a), np.asarray(a))
        return a

    map_leaves(collect, tree)
    if not leaves:
        return tree
    keys, found = list(leaves), list(leaves.values())
    arrays: list = list(found)  # each replaced by its JAX array
    small: dict[np.dtype, list[int]] = {}
    for i, a in enumerate(found):
        if a.size <= SMALL:
            small.setdefault(a.dtype, []).append(i)
    groups = [g for g in small.values() if len(g) > 1]
    if groups:  # one put per dtype, one program cutting them
        buffers = [np.concatenate([found[i].reshape(-1) for i in g]) for g in groups]
        layout = tuple(tuple(found[i].shape for i in g) for g in groups)
        cut = _unpacker(layout)(*jax.device_put(buffers, cpu))
        for g, parts in zip(groups, cut, strict=True):
            for i, part in zip(g, parts, strict=True):
                arrays[i] = part
    rest = [i for i, a in enumerate(arrays) if isinstance(a, np.ndarray)]
    for i, a in zip(rest, jax.device_put([arrays[i] for i in rest], cpu), strict=True):
        arrays[i] = a
    done = dict(zip(keys, arrays, strict=True))
    return map_leaves(lambda a: done.get(id(a), a), tree)


SMALL = 1 << 12
"""Arrays of at most this many values are put on the device packed together."""


_UNPACKERS: dict[tuple, object] = {}


def _unpacker(layout: tuple):
    """Return the compiled program cutting packed buffers into arrays of ``layout``'s shapes."""
    program = _UNPACKERS.get(layout)
    if program is None:

        def unpack(*buffers):
            out = []
            for buffer, shapes in zip(buffers, layout, strict=True):
                parts, start = [], 0
                for shape in shapes:
                    size = math.prod(shape)
                    parts.append(jnp.reshape(buffer[start : start + size], shape))
                    start += size
                out.append(tuple(parts))
            return tuple(out)

        program = _UNPACKERS[layout] = jax.jit(unpack)
    return program
