#!/usr/bin/env python
"""Seeded study: FitNet, ViTKD and SiNGER (paper, released, scale-aware) × clean / emulated-artifact teacher × seeds.

    python tools/study.py                      # CPU, 3 seeds, runs and probes two at a time; rerun to resume
    python tools/study.py --device cuda        # minutes on one GPU
    python tools/study.py --ladder --doc docs/study.md   # the ablation ladder, its section written into the doc
    python tools/study.py --matrix long        # the long arm (FitNet, clamp, scale-aware SiNGER; artifact teacher)

``--matrix`` names one of ``mdistiller.study.MATRICES`` (its methods, teachers, pairs and default steps);
``--doc FILE`` puts the report between ``<!-- study:MATRIX -->`` markers in FILE (replaced on every rerun).

The Fashion-MNIST probe reads ``/usr/share/datasets/fashion-mnist`` (Debian: ``apt-get install dataset-fashion-mnist``).
Writes ``OUT/study.md`` (tables with 95 % intervals, the refinement acceptance table), ``OUT/study.json`` and
``OUT/figures/study.png``. Every run has the same budget; nothing is dropped or re-picked: all seeds are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mdistiller.study import MATRICES, PROBES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--matrix", choices=tuple(MATRICES), default="study",
                   help="named experiment: its methods, teachers, paired differences and default steps")
    p.add_argument("--ladder", action="store_const", const="ladder", dest="matrix", help="same as --matrix ladder")
    p.add_argument("--out", default=None, help="study folder (runs, probes, report; default output/MATRIX)")
    p.add_argument("--doc", default=None, help="also write the report into this markdown file, between markers")
    p.add_argument("--methods", default=None,
                   help="comma-separated methods of mdistiller.study.METHODS (default: the matrix's)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (init, data order, probe split)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per run, the same for every method (default: the matrix's, 100 for study "
                        "and ladder)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=112, help="student image size (grid size/16; the /14 teacher matches)")
    p.add_argument("--probe-train", type=int, default=400, help="toy scenes to train each probe")
    p.add_argument("--probe-test", type=int, default=200, help="toy scenes to test each probe")
    p.add_argument("--fmnist-train", type=int, default=600, help="Fashion-MNIST training images per probe")
    p.add_argument("--fmnist-test", type=int, default=300, help="Fashion-MNIST test images per probe")
    p.add_argument("--heldout", type=int, default=64, help="held-out toy scenes for the refinement numbers")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", choices=("auto", "none", "bf16"), default="auto",
                   help="training precision; auto = bf16 on CUDA and on CPUs with native bf16, else fp32")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads in all")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs and probes side by side, --threads / --jobs threads each (default: 2 on CPU, 1 on CUDA)")
    p.add_argument("--no-probes", action="store_true", help="train and measure refinement only")
    p.add_argument("--report-only", action="store_true",
                   help="start nothing: write the report from the runs and probes finished so far (says how many)")
    p.add_argument("--probes", default=None,
                   help="comma-separated probe labels to run (default all), e.g. 'toy cls top-1,F-MNIST top-1'")
    args = p.parse_args(argv)
    matrix = MATRICES[args.matrix]
    args.out = args.out or f"output/{args.matrix}"
    args.methods = args.methods or ",".join(matrix.methods)
    args.steps = args.steps if args.steps is not None else matrix.steps
    labels = [label for label, *_ in PROBES]
    args.probe_labels = [x for x in (args.probes or ",".join(labels)).split(",") if x]
    unknown = [x for x in args.probe_labels if x not in labels]
    if unknown:
        p.error(f"unknown probe label(s) {unknown}; choose from {labels}.")
    return args


def _budget_flags(args: argparse.Namespace) -> str:
    """The command-line flags whose values differ from the matrix's defaults (the report's reproduce line)."""
    import shlex

    default = vars(parse_args(["--matrix", args.matrix]))
    keys = ("methods", "seeds", "steps", "batch", "size", "probe_train", "probe_test", "fmnist_train", "fmnist_test",
            "heldout", "probes", "device", "amp")
    return "".join(f" --{k.replace('_', '-')} {shlex.quote(str(getattr(args, k)))}"
                   for k in keys if getattr(args, k) != default[k])


def acceptance_table(refine: dict[str, dict[int, dict[str, float]]], runs) -> str:
    """Item: per SiNGER mode and layer, the worst outlier ratio and the inlier cosines, per seed (artifact teacher)."""
    from mdistiller.analysis.refinement import ACCEPT_MAX_RATIO, ACCEPT_MIN_COS, format_refinement

    intro = (f"Acceptance: every emulated-artifact patch ends ≤ {ACCEPT_MAX_RATIO}× its image's α-quantile of ‖F̂‖ "
             f"(worst patch; α = 0.95 for every mode), and inlier cos(F̂, F) ≥ {ACCEPT_MIN_COS} at l and after "
             "block l+1.")
    table = format_refinement({run.name: refine[run.name] for run in runs if run.artifacts and refine.get(run.name)})
    return f"{intro}\n\n{table}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from mdistiller import study

    torch.set_num_threads(args.threads)
    amp = study.resolve_amp(args.amp, args.device)
    out = Path(args.out)
    matrix = study.MATRICES[args.matrix]
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    runs = study.plan_runs(methods, seeds, matrix.teachers)
    extra = [study.StudyRun(m, True, seeds[0]) for m in matrix.acceptance_only if m not in methods]
    budget = ["SOLVER.MAX_STEPS", str(args.steps), "SOLVER.BATCH_SIZE", str(args.batch), "DATASET.INPUT_SIZE",
              str(args.size), "SOLVER.AMP", amp, "LOG.CKPT_EVERY_STEPS", "0", "LOG.AGREEMENT_EVERY_STEPS",
              str(args.steps), "LOG.PROGRESS", "False", "EXPERIMENT.DEVICE", args.device]
    from mdistiller.models.assets import dinov2_small_weights

    dinov2_small_weights()
    t0 = time.perf_counter()
    all_runs = runs + extra
    from mdistiller.eval.table import current_result
    from mdistiller.jobs import Job, run_jobs, split_threads

    jobs = []
    for run in all_runs:
        run_dir = out / "runs" / run.name
        if not (run_dir / "student.safetensors").exists():
            files, opts = study.run_config(run, budget)
            argv = ["--cfg", *map(str, files), "--run-dir", str(run_dir), "--device", args.device, *opts]
            jobs.append(Job(f"train {run.name}", "mdistiller.engine.launch:main", (argv,),
                            str(out / "logs" / f"{run.name}.log"), summary="wall time"))
    targets = [(r.name, str(out / "runs" / r.name), (r.method, r.artifacts, r.seed), r.seed) for r in runs]
    targets += [(f"reference_{n}", t, (n, False, seeds[0]), seeds[0])  # context rows: the first seed only
                for n, t in (("teacher", "dinov2_small_imgfocus"), ("random_init", "random:vit_tiny"))]
    results = {}  # (target key, probe label) -> (result file, metric)
    for name, target, key, seed in [] if args.no_probes else targets:
        for label, command, dataset, metric, _ in study.PROBES:
            if label not in args.probe_labels:
                continue
            size = study.probe_input_size(target, args.size)
            n_tr, n_te = ((args.fmnist_train, args.fmnist_test) if dataset == "fashion_mnist"
                          else (args.probe_train, args.probe_test))
            folder = out / "probes" / name
            result = folder / f"{dataset}_{command}.json"
            results[key, label] = result, metric
            if not current_result(result):  # not yet, or measured on a student the run no longer has
                options = {"dataset": dataset, "out": str(result),
                           **study.probe_options(command, size, n_tr, n_te, folder / f"cache_{dataset}", seed=seed)}
                jobs.append(Job(f"probe {name} {label}", "mdistiller.eval.probing:probe_job",
                                (target, command, options),
                                str(result.with_suffix(".log")),  # depth reuses segmentation's features
                                after=f"probe {name} toy seg mIoU" if command == "nyud" else f"train {name}"))
    workers, per_job = split_threads(args.jobs or (2 if args.device == "cpu" else 1), args.threads)
    # teacher by teacher, the matrix's first methods first, then seed by seed (Matrix.job_order); a run's probes come
    # right after its training and the references after the first run, so an interrupted invocation leaves whole
    # cells behind (a rerun resumes where it stopped)
    order = {run.name: matrix.job_order(run, seeds) for run in all_runs}
    first = min(order.values())
    jobs.sort(key=lambda job: order.get(job.name.split(" ")[1], first))
    trainings = sum(1 for job in jobs if job.name.startswith("train "))
    status = ""
    if args.report_only:
        status = (f"\n**Partial: {len(all_runs) - trainings} of {len(all_runs)} trainings and "
                  f"{len(results) - (len(jobs) - trainings)} of {len(results)} probes had finished when this report "
                  "was written (`--report-only`); rerunning the command resumes the rest.**\n")
    else:
        run_jobs(jobs, workers=workers, threads=per_job)
    from mdistiller.analysis.inputs import load_toy_images

    images = load_toy_images(args.size, args.heldout)[0]
    refine = {run.name: study.refinement_run(out / "runs" / run.name, images, device=args.device)
              for run in all_runs if study.target_changes(run.method)
              and (out / "runs" / run.name / "student.safetensors").exists()}
    values: dict[tuple[str, bool, int], dict[str, float]] = {}
    for (key, label), (result, metric) in results.items():
        if not result.exists():  # --report-only: not finished yet
            continue
        scale = 100.0 if metric == "miou" else 1.0
        values.setdefault(key, {})[label] = float(json.loads(result.read_text())["metrics"][metric]) * scale
    probes = [(label, hi) for label, _c, _d, _m, hi in study.PROBES if label in args.probe_labels]
    shown = methods + ["teacher", "random_init"]
    pairs = [(m, r) for m, r in matrix.pairs if m in methods and r in methods]
    summary = study.summarize(values, [p for p, _ in probes], pairs=pairs)
    fig_name = "study.png" if args.matrix == "study" else f"{args.matrix}.png"
    fig = study.figure(summary, probes, methods, out / "figures" / fig_name,
                       f"{len(seeds)} seeds × {args.steps} steps (batch {args.batch}, {args.size} px); toy budget")
    minutes = (time.perf_counter() - t0) / 60
    teachers = " and ".join("emulated artifacts" if a else "clean" for a in matrix.teachers)
    report = f"""# {matrix.title}

DINOv2-S/14 → ViT-Ti on toy scenes, 𝒟 = {{8, 11}}; every run {args.steps} steps of batch {args.batch} at {args.size} px
({amp}), seeds {seeds} (initialisation, data order and probe split all follow the seed); teachers: {teachers}.
Command: `python tools/study.py --matrix {args.matrix}{_budget_flags(args)}`. Teacher rows
`emulated artifacts` use `configs/demo/artifacts.yaml`. Probes: cached linear heads on the frozen last block
({args.probe_train}/{args.probe_test} toy scenes; Fashion-MNIST {args.fmnist_train}/{args.fmnist_test} images),
learning rate chosen on a validation split. `teacher` and `random_init` are references (clean teacher, ViT-Ti at
initialisation; first seed only). Wall time of this invocation: {minutes:.1f} min ({args.device}).
{status}
{study.render_tables(summary, probes, shown, paired_title=matrix.paired_title)}

![study](figures/{fig.name})

## Does the adapter refine the teacher? (held-out toy scenes, {args.heldout} images)

{acceptance_table(refine, all_runs)}
"""
    (out / "study.md").write_text(report)
    if args.doc:
        import shutil

        doc = Path(args.doc)
        (doc.parent / "figures").mkdir(parents=True, exist_ok=True)
        target = doc.parent / "figures" / fig.name  # the section links figures/<name>, as the report does
        if target.resolve() != fig.resolve():
            shutil.copyfile(fig, target)
        section = report.replace("# ", "## ", 1).replace("\n## Does the adapter", "\n### Does the adapter")
        study.write_section(doc, args.matrix, section)
    (out / "study.json").write_text(json.dumps({
        "args": vars(args), "amp": amp, "values": {"|".join(map(str, k)): v for k, v in values.items()},
        "refinement": refine}, indent=1))
    print(report)
    return 0


if __name__ == "__main__":
    from mdistiller.cli import exit_on_interrupt

    with exit_on_interrupt():  # Ctrl-C while torch imports: one line, exit 130
        sys.exit(main())
