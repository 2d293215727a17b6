#!/usr/bin/env python
"""Seeded study: FitNet, ViTKD and SiNGER (paper, released, scale-aware) × clean / emulated-artifact teacher × seeds.

    python tools/study.py                      # CPU, 3 seeds, runs and probes two at a time; rerun to resume
    python tools/study.py --device cuda        # minutes on one GPU

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

STUDY_METHODS = "fitnet,vitkd,singer_paper,singer_released,singer_scaled"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="output/study", help="study folder (runs, probes, report)")
    p.add_argument("--methods", default=STUDY_METHODS, help="comma-separated methods of mdistiller.study.METHODS")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (init, data order, probe split)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per run (same for every method)")
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
    return p.parse_args(argv)


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
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    runs = study.plan_runs(methods, seeds)
    extra = [study.StudyRun(m, True, seeds[0]) for m in study.ACCEPTANCE_ONLY if m not in methods]
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
            size = study.probe_input_size(target, args.size)
            n_tr, n_te = ((args.fmnist_train, args.fmnist_test) if dataset == "fashion_mnist"
                          else (args.probe_train, args.probe_test))
            folder = out / "probes" / name
            result = folder / f"{dataset}_{command}.json"
            results[key, label] = result, metric
            if not current_result(result):  # not yet, or measured on a student the run no longer has
                argv_p = [target, "--dataset", dataset, "--out", str(result),
                          *study.probe_argv(command, size, n_tr, n_te, folder / f"cache_{dataset}", seed=seed)]
                jobs.append(Job(f"probe {name} {label}", "mdistiller.eval.cli:main", (command, argv_p),
                                str(result.with_suffix(".log")),  # depth reuses segmentation's features
                                after=f"probe {name} toy seg mIoU" if command == "nyud" else f"train {name}"))
    workers, per_job = split_threads(args.jobs or (2 if args.device == "cpu" else 1), args.threads)
    run_jobs(jobs, workers=workers, threads=per_job)
    from mdistiller.analysis.inputs import load_toy_images

    images = load_toy_images(args.size, args.heldout)[0]
    refine = {run.name: study.refinement_run(out / "runs" / run.name, images, device=args.device)
              for run in all_runs if run.method.startswith(("singer", "scaled"))}
    values: dict[tuple[str, bool, int], dict[str, float]] = {}
    for (key, label), (result, metric) in results.items():
        scale = 100.0 if metric == "miou" else 1.0
        values.setdefault(key, {})[label] = float(json.loads(result.read_text())["metrics"][metric]) * scale
    probes = [(label, hi) for label, _c, _d, _m, hi in study.PROBES]
    shown = methods + ["teacher", "random_init"]
    summary = study.summarize(values, [p for p, _ in probes])
    fig = study.figure(summary, probes, methods, out / "figures" / "study.png",
                       f"{len(seeds)} seeds × {args.steps} steps (batch {args.batch}, {args.size} px); toy budget")
    minutes = (time.perf_counter() - t0) / 60
    report = f"""# Seeded study: does SiNGER help at this scale?

DINOv2-S/14 → ViT-Ti on toy scenes, 𝒟 = {{8, 11}}; every run {args.steps} steps of batch {args.batch} at {args.size} px
({amp}), seeds {seeds} (initialisation, data order and probe split all follow the seed). Teacher rows
`emulated artifacts` use `configs/demo/artifacts.yaml`. Probes: cached linear heads on the frozen last block
({args.probe_train}/{args.probe_test} toy scenes; Fashion-MNIST {args.fmnist_train}/{args.fmnist_test} images),
learning rate chosen on a validation split. `teacher` and `random_init` are references (clean teacher, ViT-Ti at
initialisation; first seed only). Wall time of this invocation: {minutes:.1f} min ({args.device}).

{study.render_tables(summary, probes, shown)}

![study](figures/{fig.name})

## Does the adapter refine the teacher? (held-out toy scenes, {args.heldout} images)

{acceptance_table(refine, all_runs)}
"""
    (out / "study.md").write_text(report)
    (out / "study.json").write_text(json.dumps({
        "args": vars(args), "amp": amp, "values": {"|".join(map(str, k)): v for k, v in values.items()},
        "refinement": refine}, indent=1))
    print(report)
    return 0


if __name__ == "__main__":
    from mdistiller.cli import exit_on_interrupt

    with exit_on_interrupt():  # Ctrl-C while torch imports: one line, exit 130
        sys.exit(main())
