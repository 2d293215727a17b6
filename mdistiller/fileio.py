"""Atomic file writes: nothing is ever left half-written at the destination path."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "new_file_mode", "apply_umask"]


def new_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: ``0o666`` less the process umask (0644 under the
    usual umask 022), so a teammate on a shared cluster can read the run's files unless the user's umask says no."""
    try:  # Linux exposes the umask without changing it (os.umask is a process-wide set-and-restore)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def apply_umask(path: str | os.PathLike) -> None:
    """``chmod`` a file made by :func:`tempfile.mkstemp` (always 0600) to :func:`new_file_mode`."""
    os.chmod(path, new_file_mode())


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` on a temporary file in the destination folder, fsync it, then ``os.replace`` it
    onto ``path``. If the writer raises, the temporary file is removed and any previous ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        apply_umask(tmp_path)  # mkstemp makes 0600; a run's files get the user's umask like any other file
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path
