"""``mdistiller-sync RUN_DIR``: upload a run directory's offline wandb runs to the server, every segment kept.

Offline (the default, and the cluster case) every session of a training run writes its own
``RUN_DIR/wandb/offline-run-<time>-<id>`` folder under the same run id, and every ``--wandb`` probe or analysis
writes a run of its own in the training run's group. ``wandb sync`` of a second folder of the same id as a fresh
upload replaces the first one's history (wandb issue #5865); this command syncs the folders of each run *in the
order they were written*, with the options that append:

* wandb ≥ 0.30 (``wandb sync`` without ``--append``): one ``wandb sync FOLDER...`` per run, all its segments
  listed; wandb syncs the segments of one run sequentially, in order of start time, each continuing the last.
* older wandb (``--append`` in ``wandb sync --help``): one command per folder; the first segment of a run as is,
  every later one with ``--id RUN_ID --append``.

The training rows need no step fix-up: each carries its own training step, and no step is in two segments
(:class:`~mdistiller.engine.logging.MetricsWriter`). Folders wandb has marked synced (``*.wandb.synced``) are left
out unless ``--include-synced``, so rerunning after a new session uploads only the new segments. ``--dry-run``
prints each run's segments (their step ranges read from the ``.wandb`` files) and the exact commands, and syncs
nothing.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .dashboards import ID_FILE, offline_runs, read_offline_run, stored_run

__all__ = ["Segment", "main", "segments", "sync_commands", "uses_append"]


@dataclass
class Segment:
    """One offline run folder: its run id, job type and the steps of its history rows."""

    folder: Path
    run_id: str
    job_type: str | None
    steps: list[int]
    synced: bool
    closed: bool

    def describe(self) -> str:
        """One line for the listing: folder name, history step range and row count, and whether it is already
        synced or was never closed.
        """
        rows = (f"history steps {self.steps[0]}–{self.steps[-1]} ({len(self.steps)} rows)" if self.steps
                else "no history rows")
        flags = [f for f, on in (("synced already", self.synced), ("not closed: its process was killed; wandb "
                                                                      "syncs what it holds", not self.closed)) if on]
        return f"{self.folder.name}: {rows}" + (f" [{'; '.join(flags)}]" if flags else "")


def segments(run_dir: str | Path) -> dict[str, list[Segment]]:
    """The offline runs of ``RUN_DIR/wandb`` by run id, each run's segments in the order they were written; the
    training run (``RUN_DIR/wandb_run.json``) first."""
    run_dir = Path(run_dir)
    stored = stored_run(run_dir)
    out: dict[str, list[Segment]] = {}
    for run_id, folders in offline_runs(run_dir / "wandb").items():
        for folder in folders:
            run = read_offline_run(folder)
            steps = [s for s in run["steps"] if isinstance(s, int)]
            synced = any(folder.glob("*.wandb.synced"))
            out.setdefault(run_id, []).append(Segment(folder, run_id, run["job_type"], steps, synced, run["closed"]))
    if stored and stored["id"] in out:
        out = {stored["id"]: out.pop(stored["id"]), **out}
    return out


def uses_append(help_text: str) -> bool:
    """Whether this ``wandb sync`` is the older one that appends a folder to a run only with ``--append``."""
    return "--append" in help_text


def sync_commands(runs: dict[str, list[Segment]], wandb: Sequence[str], help_text: str,
                  include_synced: bool = False, extra: Sequence[str] = ()) -> list[list[str]]:
    """The ``wandb sync`` command lines that upload ``runs`` (:func:`segments`) segment after segment, appending
    (see the module docstring); ``extra`` (e.g. ``--project P``) goes into each."""
    base = [*wandb, "sync", *extra]
    commands: list[list[str]] = []
    for run_id, segs in runs.items():
        if uses_append(help_text):
            for i, seg in enumerate(segs):
                if seg.synced and not include_synced:
                    continue
                commands.append([*base, *(["--id", run_id, "--append"] if i else []), str(seg.folder)])
        else:
            todo = [str(seg.folder) for seg in segs if include_synced or not seg.synced]
            if todo:
                commands.append([*base, *(["--include-synced"] if include_synced else []), *todo])
    return commands


def _overlaps(segs: list[Segment]) -> list[str]:
    """Segments whose history repeats a step of an earlier one (written by an older version of this package)."""
    seen: set[int] = set()
    out = []
    for seg in segs:
        again = sorted(seen & set(seg.steps))
        if again:
            out.append(f"{seg.folder.name} repeats step(s) {again[:5]}{' …' if len(again) > 5 else ''} of an earlier "
                       "segment; wandb keeps the first row of a step")
        seen |= set(seg.steps)
    return out


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """The command line of ``tools/sync.py`` and ``mdistiller-sync``; returns the exit status."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a training run directory (holds wandb_run.json and wandb/offline-run-*)")
    p.add_argument("--dry-run", action="store_true", help="print the segments and the commands; sync nothing")
    p.add_argument("--include-synced", action="store_true", help="also the folders wandb marked synced already")
    p.add_argument("-p", "--project", help="upload into this project instead of the one recorded")
    p.add_argument("-e", "--entity", help="upload under this entity (team or user)")
    p.add_argument("--wandb", default=None, metavar="CMD",
                   help="the wandb command line to run (default: this Python's `python -m wandb`)")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not (run_dir / "wandb").is_dir():
        print(f"error: {run_dir} has no wandb/ folder of offline runs; train it with LOG.WANDB True (or pass the run "
              "directory, not its wandb/ folder).", file=sys.stderr)
        return 2
    runs = segments(run_dir)
    if not runs:
        print(f"error: {run_dir / 'wandb'} holds no offline-run-* folder; nothing to sync.", file=sys.stderr)
        return 2
    wandb = shlex.split(args.wandb) if args.wandb else [sys.executable, "-m", "wandb"]
    try:
        help_text = subprocess.run([*wandb, "sync", "--help"], capture_output=True, text=True, timeout=120,
                                   check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        print(f"error: cannot run `{shlex.join([*wandb, 'sync', '--help'])}` ({type(e).__name__}); install wandb or "
              "pass --wandb CMD.", file=sys.stderr)
        return 2
    extra = [*(["--project", args.project] if args.project else []),
             *(["--entity", args.entity] if args.entity else [])]
    commands = sync_commands(runs, wandb, help_text, include_synced=args.include_synced, extra=extra)
    training = (stored_run(run_dir) or {}).get("id")
    for run_id, segs in runs.items():
        kind = "training run" if run_id == training else f"{segs[0].job_type or 'run'}"
        print(f"{kind} {run_id}: {len(segs)} segment(s), in this order")
        for seg in segs:
            print(f"  {seg.describe()}")
        for warning in _overlaps(segs):
            print(f"  warning: {warning}")
    if training is None:
        print(f"note: {run_dir} has no {ID_FILE}; every offline run under it is synced as found.")
    mode = "one command per folder, later segments with --append" if uses_append(help_text) else (
        "one command per run; wandb syncs its segments in order of start time")
    print(f"{'would run' if args.dry_run else 'running'} ({mode}):" if commands else "nothing to sync: every folder is "
          "marked synced (--include-synced to upload them again).")
    for cmd in commands:
        print(f"  {shlex.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        code = subprocess.run(cmd).returncode
        if code:
            print(f"error: `{shlex.join(cmd)}` failed with exit status {code}; the folders synced before it are "
                  "marked synced, so rerun the same mdistiller-sync command to continue.", file=sys.stderr)
            return 1
    return 0
