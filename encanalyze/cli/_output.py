"""What the command prints and writes: tensor selection, table cells, notes, strict JSON, plots."""

from __future__ import annotations

import fnmatch
import re
import sys
from pathlib import Path

import numpy as np

from .._io import printable, strict_json, write_atomic
from .._registry import METHODS

__all__ = [
    "cell",
    "config_of",
    "db",
    "note",
    "number",
    "plot",
    "one_line",
    "selected",
    "strict_json",  # (from encanalyze._io)
    "write_json",
]


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


def score(value: float, unit: str) -> str:
    """Return a model's score: ``31.49 dB`` (output SQNR) or ``98.44% agree``."""
    return f"{value:.2f} dB" if unit == "dB" else f"{value:.2f}% agree"


def scores(errors) -> str:
    """Return each output's score, ``y 31.49 dB, ids 98.44% agree`` (of an ``OutputErrors``)."""
    parts = [f"{k} {score(v, 'dB')}" for k, v in errors.sqnr_db().items()]
    parts += [f"{k} {score(v, '%')}" for k, v in errors.agreement_percent().items()]
    return printable(", ".join(parts))


def judged_by(unit: str) -> str:
    """Return what a model's score is: ``output SQNR`` or ``outputs' agreement``."""
    return "output SQNR" if unit == "dB" else "outputs' agreement"


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


def one_line(err: BaseException) -> str:
    """Return one line for ``err``: its message (with its type where it is no ``ValueError``)."""
    text = str(err).splitlines()[0] if str(err) else ""
    return text if isinstance(err, (ValueError, OSError)) else f"{type(err).__name__}: {text}"


def plot(entries: list[dict], tensors: dict[str, np.ndarray], directory: Path) -> list[Path]:
    """Draw one histogram PNG per entry in ``directory`` (each method's range; ``--plot``).

    ``entries``: ``{name, shape, methods: {method: {min, max, sqnr_db}}, best}`` each; a name
    becomes a file name with its other characters as ``_`` (``a/b`` and ``a_b``: ``a_b.png``
    and ``a_b-2.png``).
    """
    import matplotlib  # optional: the options check asks for it before any work

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written, stems = [], set()
    palette = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
    colors = {m: palette[i % len(palette)] for i, m in enumerate(METHODS)}
    for e in entries:
        values = tensors[e["name"]].astype(np.float64).ravel()
        values = values[np.isfinite(values)]
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        ax.hist(values, bins=256, color="0.6", log=True)
        for method, r in e["methods"].items():
            lo, hi = min(r["min"]), max(r["max"])
            label = f"{method}: [{lo:.4g}, {hi:.4g}], SQNR {r['sqnr_db']:.2f} dB"
            if method == e["best"]:
                label += " (in use)"
            ax.axvline(lo, color=colors[method], linestyle="--", label=label)
            ax.axvline(hi, color=colors[method], linestyle="--")
        ax.set_title(f"{printable(e['name'])} {tuple(e['shape'])}")
        ax.set_xlabel("value")
        ax.set_ylabel("count (log)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        stem = base = re.sub(r"[^A-Za-z0-9._-]+", "_", e["name"])
        n = 2
        while stem in stems:
            stem, n = f"{base}-{n}", n + 1
        stems.add(stem)
        path = directory / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
