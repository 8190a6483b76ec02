"""The one place that talks to array-api-compat: namespaces, devices and dtypes."""

from __future__ import annotations

from typing import Any

import array_api_compat

Array = Any
Namespace = Any

__all__ = [
    "Array",
    "Namespace",
    "check_same_home",
    "default_float",
    "device_of",
    "div",
    "float_dtype",
    "in_row_blocks",
    "index_dtype",
    "wide_dtype",
    "namespace_name",
    "namespace_of",
    "on_host",
    "take_rows",
    "work_dtype",
]


def namespace_of(*arrays: Array) -> Namespace:
    """Return the array API namespace of ``arrays``.

    Raises
    ------
    TypeError
        If an argument is not an array (a list, a Python scalar, ...) or the arrays belong to
        different namespaces.
    """
    if len(arrays) == 1:  # the common case: one namespace per array type, looked up once
        found = _BY_TYPE.get(type(arrays[0]))
        if found is not None:
            return found
    for x in arrays:
        python_scalar = isinstance(x, (bool, int, float, complex))
        if not array_api_compat.is_array_api_obj(x) or (
            python_scalar and not array_api_compat.is_numpy_array(x)  # NumPy scalars are 0-d
        ):
            raise TypeError(
                f"expected an array (NumPy, torch, CuPy or any array API array), got "
                f"{type(x).__name__}; pass an array, e.g. numpy.asarray(x)"
            )
    xp = array_api_compat.array_namespace(*arrays)
    if len(arrays) == 1:
        _BY_TYPE[type(arrays[0])] = xp  # array-api-compat decides by the type alone
    return xp


_BY_TYPE: dict[type, Namespace] = {}


def device_of(x: Array) -> Any:
    """Return the device ``x`` lives on (``array_api_compat.device``)."""
    get = _DEVICE_OF.get(type(x))
    if get is None:
        get = _DEVICE_OF[type(x)] = _device_getter(x)
    return get(x)


_DEVICE_OF: dict[type, Any] = {}


def _device_getter(x: Array):
    """Return how to read the device of arrays of ``x``'s type: NumPy and torch directly."""
    if array_api_compat.is_numpy_array(x) and array_api_compat.device(x) == "cpu":
        return lambda _: "cpu"
    if array_api_compat.is_torch_array(x):
        return lambda t: t.device
    return array_api_compat.device


def on_host(x: Array) -> bool:
    """Return True where reading ``x``'s values costs no device sync (NumPy, torch on the CPU).

    Such backends may take data-dependent shortcuts; everything else (GPUs, unknown backends)
    runs the same sync-free code whatever the data.
    """
    if array_api_compat.is_numpy_array(x):
        return True
    if array_api_compat.is_torch_array(x):
        return x.device.type == "cpu"
    return False


def in_row_blocks(xp: Namespace, fn, arrays: tuple, rows_per_block: int, *args) -> Array:
    """Return ``fn(*arrays, *args)``, computed on equal blocks of rows and concatenated.

    ``fn`` must work row by row (its result's row ``i`` depends on the arrays' rows ``i`` only).
    Blocks keep temporaries small; one block covers all rows when ``rows_per_block`` does.
    """
    num_rows = arrays[0].shape[0]
    if rows_per_block >= num_rows:
        return fn(*arrays, *args)
    step = -(-num_rows // -(-num_rows // max(1, rows_per_block)))  # equal pieces
    blocks = [
        fn(*(a[start : start + step, ...] for a in arrays), *args)
        for start in range(0, num_rows, step)
    ]
    return xp.concat(blocks, axis=0)


def take_rows(xp: Namespace, table: Array, idx: Array) -> Array:
    """Return ``table[r, idx[r]]``: a ``(R, W)`` table, integer ``idx`` ``(R,)`` or ``(R, K)``.

    One gather on the flattened table, the row offsets added to the indices.
    """
    rows, width = table.shape
    offsets = xp.arange(rows, dtype=idx.dtype, device=device_of(idx)) * width
    offsets = xp.reshape(offsets, (rows,) + (1,) * (idx.ndim - 1))
    flat = xp.take(xp.reshape(table, (-1,)), xp.reshape(idx + offsets, (-1,)))
    return xp.reshape(flat, idx.shape)


def namespace_name(xp: Namespace) -> str:
    """Return a short human name for a namespace (``numpy``, ``torch``, ``array_api_strict``)."""
    return xp.__name__.removeprefix("array_api_compat.")


def default_float(xp: Namespace, device: Any) -> Any:
    """Return the namespace's default real floating dtype on ``device``."""
    return xp.__array_namespace_info__().default_dtypes(device=device)["real floating"]


def float_dtype(xp: Namespace, x: Array) -> Any:
    """Return the floating dtype that stats and encodings of ``x`` are kept in.

    Real floating inputs keep their dtype; integer and bool inputs use the namespace's default
    floating dtype.

    Raises
    ------
    TypeError
        For complex or non-numeric dtypes.
    """
    dtype = x.dtype
    if (xp, dtype) in _REAL_FLOATING:
        return dtype
    try:
        if xp.isdtype(dtype, "real floating"):
            _REAL_FLOATING.add((xp, dtype))
            return dtype
        if xp.isdtype(dtype, ("integral", "bool")):
            return default_float(xp, device_of(x))
        is_complex = xp.isdtype(dtype, "complex floating")
    except (TypeError, ValueError, KeyError):
        is_complex = False
    kind = "complex" if is_complex else "non-numeric"
    raise TypeError(
        f"unsupported {kind} dtype {dtype}: encodings are computed for real floating, integer "
        f"and bool arrays"
    )


_REAL_FLOATING: set[tuple[Namespace, Any]] = set()  # (namespace, dtype) pairs seen floating
_INDEX_DTYPES: dict[Namespace, Any] = {}


def wide_dtype(xp: Namespace, device) -> Any:
    """float64 where the device has it (exact integer sums to 2**53), else float32."""
    dtypes = xp.__array_namespace_info__().dtypes(device=device, kind="real floating")
    return xp.float64 if "float64" in dtypes else xp.float32


def index_dtype(xp: Namespace) -> Any:
    """Return the dtype of counts and indices: int64, or int32 where the namespace lacks it.

    JAX has int64 only with ``jax_enable_x64``; its setting is read on every call.
    """
    dtype = _INDEX_DTYPES.get(xp)
    if dtype is None:
        ints = xp.__array_namespace_info__().dtypes(kind="signed integer")
        dtype = xp.int64 if "int64" in ints else xp.int32
        if not array_api_compat.is_jax_namespace(xp):
            _INDEX_DTYPES[xp] = dtype
    return dtype


def div(xp: Namespace, a: Array, b: Array | float) -> Array:
    """Return ``a / b``, correctly rounded on every backend.

    Two backends turn a division into a multiplication by the reciprocal, which can differ in
    the last bit: XLA (JAX) where the divisor is broadcast (a scalar, or a row vector against a
    matrix), and torch on an accelerator where the divisor is a Python number (a CPU scalar).
    There the divisor is first materialised on the device (at the result's shape for JAX,
    behind an optimisation barrier so that ``jax.jit`` cannot fold the broadcast back; as a
    0-d tensor filled in place for torch, which costs no host-to-device copy). Elsewhere this
    is ``a / b``.
    """
    if array_api_compat.is_torch_namespace(xp):
        if hasattr(b, "shape") or a.device.type == "cpu":
            return a / b
        return a / xp.full((), b, dtype=a.dtype, device=a.device)
    if not array_api_compat.is_jax_namespace(xp):
        return a / b
    import jax  # the namespace is JAX's: jax is installed

    b = xp.asarray(b, dtype=a.dtype) if not hasattr(b, "shape") else b
    shape = jax.numpy.broadcast_shapes(a.shape, b.shape)
    if tuple(b.shape) != tuple(shape):  # under jax.jit too: the barrier keeps it materialised
        b = jax.lax.optimization_barrier(jax.numpy.broadcast_to(b, shape))
    return a / b


def work_dtype(xp: Namespace, dtype: Any) -> Any:
    """Return the dtype to do encoding arithmetic in: float64 for float64, else float32."""
    return xp.float64 if dtype == xp.float64 else xp.float32


def check_same_home(home: tuple[Namespace, Any], xp: Namespace, device: Any) -> None:
    """Raise unless namespace ``xp`` and ``device`` are ``home = (namespace, device)``.

    Raises
    ------
    TypeError
        When the namespaces differ (both are named).
    ValueError
        When the devices differ (both are named).
    """
    xp_ref, dev_ref = home
    if xp_ref is not xp:
        raise TypeError(
            f"this analyzer's statistics are {namespace_name(xp_ref)} arrays but the input is a "
            f"{namespace_name(xp)} array; use one namespace per analyzer (or reset_stats())"
        )
    if dev_ref != device:
        raise ValueError(
            f"this analyzer's statistics are on device {dev_ref} but the input is on device "
            f"{device}; move the input there (or reset_stats())"
        )
