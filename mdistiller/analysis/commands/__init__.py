"""The ``tools/analyze.py`` commands in :data:`COMMANDS`: one module per command holds its computation, text and
figures; :mod:`.options` holds every command's options. Importing this package is light (no torch): a command's
module is imported when it runs.

Adding an analysis means adding a module here (``run``, ``format_text``, ``plot``), its options in
:mod:`.options`, and an entry below; ``tools/analyze.py`` loops over the registry for its sub-commands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import options as _o
from .base import Command

__all__ = ["COMMANDS", "NAMES", "Command", "format_report", "run_report", "save_report", "write_figures"]

#: the commands in the order ``tools/analyze.py`` lists them; each one's module is its name with ``_`` for ``-``
NAMES = ("artifacts", "nullspace", "null-vs-reality", "subspace", "adapter", "similarity", "figures")


def _command(name: str) -> Command:
    module = name.replace("-", "_")
    options = getattr(_o, f"{module}_options")
    return Command(name, options.__doc__.strip(), options, getattr(_o, f"{module}_run"), module)


#: command name → :class:`Command`
COMMANDS: dict[str, Command] = {name: _command(name) for name in NAMES}


def _of(report: Mapping[str, Any]) -> Command:
    cmd = report["command"]
    if cmd not in COMMANDS:
        raise ValueError(f"unknown report '{cmd}'; expected one of {', '.join(COMMANDS)}.")
    return COMMANDS[cmd]


def format_report(report: Mapping[str, Any]) -> str:
    """Human-readable tables of a report (the text ``tools/analyze.py`` prints), figures listed last."""
    text = _of(report).format(report)
    if report.get("figures"):
        text += "\nfigures: " + ", ".join(report["figures"])
    return text


def write_figures(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write every figure of ``report`` (by its ``command``) into ``out_dir``; returns the PNG paths."""
    return _of(report).plot(report, Path(out_dir))


def run_report(name: str, args: Any) -> dict[str, Any]:
    """Run the command ``name`` on parsed ``args``; a report of trained runs carries ``student_weights``
    (``{run directory: fingerprint of the student it measured}``, the fingerprint ``tools/lineval`` results and
    ``student.safetensors`` use too)."""
    from mdistiller.analysis.runs import MEASURED

    MEASURED.clear()
    report = COMMANDS[name].run(args)
    if MEASURED:
        report["student_weights"] = dict(MEASURED)
    return report


def save_report(report: dict[str, Any], out_dir: str | Path, figures: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Write ``<command>.json`` and ``<command>.txt`` into ``out_dir`` (figures listed in both)."""
    from mdistiller.analysis.render import save_report as save

    report["figures"] = [str(p) for p in figures]
    return save(report, out_dir, format_report(report))
