"""What an analysis command leaves behind: ``<command>.json``, ``<command>.txt`` and its PNG figures in one folder,
described by :class:`AnalysisResult`. Every command's typed ``run(...)`` ends in :func:`finish`; torch is imported
only when a report is written."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registry import command_of

__all__ = ["AnalysisResult", "default_out_dir", "finish", "format_report", "measured", "save_report",
           "write_figures"]


@dataclass(frozen=True)
class AnalysisResult:
    """The outcome of one analysis command: its ``report`` (the dict written as JSON, plus ``_``-prefixed in-memory
    entries such as feature maps that the JSON leaves out) and the files written (``json``, ``text``, ``figures``)."""

    report: dict[str, Any]
    json: Path
    text: Path
    figures: tuple[Path, ...] = ()

    @property
    def out_dir(self) -> Path:
        """The folder the files were written to."""
        return self.json.parent

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file written: the JSON, the text and the figures."""
        return (self.json, self.text, *self.figures)

    def format(self) -> str:
        """The text the command line prints (the command's tables, figures listed last)."""
        return format_report(self.report)


def format_report(report: Mapping[str, Any]) -> str:
    """Human-readable tables of a report (the text the command line prints), figures listed last."""
    text = command_of(report).format(report)
    if report.get("figures"):
        text += "\nfigures: " + ", ".join(report["figures"])
    return text


def write_figures(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write every figure of ``report`` (by its ``command``) into ``out_dir``; returns the PNG paths."""
    return command_of(report).plot(report, Path(out_dir))


def save_report(report: dict[str, Any], out_dir: str | Path, figures: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Write ``<command>.json`` and ``<command>.txt`` into ``out_dir`` (figures listed in both)."""
    from mdistiller.analysis.render import save_report as save

    report["figures"] = [str(p) for p in figures]
    return save(report, out_dir, format_report(report))


def default_out_dir(source: str | Path) -> Path:
    """Where a command writes without ``out``: ``RUN_DIR/analysis`` for a run directory (the first one of a
    run-level command, or ``model`` when it is one), else ``output/analysis/<model name>``."""
    from mdistiller.analysis.inputs import is_run_dir

    if is_run_dir(source):
        return Path(source) / "analysis"
    return Path("output/analysis") / Path(source).name


def measured(compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``'s report; a report of trained runs gains ``student_weights`` (``{run directory: fingerprint of
    the student it measured}``, the fingerprint ``tools/lineval`` results and ``student.safetensors`` use too)."""
    from mdistiller.analysis.runs import MEASURED

    MEASURED.clear()
    report = compute()
    if MEASURED:
        report["student_weights"] = dict(MEASURED)
    return report


def finish(compute: Callable[[], dict[str, Any]], *, source: str | Path, out: str | Path | None = None,
           figures: bool = True, wandb: bool = False) -> AnalysisResult:
    """Run ``compute`` (:func:`measured`), then write its figures (unless ``figures`` is false) and its JSON and
    text into ``out`` (default :func:`default_out_dir` of ``source``, the model or first run directory); with
    ``wandb`` also log them beside the training run of ``source``
    (:func:`mdistiller.engine.dashboards.log_analysis`)."""
    report = measured(compute)
    out_dir = Path(out) if out else default_out_dir(source)
    written = write_figures(report, out_dir) if figures else []
    files = save_report(report, out_dir, written)
    if wandb:
        from mdistiller.engine.dashboards import log_analysis

        log_analysis(source, report["command"], files["json"], written)
    return AnalysisResult(report=report, json=files["json"], text=files["text"], figures=tuple(written))
