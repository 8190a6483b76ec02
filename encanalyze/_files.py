"""Safe file output and terminal text: atomic writes that respect what sits at the path.

:func:`write_atomic` writes through a symlink to its target, refuses targets that are not
regular files (a FIFO, a device, a folder), keeps an existing file's permission bits (a new
file gets the umask's), and renames a temporary file into place so an interrupted write never
leaves a partial file. :func:`check_output` runs the same checks before any work is done.
:func:`printable` escapes control characters for human-readable output.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

__all__ = ["OutputPathError", "check_output", "file_mode", "printable", "write_atomic"]


class OutputPathError(ValueError):
    """An output path that cannot or must not be written."""


def _target(path: str | os.PathLike) -> Path:
    """Return where a write lands: a symlink's final target, else ``path``."""
    return Path(os.path.realpath(path))


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Check that ``path`` can be written and is none of ``inputs``; return where it lands."""
    target = _target(path)
    if not target.parent.is_dir():
        raise OutputPathError(f"{path}: folder {target.parent} does not exist")
    if target.exists():
        mode = target.stat().st_mode
        if stat.S_ISDIR(mode):
            raise OutputPathError(f"{path}: is a folder")
        if not stat.S_ISREG(mode):
            raise OutputPathError(f"{path}: is not a regular file (a device, FIFO or socket)")
        for source in inputs:
            if Path(source).exists() and os.path.samefile(source, target):
                raise OutputPathError(f"{path}: is the input file {source}; not overwriting it")
    if not os.access(target.parent, os.W_OK):
        raise OutputPathError(f"{path}: folder {target.parent} is not writable")
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode(target: Path) -> int:
    """Permission bits for a file written at ``target``: the existing file's, else the umask's."""
    return target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_umask()


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file atomically with ``write(binary_file)``; return the path written.

    A symlink is written through to its target; a target that exists must be a regular file,
    whose permission bits the new file keeps (a new file gets ``0o666`` less the umask).
    """
    target = check_output(path)
    mode = file_mode(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]|[\ud800-\udfff]")


def printable(text: str) -> str:
    r"""Escape control characters and lone surrogates (``\x1b``, ``\n``, ``\udc80``)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
