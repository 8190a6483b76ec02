"""Saving and loading analyzers: one portable ``.npz`` file, readable by any backend."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import array_api_compat
import numpy as np

from ._analyzer import STATE_FORMAT_VERSION, EncodingAnalyzer
from ._backends import from_numpy, to_numpy
from ._files import write_atomic
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


def _read(path: Path) -> tuple[dict, dict]:
    try:
        with np.load(path, allow_pickle=False) as f:
            header = json.loads(str(f["header"][()]))
            arrays = {k.removeprefix("state."): f[k] for k in f.files if k.startswith("state.")}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise StatsFileError(f"{path}: not a readable encanalyze statistics file ({err})") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StatsFileError(f"{path}: not an encanalyze statistics file")
    if header.get("format_version") != STATE_FORMAT_VERSION:
        raise StatsFileError(
            f"{path}: format version {header.get('format_version')!r} is not supported "
            f"(this encanalyze reads version {STATE_FORMAT_VERSION})"
        )
    if header.get("class") not in ANALYZERS:
        raise StatsFileError(f"{path}: unknown analyzer class {header.get('class')!r}")
    return header, arrays


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

    Raises
    ------
    StatsFileError
        For a truncated, corrupt, wrong-version or wrong-class file, or one whose statistics do
        not fit ``into``; ``into`` is then left as it was.
    """
    path = Path(path)
    header, host = _read(path)
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
