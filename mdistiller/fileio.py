"""Atomic file writes (nothing is ever left half-written at the destination path) and a blocking file lock."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "new_file_mode", "apply_umask", "file_lock", "names_file"]


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


def fsync_dir(directory: str | os.PathLike) -> None:
    """Persist a rename in ``directory`` on POSIX file systems (best effort: not every file system supports it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` on a temporary file in the destination folder, fsync it, ``os.replace`` it onto
    ``path`` and fsync the folder, so the new file survives a power loss once this returns. If the writer raises (or
    the process dies), the temporary file is removed (a hard kill may leave a hidden ``.<name>.*.tmp``) and any
    previous ``path`` is untouched: ``path`` is never half-written. The one atomic writer of the package
    (checkpoints, ``mdistiller.engine.checkpoint.atomic_save``, use it too)."""
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
    fsync_dir(path.parent)
    return path


def names_file(path: str | os.PathLike, fd: int) -> bool:
    """True when ``path`` still names the file open as ``fd`` (not removed or replaced since it was opened)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, on_wait: Callable[[], object] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created when missing) for the block, waiting while another process
    holds it (``on_wait()`` is called once before waiting). The kernel releases the lock on any exit of the holder,
    ``kill -9`` included. The file is removed on the way out, while still held, so nothing is left behind: a process
    that was waiting on the removed file sees that the path no longer names it (:func:`names_file`) and locks the
    file now there instead. On a file system without locks the block runs unlocked, with a warning."""
    import fcntl

    path = Path(path)
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                    on_wait = None
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            warnings.warn(f"the file system of {path.parent} has no file locks; {path.name} does not keep "
                          "processes apart there.", stacklevel=3)
            yield
            return
        if names_file(path, fd):
            break
        os.close(fd)  # locked a file its holder removed on release: lock the one now at the path
    try:
        yield
    finally:
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
