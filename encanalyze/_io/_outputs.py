"""The output transaction: every output of a job declared, staged and published together.

A job declares the inputs it reads (files and folders) and each output it will write
(:meth:`Outputs.file`, :meth:`Outputs.folder`); an output that names an input, lies inside an
input folder, names another output (or the ``.data`` sidecar of a model output) or cannot be
written is refused with :class:`OutputPathError` before any work is done. Each output is
built at a staged path in one private folder beside its target (same file system), and
:meth:`Outputs.commit` moves them all into place at the end, with SIGINT, SIGTERM and SIGHUP
held back while it does. Leaving the ``with`` block without a commit (an error, Ctrl-C, SIGTERM,
SIGHUP) removes the staged files: the old outputs stay as they were and nothing is left behind.

While a transaction is open, SIGTERM and SIGHUP raise :class:`Terminated` where their handlers
were the default ones (a program's own handlers are kept); after the clean-up, the signal is
delivered again with its default action, so a library caller's process ends as it would have.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "OutputPathError",
    "Outputs",
    "Terminated",
    "file_mode",
    "stopping_signals",
    "write_atomic",
]

STOPPING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
"""Signals that stop a job with the same clean-up as Ctrl-C (SIGINT)."""

HELD = (signal.SIGINT, *STOPPING)
"""Signals held back while staged outputs are moved into place."""

SIDECAR = ".data"
"""The suffix of an ONNX model's external data file (``model.onnx.data``)."""


class OutputPathError(ValueError):
    """An output path that cannot or must not be written."""


class Terminated(BaseException):  # noqa: N818 - a signal, like KeyboardInterrupt
    """SIGTERM or SIGHUP arrived: the job stops, cleans up and leaves the old outputs."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def stopping_signals() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise :class:`Terminated` where no handler was set.

    Only the main thread can install handlers, and only over the default action; they are
    restored on exit.
    """
    installed = {}
    if threading.current_thread() is threading.main_thread():
        for signum in STOPPING:
            if signal.getsignal(signum) is signal.SIG_DFL:
                installed[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    finally:
        for signum, previous in installed.items():
            signal.signal(signum, previous)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode(target: Path) -> int:
    """Permission bits for a file written at ``target``: the existing file's, else the umask's."""
    return target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_umask()


def _target(path: str | os.PathLike) -> Path:
    """Return where a write lands: a symlink's final target, else ``path`` (absolute)."""
    return Path(os.path.realpath(path))


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


class Outputs:
    """One job's outputs, staged beside their targets and published together.

    Parameters
    ----------
    inputs
        Files and folders the job reads: no output may name one or lie inside an input folder.
    """

    def __init__(self, inputs: Iterable[str | os.PathLike] = ()) -> None:
        self._inputs: list[tuple[str, Path, str]] = []  # as given, where it is, what it is
        self._files: list[tuple[str, Path, Path, bool]] = []  # label, target, staged, sidecar
        self._folders: list[tuple[str, Path, Path]] = []
        self._stages: dict[Path, Path] = {}
        self._open = False
        self._signals = contextlib.ExitStack()
        for path in inputs:
            self.add_input(path)

    # -- declaring -------------------------------------------------------------------------
    def add_input(self, path: str | os.PathLike, label: str = "input") -> None:
        """Declare a file or folder the job reads (``label``: what it is, e.g. ``--data``)."""
        target = _target(path)
        for other, out, _, sidecar in self._files:
            if self._hits(out, target, sidecar):
                raise OutputPathError(
                    f"{other} {out}: is the input file {path}; not overwriting it"
                )
        self._inputs.append((str(path), target, label))

    def _hits(self, out: Path, target: Path, sidecar: bool) -> bool:
        names = [out, out.with_name(out.name + SIDECAR)] if sidecar else [out]
        if target.is_dir():
            return any(n.is_relative_to(target) for n in names)
        return any(_same(n, target) for n in names)

    def _check(self, path: str | os.PathLike, label: str, sidecar: bool) -> Path:
        target = _target(path)
        if not target.parent.is_dir():
            raise OutputPathError(f"{label} {path}: folder {target.parent} does not exist")
        if target.exists():
            mode = target.stat().st_mode
            if stat.S_ISDIR(mode):
                raise OutputPathError(f"{label} {path}: is a folder")
            if not stat.S_ISREG(mode):
                raise OutputPathError(
                    f"{label} {path}: is not a regular file (a device, FIFO or socket)"
                )
        if not os.access(target.parent, os.W_OK):
            raise OutputPathError(f"{label} {path}: folder {target.parent} is not writable")
        for source, where, what in sorted(self._inputs, key=lambda i: i[1].is_dir()):
            if self._hits(target, where, sidecar):  # files first: the closer match
                if where.is_dir():
                    raise OutputPathError(
                        f"{label} {path}: lies inside the {what} folder {source}; not writing there"
                    )
                whose = "" if _same(target, where) else "'s external data"
                raise OutputPathError(
                    f"{label} {path}{whose}: is the input file {source}; not overwriting it"
                )
        for other, out, _, other_sidecar in self._files:
            if _same(out, target):
                raise OutputPathError(f"{other} and {label} name the same file {path}")
            if other_sidecar and target == out.with_name(out.name + SIDECAR):
                raise OutputPathError(f"{label} {path}: is where {other}'s external data goes")
            if sidecar and out == target.with_name(target.name + SIDECAR):
                raise OutputPathError(f"{other} {out}: is where {label}'s external data goes")
        return target

    def file(
        self, path: str | os.PathLike, label: str = "output", *, sidecar: bool = False
    ) -> Path:
        """Declare one output file; return the staged path to build it at.

        ``sidecar``: the output is an ONNX model that may come with ``<name>.data`` (external
        data), which is published with it and may not name an input or another output either.
        """
        target = self._check(path, label, sidecar)
        stage = self._stage(target.parent) / str(len(self._files))
        stage.mkdir()
        staged = stage / target.name
        self._files.append((label, target, staged, sidecar))
        return staged

    def folder(self, path: str | os.PathLike, label: str = "output folder") -> Path:
        """Declare a folder of output files (created if missing); return the staged folder.

        At commit, every file built in the staged folder is moved into ``path``.
        """
        target = _target(path)
        if target.exists() and not target.is_dir():
            raise OutputPathError(f"{label} {path}: exists and is not a folder")
        for source, where, what in self._inputs:
            if target == where or (where.is_dir() and target.is_relative_to(where)):
                raise OutputPathError(
                    f"{label} {path}: lies inside the {what} folder {source}; not writing there"
                )
        parent = target
        while not parent.exists():
            parent = parent.parent
        staged = self._stage(parent) / f"folder{len(self._folders)}"
        staged.mkdir()
        self._folders.append((label, target, staged))
        return staged

    def _stage(self, parent: Path) -> Path:
        if not self._open:
            raise RuntimeError("Outputs: declare outputs inside its with block")
        if parent not in self._stages:
            self._stages[parent] = Path(tempfile.mkdtemp(dir=parent, prefix=".encanalyze."))
        return self._stages[parent]

    # -- publishing ------------------------------------------------------------------------
    def commit(self) -> list[Path]:
        """Move every staged output into place (SIGINT, SIGTERM, SIGHUP held meanwhile).

        Outputs that were declared but not built are left as they are. Returns the targets
        written.
        """
        written = []
        with _held():
            for _, target, staged, sidecar in self._files:
                if not staged.exists():
                    continue
                extra = staged.with_name(staged.name + SIDECAR)
                if sidecar and extra.exists():  # the sidecar first: the model never names
                    final = target.with_name(target.name + SIDECAR)  # data not there yet
                    os.chmod(extra, file_mode(final))
                    os.replace(extra, final)
                os.chmod(staged, file_mode(target))
                os.replace(staged, target)
                written.append(target)
            for _, target, staged in self._folders:
                built = sorted(p for p in staged.iterdir() if p.is_file())
                if built:
                    target.mkdir(parents=True, exist_ok=True)
                for p in built:
                    os.chmod(p, file_mode(target / p.name))
                    os.replace(p, target / p.name)
                    written.append(target / p.name)
            self._cleanup()
        return written

    def _cleanup(self) -> None:
        for folder in self._stages.values():
            shutil.rmtree(folder, ignore_errors=True)
        self._stages.clear()

    def __enter__(self) -> Outputs:
        self._open = True
        self._signals.enter_context(stopping_signals())
        return self

    def __exit__(self, kind, err, tb) -> None:
        self._cleanup()
        self._open = False
        self._signals.close()  # the previous handlers back
        if isinstance(err, Terminated) and signal.getsignal(err.signum) is signal.SIG_DFL:
            signal.raise_signal(err.signum)  # a library caller ends as the signal would end it


@contextlib.contextmanager
def _held() -> Iterator[None]:
    """Hold back SIGINT, SIGTERM and SIGHUP while inside (delivered on exit)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def write_atomic(
    path: str | os.PathLike,
    write: Callable[[IO[bytes]], None],
    inputs: Iterable[str | os.PathLike] = (),
    label: str = "output",
) -> Path:
    """Write one file with ``write(binary_file)`` through a one-output transaction.

    A symlink is written through to its target; a target that exists must be a regular file,
    whose permission bits the new file keeps (a new file gets ``0o666`` less the umask). An
    interrupted or failed write leaves the old file and no temporary file. Returns ``path``.
    """
    with Outputs(inputs) as out:
        staged = out.file(path, label)
        with open(staged, "wb") as f:
            write(f)
        out.commit()
    return Path(path)
