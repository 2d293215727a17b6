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

__all__ = ["COMMANDS", "Command", "format_report", "save_report", "write_figures"]

#: command name → :class:`Command`, in the order ``tools/analyze.py`` lists them
COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("artifacts", "per-layer patch-norm artifacts and the layer recommendation",
            _o.artifacts_options, "artifacts"),
    Command("nullspace", "singular spectra of W̃_l and sub-layer changes",
            _o.nullspace_options, "nullspace"),
    Command("null-vs-reality", "SiNGER / Jacobian / random bases on the real next block",
            _o.null_vs_reality_options, "null_vs_reality"),
    Command("subspace", "subspace energy of patches vs their norm (App. I)",
            _o.subspace_options, "subspace"),
    Command("adapter", "trained SiNGER adapters (Table 3, 5a, 5b, Fig. 6)",
            _o.adapter_options, "adapter"),
    Command("similarity", "teacher-student Gram distance and CKA (Table 2)",
            _o.similarity_options, "similarity"),
    Command("figures", "norm / PCA / similarity maps per image (Fig. 2, 9, 11, 12)",
            _o.figures_options, "figures"),
)}


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
    from mdistiller.analysis.render import save_report as save

    report["figures"] = [str(p) for p in figures]
    return save(report, out_dir, format_report(report), figures)
