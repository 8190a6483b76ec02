"""The integer grid's constants: the smallest scale, a symmetric grid's steps, clamping.

Shared by the portable encoding rule (:mod:`encanalyze._encoding`) and the backends' fused
versions of it, which sit below it.
"""

from __future__ import annotations

from ._warnings import warn

__all__ = ["EPS_FLOAT32", "minimum_scale", "symmetric_steps", "warn_clamped"]

EPS_FLOAT32 = 2.0**-23
"""Machine epsilon of float32."""


def minimum_scale(num_steps: int) -> float:
    """Return the smallest scale an encoding may have: ``min(eps_float32, 0.01 / num_steps)``."""
    return min(EPS_FLOAT32, 0.01 / num_steps)


def symmetric_steps(num_steps: int) -> tuple[int, int]:
    """Return ``(negative, positive)`` steps of a symmetric grid: ``(ceil(n/2), floor(n/2))``."""
    return (num_steps + 1) // 2, num_steps // 2


def warn_clamped(dtype, big: float) -> None:
    """Warn that encodings were clamped to ``dtype``'s finite extremes ``+-big``."""
    warn(
        f"encodings were infinite or beyond {dtype}'s range and were clamped to its finite "
        f"extremes (+-{big:.6g})"
    )
