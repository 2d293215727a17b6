"""One invocation of the study: plan its jobs, run them side by side (or not, ``report_only``), write the report."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .jobs import PROBES, budget_overrides, order_jobs, probe_jobs, progress, train_jobs
from .matrix import MATRICES, StudyRun, plan_runs
from .render import acceptance_table, figure, partial_note, render_report, render_tables, write_doc_section
from .results import read_values, refinements, save_json
from .settings import StudySettings
from .stats import summarize

__all__ = ["run_study"]


def run_study(args: StudySettings, out: str | Path, *, jobs: int | None = None, threads: int = 2,
              report_only: bool = False, command_flags: str = "", doc: str | Path | None = None,
              record: Mapping[str, Any] | None = None) -> str:
    """Train and probe every missing cell of ``args.matrix`` into ``out`` (``jobs`` side by side within ``threads``
    torch threads in all; default 2 on CPU, 1 on CUDA), then write ``OUT/study.md``, ``OUT/study.json`` (with
    ``record``, the invocation's arguments) and ``OUT/figures/``, and the report's section into ``doc`` if given.
    ``report_only`` starts nothing and says how much had finished. Returns the report."""
    from mdistiller.analysis.inputs import load_toy_images
    from mdistiller.jobs import run_jobs, split_threads
    from mdistiller.models.assets import dinov2_small_weights

    out = Path(out)
    matrix = MATRICES[args.matrix]
    methods, seeds = list(args.methods), list(args.seeds)
    runs = plan_runs(methods, seeds, matrix.teachers)
    extra = [StudyRun(m, True, seeds[0]) for m in matrix.acceptance_only if m not in methods]
    dinov2_small_weights()
    t0 = time.perf_counter()
    all_runs = runs + extra
    pending = train_jobs(all_runs, out, budget_overrides(args), args.device)
    probing, results = probe_jobs(args, runs, out)
    pending = order_jobs(pending + probing, matrix, all_runs, seeds)
    workers, per_job = split_threads(jobs or (2 if args.device == "cpu" else 1), threads)
    status = ""
    if report_only:
        status = partial_note(*progress(pending, results, all_runs))
    else:
        run_jobs(pending, workers=workers, threads=per_job)
    images = load_toy_images(args.size, args.heldout)[0]
    refine = refinements(out, all_runs, images, device=args.device)
    values = read_values(results)
    probes = [(label, hi) for label, _c, _d, _m, hi in PROBES if label in args.probe_labels]
    pairs = [(m, r) for m, r in matrix.pairs if m in methods and r in methods]
    summary = summarize(values, [p for p, _ in probes], pairs=pairs)
    fig_name = "study.png" if args.matrix == "study" else f"{args.matrix}.png"
    fig = figure(summary, probes, methods, out / "figures" / fig_name,
                 f"{len(seeds)} seeds × {args.steps} steps (batch {args.batch}, {args.size} px); toy budget")
    report = render_report(
        args, title=matrix.title, teachers=matrix.teachers, command_flags=command_flags,
        minutes=None if report_only else (time.perf_counter() - t0) / 60, status=status,
        tables=render_tables(summary, probes, methods + ["teacher", "random_init"], paired_title=matrix.paired_title),
        figure_name=fig.name, acceptance=acceptance_table(refine, [run.name for run in all_runs if run.artifacts]))
    (out / "study.md").write_text(report)
    if doc:
        write_doc_section(doc, args.matrix, report, fig)
    save_json(out / "study.json", record or {}, args.amp, values, refine)
    return report
