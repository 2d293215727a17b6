"""Timing machinery of the benchmark: peak-memory meter, compile time limit, timed items and alternating rounds.

Every timed item is built once, warmed up, then timed in alternation (round r runs A B C …, round r+1 runs
… C B A, so slow drift and position effects cancel in the ratios). torch is imported inside the functions: the
caller may still set ``OMP_WAIT_POLICY`` before torch loads.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BenchError", "CompileTimeout", "Item", "MemoryMeter", "first_call", "measure", "rotate", "sync",
           "time_limit"]


class BenchError(Exception):
    """A user-caused problem; the message is one sentence with the fix."""


class CompileTimeout(Exception):
    """``torch.compile`` of an item did not finish within ``--compile-timeout`` seconds."""



def sync(device) -> None:
    """Wait for the device's queued work (``torch.cuda.synchronize`` on CUDA; nothing on CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(key: str, pid: int | str = "self") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss(pid: int) -> bool:
    """Reset the peak RSS (VmHWM) of process ``pid`` (one of ours, e.g. a loader worker); ``False`` where Linux's
    ``/proc/<pid>/clear_refs`` is missing or refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib(pid: int) -> float | None:
    """The peak RSS (VmHWM) of process ``pid`` in MiB, ``None`` where ``/proc`` does not tell."""
    kb = _status_kb("VmHWM", pid)
    return None if kb is None else kb / 1024


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (``/proc/<pid>/stat``), ``None`` where it does not tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class MemoryMeter:
    """Peak memory of a stretch of work: CUDA max-allocated bytes, or the CPU process's peak RSS (VmHWM after
    resetting it through ``/proc/self/clear_refs``; without that, ``ru_maxrss`` over the process lifetime)."""

    def __init__(self, device) -> None:
        self.device = device
        self.can_reset = False
        if device.type != "cuda":
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.can_reset = _status_kb("VmHWM") is not None
            except OSError:
                self.can_reset = False
        self.source = ("cuda max_memory_allocated" if device.type == "cuda"
                       else "peak RSS (VmHWM, reset per step)" if self.can_reset else "ru_maxrss (process lifetime)")

    def start(self) -> float:
        """Reset the peak; return the current level in MiB."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device) / 2**20
        if self.can_reset:
            Path("/proc/self/clear_refs").write_text("5")
            return (_status_kb("VmRSS") or 0) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def peak(self) -> float:
        """Peak since :meth:`start` in MiB."""
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.can_reset:
            return (_status_kb("VmHWM") or 0) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`CompileTimeout` in the main thread after ``seconds`` (no-op without SIGALRM or for ≤ 0)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _handler(signum, frame):  # noqa: ARG001
        raise CompileTimeout(f"the first call did not finish within {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Item:
    """One timed thing: ``run()`` does a full unit of work (one step, one forward, …) on the fixed batch."""

    name: str
    run: Callable[[], None]
    flops: dict[str, int] | None = None
    eager_run: Callable[[], None] | None = None  # the uncompiled fallback when compiling times out
    info: dict[str, Any] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)
    deltas: list[float] = field(default_factory=list)
    first_call_s: float | None = None
    error: str | None = None


def measure(item: Item, device, meter: MemoryMeter) -> None:
    """Run ``item`` once between device syncs and append its wall time, CPU time, peak memory and memory growth."""
    base = meter.start()
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    item.run()
    sync(device)
    t1, c1 = time.perf_counter(), time.process_time()
    peak = meter.peak()
    item.times.append(t1 - t0)
    item.cpu_times.append(c1 - c0)
    item.peaks.append(peak)
    item.deltas.append(max(0.0, peak - base))


def first_call(item: Item, device, compiling: bool, limit: float) -> None:
    """The untimed first call of ``item`` (compilation, warm-up), recorded in ``first_call_s``; when compiling
    exceeds ``limit`` seconds the item falls back to its eager run (re-raises without one), with a note in ``error``.
    """
    import torch

    t0 = time.perf_counter()
    try:
        with time_limit(limit if compiling else 0):
            item.run()
            sync(device)
    except CompileTimeout as e:
        item.error = f"compile timed out ({e}); timed eager instead"
        torch._dynamo.reset()
        if item.eager_run is None:
            raise
        item.run = item.eager_run
        item.run()
        sync(device)
    item.first_call_s = time.perf_counter() - t0


def rotate(items: list[Item], rounds: int, device, meter: MemoryMeter) -> None:
    """Time every item once per round, alternating the order (forward, then reversed) between rounds."""
    for r in range(rounds):
        order = items if r % 2 == 0 else items[::-1]
        for item in order:
            measure(item, device, meter)
