"""Taking a run directory for a training command: the lock, ``--resume`` and ``--overwrite``, with nothing lost.

:func:`open_run_dir` is the one place ``tools/train.py`` and :func:`mdistiller.train` decide where a run starts,
called by both through :func:`claim_run_dir` (the main rank claims, every rank learns the checkpoint or the refusal):

* ``resume="auto"``: ``checkpoints/last.pth`` when it is readable; when it is missing or unreadable but
  ``prev.pth`` is readable, ``prev.pth`` (one note says so; an unreadable ``last.pth`` is kept as
  ``last.pth.unreadable`` so the next save cannot make it the fallback); with neither, a fresh start only when the
  directory holds no run: a history (metrics, config, checkpoints, student, probe or analysis results) is never
  restarted from step 0 without ``--resume none --overwrite``.
* ``resume="none"``: a fresh start; into a directory holding a run only with ``overwrite``, which deletes the run's
  own files (:data:`RUN_FILES`) and moves its derived results (:data:`DERIVED_FILES`: probe and analysis outputs)
  into ``RUN_DIR/.overwritten-<UTC time>/``, so they are never shown for the new student.
* ``resume=PATH``: that checkpoint; another run's checkpoint is not resumed into a directory that holds a run.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mdistiller.config import CN

from .checkpoint import CheckpointError, load_checkpoint, previous_path
from .identity import run_name
from .runlock import RunLock

__all__ = ["DERIVED_FILES", "RUN_FILES", "RunDirError", "RunStart", "claim_run_dir", "named_config", "open_run_dir",
           "run_history"]

#: what a training run writes into its directory; ``--overwrite`` deletes exactly these
RUN_FILES = ("config.yaml", "run_info.json", "metrics.jsonl", "checkpoints", "student.safetensors",
             "student.safetensors.json", "tb", "wandb", "wandb_run.json", "train.log")
#: results derived from a run's student (``tools/lineval``, ``tools/analyze.py``, the study's refinement table);
#: ``--overwrite`` moves them aside instead of leaving them to be read as the new student's
DERIVED_FILES = ("lineval", "analysis", "refinement.json", "exports")
UNREADABLE_SUFFIX = ".unreadable"


class RunDirError(FileExistsError):
    """The run directory cannot be used as asked (one sentence; a usage error: exit code 2)."""

    exit_code = 2


def run_history(run_dir: Path) -> list[str]:
    """The entries of :data:`RUN_FILES` and :data:`DERIVED_FILES` in ``run_dir`` (``checkpoints`` only when it holds
    a file): what a fresh start would replace."""
    found = []
    for name in RUN_FILES + DERIVED_FILES:
        path = run_dir / name
        if name == "checkpoints" and path.is_dir():
            if any(p.is_file() and not p.name.startswith(".") for p in path.iterdir()):
                found.append(name)
        elif path.exists():
            found.append(name)
    return found


def _read(path: Path) -> tuple[int | None, str]:
    """``(step, "")`` of a readable checkpoint, else ``(None, why)``."""
    if not path.is_file():
        return None, "missing"
    try:
        return int(load_checkpoint(path, map_location="cpu").get("step", 0)), ""
    except CheckpointError as e:
        text = str(e)
        return None, "fails its checksum" if "checksum" in text else "corrupt or truncated"


def _choose_auto(run_dir: Path, history: list[str]) -> tuple[Path | None, list[str]]:
    last = run_dir / "checkpoints" / "last.pth"
    prev = previous_path(last)
    step, why_last = _read(last)
    if step is not None:
        return last, []
    prev_step, why_prev = _read(prev)
    if prev_step is not None:
        note = f"{last} is {why_last}; resuming from the checkpoint before it, {prev} (step {prev_step})"
        if last.exists():
            kept = last.with_name(last.name + UNREADABLE_SUFFIX)
            os.replace(last, kept)
            note += f"; the unreadable file is kept as {kept}"
        return prev, [note]
    if history:
        raise RunDirError(
            f"run directory {run_dir} holds a run ({', '.join(history)}) but no readable checkpoint ({last.name} "
            f"{why_last}, {prev.name} {why_prev}); starting over would replace its history, so pass --resume none "
            "--overwrite to start over (its probe and analysis results are moved aside), or pick another --run-dir")
    return None, []


def _overwrite(run_dir: Path, history: list[str]) -> list[str]:
    import shutil

    derived = [n for n in history if n in DERIVED_FILES]
    notes = []
    if derived:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        aside, n = run_dir / f".overwritten-{stamp}", 1
        while aside.exists():
            n += 1
            aside = run_dir / f".overwritten-{stamp}-{n}"
        aside.mkdir()
        for name in derived:
            os.replace(run_dir / name, aside / name)
        notes.append(f"moved the previous run's {', '.join(derived)} to {aside}")
    for name in history:
        path = run_dir / name
        if name in RUN_FILES and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return notes


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().parent == folder.resolve()


@dataclass
class RunStart:
    """A claimed run directory: its lock, the checkpoint to resume (None: a fresh start) and notes for the user."""

    run_dir: Path
    lock: RunLock | None
    checkpoint: Path | None = None
    notes: list[str] = field(default_factory=list)
    created: list[Path] = field(default_factory=list)  # run_dir and ancestors this start made (deepest first)

    def release(self) -> None:
        """Release the lock. A run that never started (its directory holds nothing but the lock file) leaves nothing
        behind: the lock file goes (removed while still held) and so do the directories this start created."""
        if self.lock is None:
            return
        release_run_dir(self.lock, self.run_dir, self.created)
        self.lock = None


def missing_dirs(run_dir: str | os.PathLike[str]) -> list[Path]:
    """``run_dir`` and its ancestors that do not exist yet, deepest first: what claiming it will create."""
    out, p = [], Path(run_dir).absolute()
    while not p.exists() and p.parent != p:
        out.append(p)
        p = p.parent
    return out


def release_run_dir(lock: RunLock, run_dir: str | os.PathLike[str], created: list[Path]) -> None:
    """Release the run-directory ``lock`` (a :class:`~mdistiller.engine.runlock.RunLock`). When the directory holds
    nothing but the lock file, the run never started: the lock file goes too (removed while still held), and so do
    the empty directories of ``created`` (:func:`missing_dirs` before the claim)."""
    run_dir = Path(run_dir)
    try:
        unused = run_dir.is_dir() and all(p.name == lock.NAME for p in run_dir.iterdir())
    except OSError:
        unused = False
    lock.release(remove_file=unused)
    if not unused:
        return
    for d in created:
        try:
            d.rmdir()
        except OSError:  # not empty (another run created files meanwhile) or already gone
            break


def open_run_dir(run_dir: str | os.PathLike[str], resume: str = "auto", overwrite: bool = False) -> RunStart:
    """Lock ``run_dir`` and decide where the run starts (see the module doc); main rank only.

    Raises :class:`~mdistiller.engine.runlock.RunLockedError` while another process holds the directory and
    :class:`RunDirError` (one sentence) for a start that would lose or mix a history; the lock is released then.
    """
    run_dir = Path(run_dir)
    start = RunStart(run_dir, None, created=missing_dirs(run_dir))
    lock = RunLock(run_dir)
    lock.acquire()
    start.lock = lock
    if lock.stale:
        start.notes.append(f"took over the lock of a run that is gone (pid {lock.stale.get('pid')} on "
                           f"{lock.stale.get('host')})")
    try:
        history = run_history(run_dir)
        if resume in ("none", ""):
            if history and not overwrite:
                raise RunDirError(
                    f"run directory {run_dir} already holds a run ({', '.join(history)}); resume it with --resume "
                    "auto, pick another --run-dir, or pass --overwrite to delete it and start over")
            start.notes += _overwrite(run_dir, history) if history else []
        elif resume == "auto":
            start.checkpoint, notes = _choose_auto(run_dir, history)
            start.notes += notes
        else:
            path = Path(resume)
            if history and not _inside(path, run_dir / "checkpoints"):
                raise RunDirError(
                    f"run directory {run_dir} already holds a run ({', '.join(history)}); resuming {path} of another "
                    "run into it would mix the two histories, so pick another --run-dir (or clear this one first "
                    "with --resume none --overwrite)")
            start.checkpoint = path
    except BaseException:
        start.release()
        raise
    return start


def claim_run_dir(run_dir: str | os.PathLike[str], resume: str = "auto", overwrite: bool = False, *,
                  is_main: bool = True) -> RunStart:
    """Claim ``run_dir`` for a training run on every rank: the main rank (``is_main``) locks it and decides where the
    run starts (:func:`open_run_dir`, its notes printed by :func:`say`); every rank then learns the checkpoint to
    resume (``None``: a fresh start) or the refusal. The command line and :func:`mdistiller.train` both start here.

    Returns the main rank's :class:`RunStart` (call :meth:`RunStart.release` when the run ends) and, on the other
    ranks, a :class:`RunStart` without a lock holding the same checkpoint. On a refusal the process group is torn
    down and every rank raises: the main rank its own error (:class:`~mdistiller.engine.runlock.RunLockedError`,
    :class:`RunDirError`, or whatever else the claim raised), the other ranks a :class:`RunDirError` with its message.
    """
    from .distributed import broadcast_object, cleanup

    start, refused = None, None
    if is_main:
        try:
            start = open_run_dir(run_dir, resume, overwrite)
            say(start.notes)
        except Exception as e:  # noqa: BLE001 (re-raised below, after the other ranks have heard of it)
            refused = e
    checkpoint = broadcast_object(None if start is None else start.checkpoint)
    message = broadcast_object(None if refused is None else str(refused))
    if message is not None:
        cleanup()
        raise refused if refused is not None else RunDirError(message)
    return start if start is not None else RunStart(Path(run_dir), None, checkpoint)


def named_config(cfg: CN, base: CN, override_keys: list[str]) -> CN:
    """``cfg`` with ``EXPERIMENT.NAME`` set to :func:`~mdistiller.engine.identity.run_name` (the name plus the
    command-line overrides that change what is trained), so its run directory, ``config.yaml`` and wandb name say
    which run it is; ``cfg`` itself when the name does not change."""
    name = run_name(cfg, base, override_keys)
    if name == (cfg.EXPERIMENT.NAME or cfg.EXPERIMENT.TAG):
        return cfg
    out = cfg.clone()
    out.defrost()
    out.EXPERIMENT.NAME = name
    out.freeze()
    return out


def say(notes: list[str]) -> None:
    """Print each note as one ``[mdistiller] note:`` line on stderr."""
    for note in notes:
        print(f"[mdistiller] note: {note}.", file=sys.stderr, flush=True)
