"""Run a command with its stderr on a pseudo-terminal of a real size (progress bars draw there)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios


def on_terminal(cmd: list[str], columns: int = 120) -> tuple[int, bytes, bytes]:
    """Return ``(exit status, stdout, what the terminal received)``; tqdm draws every update."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**os.environ, "TQDM_MININTERVAL": "0"}  # every update drawn, however fast
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    stdout, _ = proc.communicate(timeout=300)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.returncode, stdout, b"".join(chunks)
