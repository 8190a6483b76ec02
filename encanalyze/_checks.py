"""Validation of integer parameters, shared by the analyzers."""

from __future__ import annotations

import operator

__all__ = ["int_at_least"]


def int_at_least(value: object, least: int, name: str) -> int:
    """Return ``value`` as an int >= ``least``; ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer >= {least}, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer >= {least}, got {value!r}") from None
    if out < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return out
