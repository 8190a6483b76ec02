"""Text out: :func:`printable` escapes control characters; :func:`strict_json`, strict JSON."""

from __future__ import annotations

import json
import math
import re

__all__ = ["printable", "strict_json"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]|[\ud800-\udfff]")


def printable(text: str) -> str:
    r"""Escape control characters and lone surrogates (``\x1b``, ``\n``, ``\udc80``)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def strict_json(obj) -> str:
    """Return strict JSON: non-finite floats become the strings "inf", "-inf" and "nan"."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), indent=2, allow_nan=False)
