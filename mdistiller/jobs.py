"""Run independent commands of the project side by side on a small pool of processes (the demo on 2 CPU cores).

On a small CPU two 1-thread processes get more done than one 2-thread process, because much of a toy-sized step
(small matrices, Python, the optimizer) does not use two threads well. Measured on a 2-core AMD EPYC: two demo
training runs side by side, one thread each, took 19.5 s where each took 12.8 s alone with two threads (1.3× the
throughput); a depth probe took 30.7 s with one thread against 23.8 s with two (two side by side: up to 1.55×).
A job's result depends only on its arguments: the pool changes the thread count, which changes floating-point
summation order, not what is computed.

A :class:`Job` names a function as ``"package.module:function"`` (a job target declared in
:mod:`mdistiller.hooks`), or holds a module-level function itself, and its arguments; :func:`run_jobs` runs each job
once the job it waits for (``after``) has finished, with the job's stdout and stderr in its own log file, and
reports every start and finish in one line.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from mdistiller.hooks import require_declared, resolve

__all__ = ["INTERRUPTED", "Job", "run_job", "run_jobs", "split_threads"]

#: the exit status of a command stopped by SIGINT/SIGTERM after saving its checkpoint (``tools/train.py``)
INTERRUPTED = 130


@dataclass(frozen=True)
class Job:
    """One command: ``target(*args)``, returning an exit status, output to ``log``, started only after the job named
    ``after`` (if it is part of the same batch) succeeded; its report line is the last output line containing
    ``summary`` (default: the last line).

    ``target`` is a job target declared in :mod:`mdistiller.hooks` (``"package.module:function"``; anything else
    raises ``ValueError`` here, in one sentence) or a module-level function (what a spawned worker can import)."""

    name: str
    target: str | Callable[..., int]
    args: tuple[Any, ...]
    log: str
    after: str | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        """Refuse a target string that is not a declared job target."""
        if isinstance(self.target, str):
            require_declared(self.target, "job")
        elif not callable(self.target):
            raise ValueError(f"job '{self.name}' has target {self.target!r}; give a declared "
                             "'package.module:function' string or a function.")


def split_threads(jobs: int, threads: int) -> tuple[int, int]:
    """``(processes, torch threads each)`` for ``jobs`` side by side within ``threads`` in all: never more processes
    than threads, at least one thread each."""
    workers = max(1, min(jobs, threads))
    return workers, max(1, threads // workers)


def run_job(job: Job, threads: int | None = None) -> tuple[int, str, float]:
    """Run ``job`` in this process with ``threads`` torch threads: ``(exit status, last output line, seconds)``."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    fn = resolve(job.target) if isinstance(job.target, str) else job.target
    log = Path(job.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    start = log.stat().st_size if log.exists() else 0  # a rerun appends: the log keeps every session of a resumed run
    with open(log, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            code = fn(*job.args)
        except SystemExit as e:  # a command line that exits instead of returning
            code = e.code if isinstance(e.code, int) else 1
        except Exception:  # noqa: BLE001 - the traceback goes to the job's log; the caller gets the status
            import traceback

            traceback.print_exc()
            code = 1
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read().decode("utf-8", errors="replace").replace("\r", "\n")
    lines = [s for s in text.splitlines() if s.strip() and job.summary in s]
    return int(code or 0), (lines[-1].strip() if lines else ""), time.perf_counter() - t0


def run_jobs(jobs: Sequence[Job], workers: int = 2, threads: int | None = None,
             report: Callable[[str], None] = print) -> dict[str, float]:
    """Run ``jobs`` on ``workers`` spawned processes (``workers == 1``: in this process, one after the other), each
    with ``threads`` torch threads, in list order as their ``after`` jobs finish. Returns each job's seconds.

    A job that fails stops the batch with one sentence naming its log (running jobs finish first).
    """
    names = {j.name for j in jobs}
    if len(names) != len(jobs):
        raise ValueError("two jobs share a name; give every job its own name.")
    pending = list(jobs)
    done: dict[str, float] = {}
    total, started = len(jobs), 0

    def ready() -> list[Job]:
        return [j for j in pending if j.after is None or j.after not in names or j.after in done]

    def finish(job: Job, result: tuple[int, str, float]) -> None:
        code, last, secs = result
        if code == INTERRUPTED:
            raise SystemExit(f"{job.name} was stopped by a signal (its progress is saved): rerun the same command to "
                             f"resume, finished jobs are skipped; its output is in {job.log}.")
        if code != 0:
            raise SystemExit(f"{job.name} failed with exit status {code}: its output is in {job.log}.")
        done[job.name] = secs
        report(f"  done {job.name} ({secs:.0f} s): {last}")

    def start(job: Job) -> None:
        nonlocal started
        started += 1
        pending.remove(job)
        report(f"[{started}/{total}] {job.name}")

    def blocked() -> ValueError:
        return ValueError(f"jobs {', '.join(j.name for j in pending)} wait for each other; break the cycle.")

    if workers <= 1:
        while pending:
            now = ready()
            if not now:
                raise blocked()
            job = now[0]
            start(job)
            finish(job, run_job(job, threads))
        return done
    running: dict[Future, Job] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        while pending or running:
            for job in ready()[: workers - len(running)]:
                start(job)
                running[pool.submit(run_job, job, threads)] = job
            if not running:
                raise blocked()
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                job = running.pop(fut)
                try:
                    result = fut.result()
                except Exception as err:  # the worker died (killed, out of memory): no status came back
                    raise SystemExit(f"{job.name} ended without a result ({type(err).__name__}: {err}); its output "
                                     f"is in {job.log}, and rerunning the same command resumes.") from None
                finish(job, result)
    return done
