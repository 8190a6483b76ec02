"""What the command prints and writes: tensor selection, table cells, notes, strict JSON."""

from __future__ import annotations

import fnmatch
import json
import math
import sys
from pathlib import Path

from ._files import printable, write_atomic

__all__ = ["cell", "config_of", "db", "note", "number", "selected", "strict_json", "write_json"]


def selected(name: str, args) -> bool:
    """Return whether ``--include``/``--exclude`` keep the tensor ``name``."""
    if args.include and not any(fnmatch.fnmatchcase(name, p) for p in args.include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in args.exclude)


def number(v: float, width: int = 11) -> str:
    """Return ``v`` as a table cell of four significant digits."""
    return f"{v:>{width}.4g}"


def cell(text: str, width: int) -> str:
    """Return ``text`` escaped, elided in the middle (``…``) when longer than ``width``."""
    text = printable(text)
    if len(text) > width:
        keep = width - 1
        text = text[: (keep + 1) // 2] + "\u2026" + text[len(text) - keep // 2 :]
    return f"{text:<{width}}"


def db(value: float | None) -> str:
    """Return an SQNR cell (``n/a`` for ``None``)."""
    return f"{'n/a':>9}" if value is None else f"{value:>9.2f}"


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


def config_of(args) -> dict:
    """Return the command's options as a JSON-compatible dict."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def note(message: str) -> None:
    """Print one note line to stderr."""
    print(f"encanalyze: note: {printable(message)}", file=sys.stderr)


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as strict JSON to ``path``, atomically."""
    text = strict_json(obj).encode()
    write_atomic(path, lambda f: f.write(text))
