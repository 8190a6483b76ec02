"""Encoding ``shape`` / ``block_size`` validation and the reduction of an input to encodings.

An input is reshaped (a view for contiguous inputs) so that its axes alternate between *kept*
axes, which index encodings, and *reduced* axes, whose values each encoding summarises. Adjacent
axes of the same kind are merged and size-1 axes dropped, so that e.g. a conv weight
``(O, I, kh, kw)`` with encoding shape ``(O, 1, 1, 1)`` becomes an ``(O, I*kh*kw)`` view reduced
over axis 1.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass

from ._errors import EncodingAnalyzerError
from ._xp import Array, Namespace

__all__ = ["Plan", "normalize_block_size", "normalize_shape", "plan", "to_rows"]


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r}") from None


def normalize_shape(shape: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Return ``shape`` as a tuple of positive ints (an int means a 1-tuple)."""
    dims = (shape,) if not isinstance(shape, (tuple, list)) else tuple(shape)
    out = tuple(_as_int(d, f"encoding shape {shape!r}: dimension") for d in dims)
    if any(d < 1 for d in out):
        raise ValueError(f"encoding shape {out} must have positive dimensions")
    return out


def normalize_block_size(
    block_size: int | tuple[int, ...] | list[int] | None, shape: tuple[int, ...]
) -> tuple[int, ...] | None:
    """Validate ``block_size`` against the encoding ``shape``; return it right-aligned to it.

    Missing leading entries are 1 where the encoding dim is > 1 and -1 otherwise.
    """
    if block_size is None:
        return None
    dims = (block_size,) if not isinstance(block_size, (tuple, list)) else tuple(block_size)
    out = tuple(_as_int(b, f"block_size {block_size!r}: entry") for b in dims)
    if len(out) > len(shape):
        raise ValueError(f"block_size {out} has more dimensions than the encoding shape {shape}")
    if any(b < 1 and b != -1 for b in out):
        raise ValueError(f"block_size {out}: entries must be positive or -1")
    lead = shape[: len(shape) - len(out)]
    return tuple(1 if e > 1 else -1 for e in lead) + out


@dataclass(frozen=True)
class Plan:
    """How an input of one shape reduces to encodings of another.

    Attributes
    ----------
    view_shape
        Shape to reshape the input to (kept and reduced axes alternate).
    reduce_axes
        Axes of ``view_shape`` that are reduced; the others index encodings, in order.
    num_encodings
        Number of encodings ``E`` (the product of the encoding shape).
    values_per_encoding
        Number of input values ``V`` each encoding covers.
    """

    view_shape: tuple[int, ...]
    reduce_axes: tuple[int, ...]
    num_encodings: int
    values_per_encoding: int

    @property
    def kept_axes(self) -> tuple[int, ...]:
        """Axes of ``view_shape`` that index encodings."""
        return tuple(a for a in range(len(self.view_shape)) if a not in self.reduce_axes)


@functools.lru_cache(maxsize=256)
def plan(
    input_shape: tuple[int, ...],
    shape: tuple[int, ...],
    block_size: tuple[int, ...] | None = None,
) -> Plan:
    """Plan the reduction of an input of ``input_shape`` to encodings of ``shape``.

    ``shape`` and ``block_size`` must already be normalised (see :func:`normalize_shape` and
    :func:`normalize_block_size`).

    Raises
    ------
    EncodingAnalyzerError
        (a ``ValueError`` and a ``RuntimeError``) if the shapes are incompatible; the message
        names both.
    """
    n = len(input_shape)
    if len(shape) > n:
        raise EncodingAnalyzerError(
            f"encoding shape {shape} has more dimensions than the input shape {input_shape}"
        )
    enc = (1,) * (n - len(shape)) + shape
    pieces: list[tuple[bool, int]] = []  # (reduced?, size)
    if block_size is None:
        for d, e in zip(input_shape, enc, strict=True):
            if e != 1 and e != d:
                raise EncodingAnalyzerError(
                    f"encoding shape {shape} does not match input shape {input_shape}: every "
                    f"encoding dimension (aligned from the right) must be 1 or the input's"
                )
            pieces.append((e == 1, d))
    else:
        blocks = (-1,) * (n - len(block_size)) + block_size
        for d, e, b in zip(input_shape, enc, blocks, strict=True):
            b = d // e if b == -1 else b
            if e * b != d:
                raise EncodingAnalyzerError(
                    f"encoding shape {shape} with block_size {block_size} does not tile input "
                    f"shape {input_shape}: encoding dim {e} x block {b} != input dim {d}"
                )
            pieces += [(False, e), (True, b)]
    merged: list[list] = []
    for reduced, size in pieces:
        if size == 1:
            continue
        if merged and merged[-1][0] == reduced:
            merged[-1][1] *= size
        else:
            merged.append([reduced, size])
    if not any(reduced for reduced, _ in merged):
        merged.append([True, 1])
    view_shape = tuple(size for _, size in merged)
    reduce_axes = tuple(i for i, (reduced, _) in enumerate(merged) if reduced)
    num_encodings = math.prod(shape)
    values = math.prod(view_shape[a] for a in reduce_axes)
    return Plan(view_shape, reduce_axes, num_encodings, values)


def to_rows(xp: Namespace, x: Array, p: Plan) -> Array:
    """Return ``x`` as an ``(E, V)`` array: one row of values per encoding."""
    v = xp.reshape(x, p.view_shape)
    order = p.kept_axes + p.reduce_axes
    if order != tuple(range(len(order))):
        v = xp.permute_dims(v, order)
    return xp.reshape(v, (p.num_encodings, p.values_per_encoding))
