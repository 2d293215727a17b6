"""The study's jobs: every training and probe of one invocation as a :class:`mdistiller.jobs.Job`, in the order
that answers the matrix's main question first; the probes' settings shared with the demo.

A job is planned only when its result is missing (a training without ``student.safetensors``, a probe without a
current result, :func:`mdistiller.eval.table.current_result`), so a rerun resumes where an interrupted one stopped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .matrix import Matrix, StudyRun, run_config
from .settings import StudySettings

if TYPE_CHECKING:
    from mdistiller.jobs import Job

__all__ = ["CLS_LRS", "DEMO_DENSE_LRS", "DENSE_LRS", "PROBES", "ProbeResults", "budget_overrides", "demo_budget",
           "order_jobs", "probe_input_size", "probe_jobs", "probe_options", "progress", "train_jobs"]

#: (label, eval command, dataset, result key, higher is better)
PROBES: tuple[tuple[str, str, str, str, bool], ...] = (
    ("toy cls top-1", "transfer", "toy_scenes", "top1", True),
    ("toy seg mIoU", "ade20k", "toy_scenes", "miou", True),
    ("toy depth RMSE", "nyud", "toy_scenes", "rmse", False),
    ("F-MNIST top-1", "transfer", "fashion_mnist", "top1", True),
)
# Probe learning-rate grids for minutes-trained students on a few hundred scenes (the DINOv2 defaults are tuned for
# long runs on well-trained features and leave such students at chance); selection stays on the validation split.
CLS_LRS = "0.001,0.003,0.01,0.03,0.1,0.3,1,3,10"
DENSE_LRS = "0.01,0.03,0.1,0.3"
#: the demo's dense grid: 0.01 is dropped for time (the seeded study's 64 dense probes chose it once)
DEMO_DENSE_LRS = "0.03,0.1,0.3"
#: where each probe writes its result: ((method, artifacts, seed), probe label) → (result file, metric key)
ProbeResults = dict[tuple[tuple[str, bool, int], str], tuple[Path, str]]


def demo_budget(amp: str, steps: int | None = None, batch: int | None = None) -> tuple[int, int]:
    """``(steps, batch)`` of a demo run: 100 steps of 32 images with bf16, 60 in fp32 (a CPU without native bf16
    takes longer per step, :func:`mdistiller.engine.precision.native_bf16`); given values win. The whole demo stays
    within 15 minutes on 2 cores because its runs and probes go two at a time (:mod:`mdistiller.jobs`)."""
    return (steps if steps is not None else 100 if amp == "bf16" else 60), (batch if batch is not None else 32)


def probe_input_size(target: str, size: int) -> int:
    """The probe's image size for ``target``: the /14 DINOv2 teacher sees the student's token grid, as during
    distillation (``size / 16 × 14`` px); every /16 model sees ``size``."""
    return size // 16 * 14 if "dinov2" in target else size


def probe_options(command: str, input_size: int, num_train: int, num_test: int, cache_dir: Path, seed: int = 0,
                  cls_epochs: int = 100, dense_epochs: int = 10, loss_size: int = 16,
                  dense_lrs: str = DENSE_LRS) -> dict[str, Any]:
    """The cached-probe keyword arguments of :func:`mdistiller.eval.probe` shared by the demo and the study
    (classification: CLS ⊕ mean patch, batch 32), for :func:`mdistiller.eval.probing.probe_job`."""
    options: dict[str, Any] = {"input_size": input_size, "protocol": "cached", "num_train": num_train,
                               "num_test": num_test, "cache_dir": str(cache_dir), "workers": 0, "seed": seed}
    if command == "transfer":
        return options | {"tokens": "cls+avg", "batch_size": 32, "epochs": cls_epochs,
                          "lrs": tuple(float(v) for v in CLS_LRS.split(","))}
    return options | {"epochs": dense_epochs, "loss_size": loss_size,
                      "lrs": tuple(float(v) for v in dense_lrs.split(","))}


def budget_overrides(args: StudySettings) -> list[str]:
    """The ``KEY VALUE`` overrides every run of the invocation shares: steps, batch, image size, precision and device
    (no periodic checkpoints; the teacher–student agreement once, at the end)."""
    return ["SOLVER.MAX_STEPS", str(args.steps), "SOLVER.BATCH_SIZE", str(args.batch), "DATASET.INPUT_SIZE",
            str(args.size), "SOLVER.AMP", args.amp, "LOG.CKPT_EVERY_STEPS", "0", "LOG.AGREEMENT_EVERY_STEPS",
            str(args.steps), "LOG.PROGRESS", "False", "EXPERIMENT.DEVICE", args.device]


def train_jobs(runs: Sequence[StudyRun], out: Path, budget: Sequence[str], device: str) -> list[Job]:
    """A training job (``mdistiller.engine.launch:main``) for every run of ``runs`` without
    ``OUT/runs/NAME/student.safetensors``, logging to ``OUT/logs/NAME.log``."""
    from mdistiller.jobs import Job

    jobs = []
    for run in runs:
        run_dir = out / "runs" / run.name
        if not (run_dir / "student.safetensors").exists():
            files, opts = run_config(run, budget)
            argv = ["--cfg", *map(str, files), "--run-dir", str(run_dir), "--device", device, *opts]
            jobs.append(Job(f"train {run.name}", "mdistiller.engine.launch:main", (argv,),
                            str(out / "logs" / f"{run.name}.log"), summary="wall time"))
    return jobs


def probe_jobs(args: StudySettings, runs: Sequence[StudyRun], out: Path) -> tuple[list[Job], ProbeResults]:
    """The probe jobs of ``runs`` and of the two references (the clean teacher and ViT-Ti at initialisation, first
    seed only) that have no current result yet, each after its run's training (depth after segmentation, whose
    features it reuses), and where every probe's result is written (done or not)."""
    from mdistiller.eval.table import current_result
    from mdistiller.jobs import Job

    seeds = args.seeds
    jobs: list[Job] = []
    targets = [(r.name, str(out / "runs" / r.name), (r.method, r.artifacts, r.seed), r.seed) for r in runs]
    targets += [(f"reference_{n}", t, (n, False, seeds[0]), seeds[0])  # context rows: the first seed only
                for n, t in (("teacher", "dinov2_small_imgfocus"), ("random_init", "random:vit_tiny"))]
    fingerprints: dict = {}  # run directory → its student's fingerprint, read once for all its probes
    results = {}  # (target key, probe label) -> (result file, metric)
    for name, target, key, seed in [] if args.no_probes else targets:
        for label, command, dataset, metric, _ in PROBES:
            if label not in args.probe_labels:
                continue
            size = probe_input_size(target, args.size)
            n_tr, n_te = ((args.fmnist_train, args.fmnist_test) if dataset == "fashion_mnist"
                          else (args.probe_train, args.probe_test))
            folder = out / "probes" / name
            result = folder / f"{dataset}_{command}.json"
            results[key, label] = result, metric
            if not current_result(result, fingerprints):  # not yet, or measured on a student the run no longer has
                options = {"dataset": dataset, "out": str(result),
                           **probe_options(command, size, n_tr, n_te, folder / f"cache_{dataset}", seed=seed)}
                jobs.append(Job(f"probe {name} {label}", "mdistiller.eval.probing:probe_job",
                                (target, command, options),
                                str(result.with_suffix(".log")),  # depth reuses segmentation's features
                                after=f"probe {name} toy seg mIoU" if command == "nyud" else f"train {name}"))
    return jobs, results


def order_jobs(jobs: Sequence[Job], matrix: Matrix, runs: Sequence[StudyRun], seeds: Sequence[int]) -> list[Job]:
    """``jobs`` teacher by teacher, the matrix's first methods first, then seed by seed (:meth:`Matrix.job_order`);
    a run's probes right after its training and the references after the first run, so an interrupted invocation
    leaves whole cells behind (a rerun resumes where it stopped)."""
    order = {run.name: matrix.job_order(run, seeds) for run in runs}
    first = min(order.values())
    return sorted(jobs, key=lambda job: order.get(job.name.split(" ")[1], first))


def progress(jobs: Sequence[Job], results: Mapping[object, object], runs: Sequence[StudyRun]
                 ) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((finished, total) trainings, (finished, total) probes)`` given the jobs still to run."""
    trainings = sum(1 for job in jobs if job.name.startswith("train "))
    return (len(runs) - trainings, len(runs)), (len(results) - (len(jobs) - trainings), len(results))
