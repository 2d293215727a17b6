"""A run's ``metrics.jsonl``: its records read back (safe while the run writes or after a kill mid-line) and cut back
to an optimizer step when a resumed run replays the steps after its checkpoint.

Kept apart from :mod:`mdistiller.engine.logging` (which writes the file) so that the dashboards, which read it,
and the logger, which starts the dashboards, import no circle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mdistiller.engine.checkpoint import atomic_write_text

__all__ = ["read_metrics", "truncate_metrics"]


def _complete_records(text: str) -> list[tuple[str, Any]]:
    """``(line, value)`` of every complete JSON line of a ``metrics.jsonl`` text; an unterminated last line (a killed
    write) or a line that is not JSON is skipped."""
    out = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append((line, rec))
    return out


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl`` in order (none when absent), safe to call while the run is still
    writing or after it was killed mid-line."""
    path = Path(run_dir) / "metrics.jsonl"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    return [rec for _, rec in _complete_records(text) if isinstance(rec, dict)]


def truncate_metrics(path: str | os.PathLike[str], step: int) -> int:
    """Drop the records of ``path`` (``metrics.jsonl``) logged after optimizer step ``step`` — a resumed run replays
    those steps and logs them again — and an unterminated last line of a killed write; the file is rewritten
    atomically. Returns the number of records dropped (0: the file is left untouched)."""
    path = Path(path)
    if not path.is_file():
        return 0
    text = path.read_text(encoding="utf-8")
    keep = [line for line, rec in _complete_records(text)
            if not isinstance(rec, dict) or int(rec.get("step", 0) or 0) <= step]
    dropped = len(text.splitlines()) - len(keep)
    if dropped:
        atomic_write_text(path, "".join(keep))
    return dropped
