"""Saving and loading analyzers: one portable ``.npz`` file, readable by any backend."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import array_api_compat
import numpy as np

from ._analyzer import STATE_FORMAT_VERSION, EncodingAnalyzer
from ._backends import from_numpy, to_numpy
from ._io import NpzError, read_member, write_atomic
from ._registry import ANALYZERS

__all__ = ["StatsFileError", "load", "save"]

FORMAT = "encanalyze-stats"


class StatsFileError(ValueError):
    """A statistics file is truncated, corrupt, of another version, or of another class."""


def save(analyzer: EncodingAnalyzer, path: str | os.PathLike) -> None:
    """Write ``analyzer``'s class, parameters and statistics to one ``.npz`` file at ``path``.

    The file holds a JSON header (format, version, class, parameters, dtypes) and the statistics
    as plain NumPy arrays (no pickle), so it loads into any backend. It is written to a
    temporary file and renamed into place: an interrupted save never leaves a partial file. A
    symlink is written through to its target, whose permission bits are kept; a path that is
    not a regular file (a FIFO, a device, a folder) raises ``ValueError``.
    """
    if type(analyzer).__name__ not in ANALYZERS:
        raise TypeError(f"cannot save a {type(analyzer).__name__}")
    sd = analyzer.state_dict()
    arrays = {} if sd["state"] is None else sd["state"]
    header = {
        "format": FORMAT,
        "format_version": sd["format_version"],
        "class": sd["class"],
        "params": sd["params"],
        "stats_params": sd["stats_params"],
        "dtypes": {k: str(v.dtype).removeprefix("torch.") for k, v in arrays.items()},
    }
    payload = {f"state.{k}": to_numpy(v) for k, v in arrays.items()}
    payload["header"] = np.asarray(json.dumps(header))
    write_atomic(path, lambda f: np.savez(f, **payload))


MAX_HEADER_BYTES = 1 << 20
"""The largest JSON header a statistics file may have."""

MAX_STATE_BYTES = 1 << 34
"""The default limit on the bytes of one statistics array (16 GiB), checked before inflating."""


def _read(path: Path, max_bytes: int) -> tuple[dict, dict]:
    """Read the header and the arrays it names, checking sizes before inflating anything."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise
    except OSError as err:
        raise StatsFileError(f"{path}: cannot read ({err})") from err
    if not stat.S_ISREG(mode):
        raise StatsFileError(f"{path}: not a regular file")
    try:
        with zipfile.ZipFile(path) as z:
            header = _header(path, z)
            arrays = {}
            for key in header.get("dtypes", {}):
                arrays[key] = _member(path, z, f"state.{key}.npy", max_bytes)
    except StatsFileError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise StatsFileError(f"{path}: not a readable encanalyze statistics file ({err})") from err
    _validate_values(path, arrays)
    return header, arrays


def _member(path: Path, z: zipfile.ZipFile, name: str, max_bytes: int) -> np.ndarray:
    try:
        return read_member(z, name, max_bytes, MAX_HEADER_BYTES)
    except NpzError as err:
        raise StatsFileError(f"{path}: {err}") from None


def _header(path: Path, z: zipfile.ZipFile) -> dict:
    text = _member(path, z, "header.npy", MAX_HEADER_BYTES)
    try:
        header = json.loads(str(text[()]))
    except (ValueError, RecursionError) as err:
        raise StatsFileError(f"{path}: corrupt header ({type(err).__name__})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StatsFileError(f"{path}: not an encanalyze statistics file")
    if header.get("format_version") != STATE_FORMAT_VERSION:
        raise StatsFileError(
            f"{path}: format version {header.get('format_version')!r} is not supported "
            f"(this encanalyze reads version {STATE_FORMAT_VERSION})"
        )
    cls = header.get("class")
    if not isinstance(cls, str) or cls not in ANALYZERS:
        raise StatsFileError(f"{path}: unknown analyzer class {cls!r}")
    for key in ("params", "stats_params", "dtypes"):
        if not isinstance(header.get(key, {}), dict):
            raise StatsFileError(f"{path}: header field {key!r} is not an object")
    return header


def _validate_values(path: Path, arrays: dict) -> None:
    """Check counts are finite and >= 0 and ranges ordered (or the empty marker inf, -inf)."""
    for key in ("counts", "num_nan", "num_negative", "count"):
        a = arrays.get(key)
        if a is not None and a.size and not (np.all(np.isfinite(a)) and np.all(a >= 0)):
            raise StatsFileError(f"{path}: {key!r} holds negative or non-finite counts")
    for lo_key, hi_key in (("lo", "hi"), ("min", "max"), ("limit_lo", "limit_hi")):
        lo, hi = arrays.get(lo_key), arrays.get(hi_key)
        if lo is None or hi is None or lo.shape != hi.shape:
            continue
        with np.errstate(invalid="ignore"):
            empty = (lo == np.inf) & (hi == -np.inf)
            if not np.all((lo <= hi) | empty):
                raise StatsFileError(f"{path}: {lo_key!r} exceeds {hi_key!r} (or is NaN)")
        counts = arrays.get("counts")
        if lo_key != "lo" or counts is None or counts.ndim != 2 or counts.shape[:1] != lo.shape:
            continue  # shapes are checked when the state is built
        if np.any(counts[empty, 1:-1]):  # a histogram without a range holds only infinities
            raise StatsFileError(f"{path}: a histogram without a range holds finite counts")


def _namespace(namespace):
    if namespace is None:
        import array_api_compat.numpy as xp

        return xp
    return array_api_compat.array_namespace(namespace.asarray(0.0))


def load(
    path: str | os.PathLike,
    *,
    namespace=None,
    device=None,
    into: EncodingAnalyzer | None = None,
    max_bytes: int = MAX_STATE_BYTES,
) -> EncodingAnalyzer:
    """Read an analyzer written by :func:`save`.

    Parameters
    ----------
    path
        The file.
    namespace
        Array namespace (or module: ``numpy``, ``torch``, ``cupy``, ...) to hold the statistics;
        NumPy by default.
    device
        Device for the statistics (e.g. ``"cuda"`` for torch).
    into
        Load into this analyzer instead of a new one; it must be of the file's class with the
        same statistics parameters.
    max_bytes
        The most bytes one statistics array may declare (:data:`MAX_STATE_BYTES`, 16 GiB);
        sizes are checked before anything is inflated, and only the members the header names
        are read.

    Raises
    ------
    StatsFileError
        For a truncated, corrupt, wrong-version or wrong-class file, one that is not a regular
        file, declares arrays over ``max_bytes`` or holds invalid values (negative or NaN
        counts, ranges with min > max), or one whose statistics do not fit ``into``; ``into``
        is then left as it was.
    """
    path = Path(path)
    header, host = _read(path, max_bytes)
    cls = ANALYZERS[header["class"]]
    if into is not None and type(into) is not cls:
        raise StatsFileError(
            f"{path}: holds a {header['class']}, cannot load into a {type(into).__name__}"
        )
    try:
        analyzer = into if into is not None else cls(**header["params"])
        xp = _namespace(namespace)
        dtypes = header.get("dtypes", {})
        arrays = {k: from_numpy(xp, v, device, dtypes.get(k)) for k, v in host.items()}
        analyzer.load_state_dict(
            {
                "format_version": header["format_version"],
                "class": header["class"],
                "stats_params": header["stats_params"],
                "state": arrays or None,
            }
        )
    except (TypeError, ValueError, KeyError) as err:
        raise StatsFileError(f"{path}: {err}") from err
    return analyzer
