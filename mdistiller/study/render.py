"""The study's report from plain data: markdown tables, the figure, the report page and its section in a doc.

Everything here takes numbers, names and paths (the output of :func:`mdistiller.study.stats.summarize`, run names,
refinement statistics); it imports neither torch nor the matrix. The figure draws with matplotlib through
:mod:`mdistiller.analysis.viz`, imported only when a figure is drawn.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .settings import StudySettings

__all__ = ["acceptance_table", "doc_section", "figure", "format_cell", "partial_note", "render_report",
           "render_tables", "write_doc_section", "write_section"]


def format_cell(mean: float, std: float, digits: int = 2) -> str:
    """``mean ± std`` with ``digits`` decimals."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def render_tables(summary: dict[str, Any], probes: Sequence[tuple[str, bool]], methods: Sequence[str],
                  digits: Callable[[str], int] = lambda p: 4 if "RMSE" in p else 2,
                  paired_title: str = "Paired difference to FitNet (same seed and teacher)") -> str:
    """Markdown: mean ± std per method and teacher, then the paired differences (``method − reference``) with their
    95 % intervals, in the order of ``summary["paired"]``. A number over fewer seeds than the most any cell has
    (a study still running, a reference row) says so: ``(n = 2)``."""
    counts = [c[-1] for table in ("cells", "paired") for cell in summary[table].values() for c in cell.values()]
    full = max(counts, default=0)

    def n_note(n: int) -> str:
        return f" (n = {n})" if n < full else ""

    head = "| method | teacher | " + " | ".join(f"{p} {'↑' if hi else '↓'}" for p, hi in probes) + " |"
    sep = "|---|---|" + "---:|" * len(probes)
    lines = ["### Mean ± std over seeds", "", head, sep]
    for art in (False, True):
        for m in methods:
            cell = summary["cells"].get((m, art))
            if not cell:
                continue
            vals = [format_cell(*cell[p][:2], digits(p)) + n_note(cell[p][2]) if p in cell else "–"
                    for p, _ in probes]
            lines.append(f"| {m} | {'emulated artifacts' if art else 'clean'} | " + " | ".join(vals) + " |")
    lines += ["", f"### {paired_title}, mean [95 % t-interval]", "",
              head.replace("| method |", "| method − reference |"), sep]
    for art in (False, True):
        for (m, ref, a), cell in summary["paired"].items():
            if a != art:
                continue
            vals = []
            for p, _ in probes:
                if p not in cell:
                    vals.append("–")
                    continue
                mean, lo, hi, n = cell[p]
                d = digits(p)
                vals.append(f"{mean:+.{d}f} [{lo:+.{d}f}, {hi:+.{d}f}]" + n_note(n))
            lines.append(f"| {m} − {ref} | {'emulated artifacts' if art else 'clean'} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def figure(summary: dict[str, Any], probes: Sequence[tuple[str, bool]], methods: Sequence[str], path: Path,
           title: str) -> Path:
    """One panel per probe: mean ± std over seeds per method, one bar per teacher the methods were trained with
    (clean / emulated artifacts; a single teacher's bars are centred), and the reference rows ``teacher`` and
    ``random_init`` of ``summary`` as horizontal lines (the analysis figures' type sizes and resolution,
    :mod:`mdistiller.analysis.viz`)."""
    import matplotlib.pyplot as plt

    from mdistiller.analysis.viz import save_figure, style

    teachers = [(art, color, label) for art, color, label in ((False, "#4c72b0", "students of the clean teacher"),
                                                              (True, "#dd8452", "students of emulated artifacts"))
                if any((m, art) in summary["cells"] for m in methods)]
    references = (("teacher", ":", "the teacher itself"), ("random_init", "--", "ViT-Ti at initialisation"))
    with style():
        fig, axes = plt.subplots(1, len(probes), figsize=(3.3 * len(probes), 3.8), squeeze=False)
        width = 0.76 / max(1, len(teachers))
        for ax, (p, higher) in zip(axes[0], probes):
            for k, (art, color, label) in enumerate(teachers):
                xs, ms, ss = [], [], []
                for i, m in enumerate(methods):
                    cell = summary["cells"].get((m, art), {}).get(p)
                    if cell:
                        xs.append(i + (k - (len(teachers) - 1) / 2) * width)
                        ms.append(cell[0])
                        ss.append(cell[1])
                ax.bar(xs, ms, width, yerr=ss, color=color, capsize=2, label=label)
            for name, line, label in references:
                cell = summary["cells"].get((name, False), {}).get(p)
                if cell:
                    ax.axhline(cell[0], color="0.35", linestyle=line, linewidth=1, label=label)
            ax.set_xticks(range(len(methods)))
            ax.set_xticklabels([m.replace("singer_", "S-") for m in methods], rotation=35, ha="right")
            ax.set_title(f"{p} {'↑' if higher else '↓'}")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
        fig.suptitle(title)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        return save_figure(fig, path)


def write_section(path: str | Path, name: str, markdown: str) -> Path:
    """Put ``markdown`` into ``path`` between the markers ``<!-- study:NAME -->`` and ``<!-- /study:NAME -->``,
    replacing what an earlier invocation wrote there (appended at the end the first time); atomic, the rest of the
    file untouched."""
    from mdistiller.fileio import atomic_write

    path = Path(path)
    start, end = f"<!-- study:{name} -->", f"<!-- /study:{name} -->"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def acceptance_table(refine: Mapping[str, dict[int, dict[str, float]]], names: Sequence[str]) -> str:
    """The refinement acceptance check of the runs ``names`` (emulated-artifact teacher) that have statistics in
    ``refine`` (run → layer → ``refinement_stats``): per run and layer, the worst outlier ratio and the inlier
    cosines (:func:`mdistiller.analysis.refinement.format_refinement`)."""
    from mdistiller.analysis.refinement import ACCEPT_MAX_RATIO, ACCEPT_MIN_COS, format_refinement

    intro = (f"Acceptance: every emulated-artifact patch ends ≤ {ACCEPT_MAX_RATIO}× its image's α-quantile of ‖F̂‖ "
             f"(worst patch; α = 0.95 for every mode), and inlier cos(F̂, F) ≥ {ACCEPT_MIN_COS} at l and after "
             "block l+1.")
    table = format_refinement({name: refine[name] for name in names if refine.get(name)})
    return f"{intro}\n\n{table}"


def partial_note(trainings: tuple[int, int], probes: tuple[int, int]) -> str:
    """The report's line for ``--report-only``: how many of the trainings and probes (``(finished, total)`` each)
    had finished; empty when all of them had."""
    if trainings[0] == trainings[1] and probes[0] == probes[1]:
        return ""
    return (f"\n**Partial: {trainings[0]} of {trainings[1]} trainings and "
            f"{probes[0]} of {probes[1]} probes had finished when this report "
            "was written (`--report-only`); rerunning the command resumes the rest.**\n")


def render_report(args: StudySettings, *, title: str, teachers: Sequence[bool], command_flags: str,
                  minutes: float | None, status: str, tables: str, figure_name: str, acceptance: str) -> str:
    """The study's page (``OUT/study.md``): the setting and the command that reproduces it (``command_flags``: the
    flags after ``--matrix NAME``), ``status`` (:func:`partial_note` or empty), the tables (:func:`render_tables`),
    the figure and the refinement acceptance table (:func:`acceptance_table`); ``minutes`` is the invocation's wall
    time (None: a ``--report-only`` invocation, which trains nothing and says so)."""
    when = (f"Wall time of this invocation: {minutes:.1f} min ({args.device})." if minutes is not None else
            "Written by `--report-only` from the finished runs and probes (it trains nothing; the runs' own wall "
            "times are in their `train.log`).")
    amp, seeds = args.amp, list(args.seeds)
    names = " and ".join("emulated artifacts" if a else "clean" for a in teachers)
    return f"""# {title}

DINOv2-S/14 → ViT-Ti on toy scenes, 𝒟 = {{8, 11}}; every run {args.steps} steps of batch {args.batch} at {args.size} px
({amp}), seeds {seeds} (initialisation, data order and probe split all follow the seed); teachers: {names}.
Command: `python tools/study.py --matrix {args.matrix}{command_flags}`. Teacher rows
`emulated artifacts` use `configs/demo/artifacts.yaml`. Probes: cached linear heads on the frozen last block
({args.probe_train}/{args.probe_test} toy scenes; Fashion-MNIST {args.fmnist_train}/{args.fmnist_test} images),
learning rate chosen on a validation split. `teacher` and `random_init` are references (clean teacher, ViT-Ti at
initialisation; first seed only). {when}
{status}
{tables}

![study](figures/{figure_name})

## Does the adapter refine the teacher? (held-out toy scenes, {args.heldout} images)

{acceptance}
"""


def doc_section(report: str) -> str:
    """``report`` as a section of a longer page: its title one level down, its refinement heading too."""
    return report.replace("# ", "## ", 1).replace("\n## Does the adapter", "\n### Does the adapter")


def write_doc_section(doc: str | Path, name: str, report: str, figure_path: Path) -> Path:
    """Write ``report`` into ``doc`` as the section ``name`` (:func:`write_section`, :func:`doc_section`), with its
    figure copied next to the doc (``figures/<name>``, the link the report uses)."""
    doc = Path(doc)
    (doc.parent / "figures").mkdir(parents=True, exist_ok=True)
    target = doc.parent / "figures" / figure_path.name  # the section links figures/<name>, as the report does
    if target.resolve() != figure_path.resolve():
        shutil.copyfile(figure_path, target)
    return write_section(doc, name, doc_section(report))
