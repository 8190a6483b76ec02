"""Terminal text: :func:`printable` escapes control characters for human-readable output."""

from __future__ import annotations

import re

__all__ = ["printable"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]|[\ud800-\udfff]")


def printable(text: str) -> str:
    r"""Escape control characters and lone surrogates (``\x1b``, ``\n``, ``\udc80``)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
