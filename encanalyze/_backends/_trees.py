"""Mapping over the arrays of analyzer states: nested tuples, NamedTuples and dataclasses."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["NoView", "map_leaves", "views_or_none"]


def map_leaves(fn, tree):
    """Apply ``fn`` to each leaf of nested tuples, NamedTuples and dataclasses (None stays).

    A node with a ``_map_arrays(fn)`` method maps itself; any other object is a leaf. A node
    held in several places is mapped once, and its results stay one object.
    """
    done: dict[int, object] = {}

    def go(node):
        if node is None:
            return None
        out = done.get(id(node))
        if out is None:
            kind = type(node)
            rebuild = _REBUILD.get(kind)
            if rebuild is None:
                rebuild = _REBUILD[kind] = _rebuilder(kind)
            out = done[id(node)] = fn(node) if rebuild is _LEAF else rebuild(go, node)
        return out

    return go(tree)


_LEAF = object()
_REBUILD: dict[type, object] = {}


def _rebuilder(kind: type):
    """Return how to map over a node of type ``kind``: leaf, tuple, NamedTuple or dataclass."""
    if issubclass(kind, (np.ndarray, np.generic)):
        return _LEAF
    if kind is tuple:
        return lambda go, t: tuple([go(v) for v in t])
    if issubclass(kind, tuple) and hasattr(kind, "_fields"):
        return lambda go, t: kind(*[go(v) for v in t])
    if hasattr(kind, "_map_arrays"):  # builds what it holds lazily: mapped as it is held
        return lambda go, t: t._map_arrays(go)
    if dataclasses.is_dataclass(kind):
        names = tuple(f.name for f in dataclasses.fields(kind) if f.init)
        return lambda go, t: kind(*[go(getattr(t, n)) for n in names])
    return _LEAF  # anything else is a leaf (arrays of every library among them)


class NoView(Exception):
    """A leaf without a zero-copy NumPy view, raised by a view function.

    An accelerator's array, a dtype NumPy lacks, a tensor that tracks gradients.
    """


def views_or_none(view, tree) -> tuple[object, bool]:
    """Return ``(map_leaves(view, tree), True)``, or ``(None, False)``.

    The latter where ``view`` raised :class:`NoView` for a leaf.
    """
    try:
        return map_leaves(view, tree), True
    except NoView:
        return None, False
