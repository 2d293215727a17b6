"""The ``tools/analyze.py`` commands, one module each (compute, text, figures, options), in :data:`COMMANDS`.

Adding an analysis means adding a module here with a ``COMMAND`` and listing it below; ``tools/analyze.py`` loops
over the registry for its sub-commands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mdistiller.analysis.render import save_report as _save

from . import adapter, artifacts, figures, null_vs_reality, nullspace, similarity, subspace
from .base import Command

__all__ = ["COMMANDS", "Command", "format_report", "save_report", "write_figures"]

#: command name → :class:`Command`, in the order ``tools/analyze.py`` lists them
COMMANDS: dict[str, Command] = {
    m.COMMAND.name: m.COMMAND
    for m in (artifacts, nullspace, null_vs_reality, subspace, adapter, similarity, figures)
}


def _command(report: Mapping[str, Any]) -> Command:
    cmd = report["command"]
    if cmd not in COMMANDS:
        raise ValueError(f"unknown report '{cmd}'; expected one of {', '.join(COMMANDS)}.")
    return COMMANDS[cmd]


def format_report(report: Mapping[str, Any]) -> str:
    """Human-readable tables of a report (the text ``tools/analyze.py`` prints), figures listed last."""
    text = _command(report).format(report)
    if report.get("figures"):
        text += "\nfigures: " + ", ".join(report["figures"])
    return text


def write_figures(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write every figure of ``report`` (by its ``command``) into ``out_dir``; returns the PNG paths."""
    return _command(report).plot(report, Path(out_dir))


def save_report(report: dict[str, Any], out_dir: str | Path, figures: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Write ``<command>.json`` and ``<command>.txt`` into ``out_dir`` (figures listed in both)."""
    report["figures"] = [str(p) for p in figures]
    return _save(report, out_dir, format_report(report), figures)
