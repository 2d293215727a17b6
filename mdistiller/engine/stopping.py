"""Stopping on SIGINT/SIGTERM: the request, its agreement across ranks, and the second signal that ends at once.

A signal may reach one rank only (a scheduler or the OOM killer signalling one task, ``kill`` of one process). The
rank that receives it only records it (:class:`SignalStop`); every training step then agrees on it in the one
collective the step already makes for its non-finite check (:func:`agree_step_flags`: a MAX all-reduce of two
numbers, the non-finite flag and the signal number), so every rank sees the same answer after the same step,
writes the same checkpoint and returns. Stopping on a rank's own flag would send that rank into the checkpoint's
collectives while the others run the next step's, and both would wait for the process-group timeout.

A *second* SIGINT/SIGTERM while stopping ends the process at once with status ``128 + signal`` (130 for SIGINT, 143
for SIGTERM), even when the main thread is blocked inside a collective, where no Python signal handler can run: a
watcher thread reads every delivery from :func:`signal.set_wakeup_fd`, which the interpreter's C-level handler
writes at once. Checkpoints are written atomically, so what is on disk stays valid. A repeat within
:data:`REPEAT_GRACE_S` of the first counts as the same request, because launchers deliver one request twice:
Ctrl-C reaches torchrun and its workers, and torchrun forwards it to the workers again (``srun``/``scancel`` do the
same with SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["REPEAT_GRACE_S", "STOP_SIGNALS", "SignalStop", "agree_step_flags"]

#: the signals that ask a run to stop (a checkpoint, then exit 130)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: seconds within which a repeated signal is the same request delivered twice (by the launcher), not a second one
REPEAT_GRACE_S = 2.0

_WAKEUP_FDS: set[int] = set()  # pipe ends of installed watchers, closed in forked children (loader workers)


def _forget_in_child() -> None:
    """A forked child (a data-loader worker) must not report its signals to its parent's watcher."""
    if not _WAKEUP_FDS:
        return
    with contextlib.suppress(ValueError, OSError):
        old = signal.set_wakeup_fd(-1)
        if old not in _WAKEUP_FDS:
            signal.set_wakeup_fd(old)
    for fd in list(_WAKEUP_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _WAKEUP_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


class SignalStop:
    """SIGINT/SIGTERM handling for one training loop: the first signal is recorded (:attr:`signum`) and the loop
    stops at the next agreed step; a second one later than :data:`REPEAT_GRACE_S` ends the process at once.

    Signals reach only the main thread, so outside it :meth:`install` does nothing (the loop then runs unguarded).
    """

    def __init__(self, grace_s: float = REPEAT_GRACE_S, say: Callable[[str], None] | None = None) -> None:
        self.grace_s = grace_s
        self.signum: int | None = None
        self._say = say
        self._previous: dict[int, Any] = {}
        self._wakeup_previous: int | None = None
        self._pipe: tuple[int, int] | None = None

    def install(self) -> None:
        """Replace the SIGINT/SIGTERM handlers (kept for :meth:`restore`) and start the watcher thread."""
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._record)
        read, write = os.pipe()
        os.set_blocking(write, False)  # required by set_wakeup_fd
        self._wakeup_previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._pipe = (read, write)
        _WAKEUP_FDS.update(self._pipe)
        threading.Thread(target=self._watch, args=(read,), name="mdistiller-signal-watch", daemon=True).start()

    def restore(self) -> None:
        """Put back the handlers and the wakeup fd that :meth:`install` replaced, and stop the watcher."""
        if self._pipe is not None:
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(self._wakeup_previous if self._wakeup_previous is not None else -1)
            read, write = self._pipe
            with contextlib.suppress(OSError):
                os.write(write, b"\0")  # tells the watcher to end; it closes the read end
            os.close(write)
            _WAKEUP_FDS.difference_update(self._pipe)
            self._pipe = None
        for sig, old in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._previous = {}

    def _record(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.signum is None:
            self.signum = signum

    def _watch(self, read: int) -> None:
        first: float | None = None
        try:
            while True:
                data = os.read(read, 64)
                if not data or 0 in data:
                    return
                now = time.monotonic()
                for signum in data:
                    if signum not in STOP_SIGNALS:
                        continue
                    if first is None:
                        first = now
                    elif now - first >= self.grace_s:
                        self._end_now(signum)
        finally:
            with contextlib.suppress(OSError):
                os.close(read)

    def _end_now(self, signum: int) -> None:
        name = signal.Signals(signum).name
        text = (f"[mdistiller] second {name} while stopping: ending now; the checkpoints already written are kept, "
                "rerun the same command to resume from the last one.")
        if self._say is not None:
            with contextlib.suppress(Exception):
                self._say(text)
        with contextlib.suppress(OSError):
            os.write(2, (text + "\n").encode())
        os._exit(128 + signum)


def agree_step_flags(nonfinite: bool, stop_signal: int | None, device: torch.device,
                     distributed: bool) -> tuple[bool, int]:
    """``(any rank saw a non-finite loss, the stop signal any rank received or 0)``, the same on every rank.

    One MAX all-reduce of two numbers over the default process group (the step's only extra collective); without a
    process group it returns this rank's own values. Every rank must call it once per step.
    """
    flags = torch.tensor([float(nonfinite), float(stop_signal or 0)], device=device)
    if distributed:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    bad, stop = flags.tolist()
    return bad > 0, int(stop)
