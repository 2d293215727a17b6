"""One run per run directory: an OS-level lock on ``RUN_DIR/.lock`` held for the run's life.

The lock is an exclusive ``flock`` on the file, so the kernel releases it on *any* exit of the holder (normal
return, exception, SIGKILL, OOM kill). The file also records the holder's PID, host and start time, for the
message a second run gets; a lock file whose ``flock`` is free belongs to a dead run (stale) and is simply taken
over (:attr:`RunLock.stale` then describes the previous holder). Network file systems without ``flock`` support
fall back to no lock, with a warning.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from mdistiller.fileio import names_file

__all__ = ["RunLock", "RunLockedError"]


class RunLockedError(RuntimeError):
    """Another live process holds the run directory's lock."""

    exit_code = 2


class RunLock:
    """``with RunLock(run_dir):`` — see the module doc. Raises :class:`RunLockedError` with one sentence when another
    live process holds the lock."""

    NAME = ".lock"

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.NAME
        self._fd: int | None = None
        self.stale: dict[str, Any] | None = None

    def _holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        """Take the exclusive ``flock`` on ``RUN_DIR/.lock`` and write this process's PID, host and start time into
        it; a previous holder that is gone is recorded in :attr:`stale`. Raises :class:`RunLockedError` when a live
        run holds it; returns ``self``.
        """
        import fcntl

        for _ in range(16):  # a run that never started removes its lock file (release(remove_file=True)): retry
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the directory went away between mkdir and open
                continue
            if not self._lock(fcntl, fd):
                os.close(fd)
                return self  # a file system without locks (warned)
            if names_file(self.path, fd):
                break
            os.close(fd)  # locked a file that was removed meanwhile: lock the one now at the path
        else:
            raise RunLockedError(f"run directory {self.run_dir} keeps changing under this run; is another process "
                                 "creating and removing it? Pass another --run-dir.")
        previous = self._holder()
        if previous.get("pid") and previous.get("pid") != os.getpid():
            self.stale = previous  # its flock is free, so that process is gone (or stopped without cleanup)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _lock(self, fcntl, fd: int) -> bool:
        """``flock`` ``fd``: True when held, False when the file system has no locks (warned). Raises
        :class:`RunLockedError` (``fd`` closed) when a live run holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                warnings.warn(f"the file system of {self.run_dir} does not support locks; nothing stops a second "
                              "run from writing into it.", stacklevel=3)
                return False
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                h = self._holder()
                who = f"pid {h.get('pid', '?')} on {h.get('host', '?')}, started {h.get('started', '?')}"
                raise RunLockedError(
                    f"run directory {self.run_dir} is in use by another run ({who}); wait for it to finish, or pass "
                    "another --run-dir."
                ) from None
            raise
        return True

    def release(self, remove_file: bool = False) -> None:
        """Release the lock and clear the holder record (the kernel releases it anyway when the process dies).
        ``remove_file``: delete the lock file first, while still holding it (for a run that never started; a run
        waiting to lock that file then locks a new one, see :meth:`acquire`)."""
        if self._fd is None:
            return
        import fcntl

        try:
            if remove_file:
                self.path.unlink(missing_ok=True)
            else:
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
