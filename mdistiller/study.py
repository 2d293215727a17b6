"""A seeded comparison at CPU scale: FitNet, ViTKD and three SiNGER modes × clean / emulated-artifact teacher × seeds.

Every run is the demo setting (DINOv2-S/14 → ViT-Ti on toy scenes, 𝒟 = {8, 11}) with the same budget; only the
method, the teacher (clean, or with the persistent emulated artifacts of ``configs/demo/artifacts.yaml``) and the
seed (initialisation, data order, probe split) change. The SiNGER modes take every ``SiNGER.*`` key and the L_KD
reduction keys from their preset file, so the study measures exactly what those presets train:

* ``singer_paper``: ``configs/imagenet/vit/singer.yaml`` (eq. 9-12, cosine Gram, raw units, λ = 1);
* ``singer_released``: ``configs/imagenet/vit/singer_official.yaml`` (the released code's choices);
* ``singer_scaled``: ``configs/imagenet/vit/singer_scaled.yaml`` (the scale-aware mode).

Probes (cached protocol, frozen student): toy-scene classification / segmentation / depth and Fashion-MNIST
classification. :func:`summarize` gives mean ± std over seeds and, for each SiNGER mode, the paired difference to
FitNet (same seed, same teacher) with a two-sided 95 % Student-t interval. Everything is resumable: finished runs,
probes and refinement measurements are skipped when their files exist.

The named matrices (:data:`MATRICES`) are the experiments ``tools/study.py --matrix NAME`` runs: ``study`` (the
methods above), ``ladder`` (SiNGER's ablation ladder: FitNet → +units → +fixed clamp → +learned adapter with a random
basis → scale-aware SiNGER, each rung paired with the one below it) and ``long`` (FitNet, the clamp control and
scale-aware SiNGER on the artifact teacher at a budget where the classification probes leave the random-init level).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ACCEPTANCE_ONLY", "DEMO_DENSE_LRS", "LADDER", "MATRICES", "METHODS", "PROBES", "Matrix", "demo_budget",
           "figure", "mode_overrides", "native_bf16", "paired_interval", "plan_runs", "probe_argv", "probe_input_size",
           "refinement_run", "render_tables", "resolve_amp", "run_config", "StudyRun", "summarize", "target_changes",
           "write_section"]

ROOT = Path(__file__).resolve().parents[1]

#: method → (demo config, SiNGER preset whose mode keys are applied, extra KEY VALUE overrides)
METHODS: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "fitnet": ("configs/demo/fitnet.yaml", None, ()),
    "vitkd": ("configs/demo/vitkd.yaml", None, ()),
    "singer_paper": ("configs/demo/singer.yaml", "configs/imagenet/vit/singer.yaml", ()),
    "singer_paper_rawgram": ("configs/demo/singer.yaml", "configs/imagenet/vit/singer.yaml", ("SiNGER.GRAM", "raw")),
    "singer_released": ("configs/demo/singer.yaml", "configs/imagenet/vit/singer_official.yaml", ()),
    "singer_scaled": ("configs/demo/singer.yaml", "configs/imagenet/vit/singer_scaled.yaml", ()),
    # ablations of the scale-aware preset (one design choice reverted each)
    "scaled_gram_info": ("configs/demo/singer.yaml", "configs/imagenet/vit/singer_scaled.yaml", ("SiNGER.GRAM", "raw")),
    "scaled_kd_moves_adapter": ("configs/demo/singer.yaml", "configs/imagenet/vit/singer_scaled.yaml",
                                ("SiNGER.DETACH_TARGET", "False")),
    "scaled_adapter_lr_1x": ("configs/demo/singer.yaml", "configs/imagenet/vit/singer_scaled.yaml",
                             ("SiNGER.ADAPTER_LR_SCALE", "1.0")),
    # controls of the ablation ladder (docs/singer_modes.md): each config trains exactly what its file says
    "fitnet_scaled": ("configs/demo/fitnet_scaled.yaml", None, ()),
    "fitnet_clamp": ("configs/demo/fitnet_clamp.yaml", None, ()),
    "fitnet_mask": ("configs/demo/fitnet_mask.yaml", None, ()),
    "singer_random_init": ("configs/demo/singer_random_init.yaml", None, ()),
    "singer_no_info": ("configs/demo/singer_no_info.yaml", None, ()),
    "singer_no_outlier": ("configs/demo/singer_no_outlier.yaml", None, ()),
}
#: refinement-only runs (emulated-artifact teacher, first seed, no probes): the other Gram reading and the ablations
ACCEPTANCE_ONLY = ("singer_paper_rawgram", "scaled_gram_info", "scaled_kd_moves_adapter", "scaled_adapter_lr_1x")
#: SiNGER's four differences from FitNet taken one at a time: units, the clamped target, a learned adapter (random
#: basis), its nullspace initialisation
LADDER = ("fitnet", "fitnet_scaled", "fitnet_clamp", "singer_random_init", "singer_scaled")
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
_MODE_KEYS = ("DISTILLER.KD_REDUCTION", "DISTILLER.KD_CLS", "DISTILLER.LAYER_REDUCTION")
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclass(frozen=True)
class Matrix:
    """A named experiment: its methods, teachers (``False`` clean, ``True`` emulated artifacts), which differences
    are paired (``(method, reference)``; empty: every SiNGER mode against FitNet), its default budget, the
    refinement-only runs it adds, and the title of its report."""

    methods: tuple[str, ...]
    title: str
    teachers: tuple[bool, ...] = (False, True)
    pairs: tuple[tuple[str, str], ...] = ()
    steps: int = 100
    acceptance_only: tuple[str, ...] = ()
    paired_title: str = "Paired difference to FitNet (same seed and teacher)"
    #: methods trained (all seeds) before the others of the same teacher, so a partial run answers the main question
    first: tuple[str, ...] = ()

    def job_order(self, run: StudyRun, seeds: Sequence[int]) -> tuple:
        """Sort key of a run's jobs: teacher by teacher (in :attr:`teachers` order), :attr:`first` methods before
        the rest, then seed by seed."""
        return (self.teachers.index(run.artifacts) if run.artifacts in self.teachers else len(self.teachers),
                run.method not in self.first, list(seeds).index(run.seed) if run.seed in seeds else len(seeds),
                self.methods.index(run.method) if run.method in self.methods else len(self.methods))


MATRICES: dict[str, Matrix] = {
    "study": Matrix(("fitnet", "vitkd", "singer_paper", "singer_released", "singer_scaled"),
                    "Seeded study: does SiNGER help at this scale?", acceptance_only=ACCEPTANCE_ONLY),
    "ladder": Matrix(LADDER, "Ablation ladder: what carries scale-aware SiNGER's gain?", teachers=(True, False),
                     pairs=tuple(zip(LADDER[1:], LADDER[:-1])) + (("singer_scaled", "fitnet_clamp"),
                                                                   ("singer_scaled", "fitnet")),
                     paired_title="Each rung − the rung below it, then the learned adapter over the clamp and the "
                                  "whole ladder (same seed and teacher)",
                     first=("fitnet_clamp", "singer_scaled")),
    # 1000 steps: see docs/study.md for the measurement behind the budget
    "long": Matrix(("fitnet", "fitnet_clamp", "singer_scaled"), "Long arm: FitNet, clamp, SiNGER at a longer budget",
                   teachers=(True,), steps=1000,
                   pairs=(("fitnet_clamp", "fitnet"), ("singer_scaled", "fitnet"), ("singer_scaled", "fitnet_clamp")),
                   paired_title="Paired differences (same seed, emulated-artifact teacher)"),
}


def target_changes(method: str) -> bool:
    """Whether ``method``'s L_KD target differs from the teacher (SiNGER's ``F̂``, the clamp control), so that its
    refinement numbers (:func:`refinement_run`) mean something."""
    return method.startswith(("singer", "scaled")) or method == "fitnet_clamp"


@dataclass(frozen=True)
class StudyRun:
    method: str
    artifacts: bool
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}{'_artifacts' if self.artifacts else ''}_s{self.seed}"


def native_bf16() -> str:
    """How this CPU computes bf16: ``"amx"`` (AMX tiles), ``"avx512_bf16"`` (AVX512-BF16 dot products only) or ``""``.

    bf16 autocast made the demo's FitNet step (DINOv2-S/14 → ViT-Ti, batch 32, 96 px) 1.3–1.4× faster than fp32 on
    a 2-core AMD EPYC with AVX512-BF16 and no AMX (20 steps: 16.3 / 19.5 s against 22.6 / 24.8 s); the demo's
    older budget, 100 bf16 steps for the minutes of 60 fp32 steps, needs about 1.7×."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return ""
    return "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else ""


def demo_budget(amp: str, steps: int | None = None, batch: int | None = None) -> tuple[int, int]:
    """``(steps, batch)`` of a demo run: 100 steps of 32 images with bf16, 60 in fp32 (a CPU without native bf16
    takes longer per step, :func:`native_bf16`); given values win. The whole demo stays within 15 minutes on 2
    cores because its runs and probes go two at a time (:mod:`mdistiller.jobs`)."""
    return (steps if steps is not None else 100 if amp == "bf16" else 60), (batch if batch is not None else 32)


def resolve_amp(choice: str, device: str = "cpu") -> str:
    """``auto`` → ``bf16`` on CUDA and on CPUs that compute bf16 natively (:func:`native_bf16`), else ``none``
    (fp32); any other choice is returned unchanged."""
    if choice != "auto":
        return choice
    if device == "cuda":
        return "bf16"
    return "bf16" if native_bf16() else "none"


def mode_overrides(preset: str | Path) -> list[str]:
    """``KEY VALUE`` overrides setting every ``SiNGER.*`` key (but the layers) and the L_KD reduction keys to the
    values ``preset`` resolves to, so a demo config trains exactly that preset's loss."""
    from mdistiller.config import load_config

    cfg = load_config([Path(preset)], validate=False)
    pairs = [(f"SiNGER.{k}", v) for k, v in cfg.SiNGER.items() if k not in ("M_LAYERS", "LOSS")]
    pairs += [(f"SiNGER.LOSS.{k}", v) for k, v in cfg.SiNGER.LOSS.items()]
    pairs += [(k, cfg.DISTILLER[k.split(".")[1]]) for k in _MODE_KEYS]
    return [str(x) for kv in pairs for x in kv]


def plan_runs(methods: Sequence[str], seeds: Sequence[int], teachers: Sequence[bool] = (False, True)) -> list[StudyRun]:
    """Every (method, teacher, seed) cell, teacher by teacher and seed by seed in the given orders (the order the
    study runs them in: an interrupted study leaves whole seeds of its first teacher behind)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown study method(s) {unknown}; choose from {', '.join(METHODS)}.")
    return [StudyRun(m, a, s) for a in teachers for s in seeds for m in methods]


def run_config(run: StudyRun, budget: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Config files and overrides of one study run (``budget``: shared ``KEY VALUE`` overrides)."""
    demo, preset, extra = METHODS[run.method]
    files = [ROOT / demo] + ([ROOT / "configs/demo/artifacts.yaml"] if run.artifacts else [])
    opts = (mode_overrides(ROOT / preset) if preset else []) + list(extra)
    return files, opts + ["EXPERIMENT.NAME", run.name, "EXPERIMENT.SEED", str(run.seed), *budget]


def probe_input_size(target: str, size: int) -> int:
    """The probe's image size for ``target``: the /14 DINOv2 teacher sees the student's token grid, as during
    distillation (``size / 16 × 14`` px); every /16 model sees ``size``."""
    return size // 16 * 14 if "dinov2" in target else size


def probe_argv(command: str, input_size: int, num_train: int, num_test: int, cache_dir: Path, seed: int = 0,
               cls_epochs: int = 100, dense_epochs: int = 10, loss_size: int = 16,
               dense_lrs: str = DENSE_LRS) -> list[str]:
    """The cached-probe arguments shared by the demo and the study (classification: CLS ⊕ mean patch, batch 32)."""
    argv = ["--input-size", str(input_size), "--protocol", "cached", "--num-train", str(num_train),
            "--num-test", str(num_test), "--cache-dir", str(cache_dir), "--workers", "0", "--seed", str(seed)]
    if command == "transfer":
        return argv + ["--tokens", "cls+avg", "--batch-size", "32", "--epochs", str(cls_epochs), "--lrs", CLS_LRS]
    return argv + ["--epochs", str(dense_epochs), "--loss-size", str(loss_size), "--lrs", dense_lrs]


def refinement_run(run_dir: Path, images: Any, device: str = "cpu", q: float = 0.95) -> dict[int, dict[str, float]]:
    """``SiNGER.refinement_stats`` of a finished run on ``images`` at the α-quantile ``q`` (the paper's 0.95 for
    every mode, so the released preset's α = 0.97 does not move the yardstick); cached in
    ``RUN_DIR/refinement.json`` with the fingerprint of the student it measured, and recomputed when the run's
    ``student.safetensors`` is another (the run was overwritten or trained further)."""
    from mdistiller.engine.fingerprint import student_fingerprint, weights_fingerprint

    path = Path(run_dir) / "refinement.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("student_fingerprint") == student_fingerprint(run_dir) and "layers" in cached:
            return {int(k): v for k, v in cached["layers"].items()}
    from mdistiller.engine.trainer import load_run
    from mdistiller.fileio import atomic_write

    _, distiller = load_run(run_dir, device=device)
    stats = distiller.refinement_stats(images.to(device), q=q)
    record = {"student_fingerprint": weights_fingerprint(distiller.student.model.state_dict()), "q": q,
              "layers": stats}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    return stats


# ------------------------------------------------------------------------------------------------ statistics
def paired_interval(diffs: Sequence[float]) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided 95 % Student-t interval ``(mean, low, high)``.

    With one pair the interval is unbounded (``±inf``)."""
    n = len(diffs)
    if n == 0:
        raise ValueError("paired_interval needs at least one difference.")
    mean = statistics.fmean(diffs)
    if n == 1:
        return mean, -math.inf, math.inf
    half = T_95.get(n - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def summarize(values: dict[tuple[str, bool, int], dict[str, float]], probes: Sequence[str],
              baseline: str = "fitnet", paired_prefix: str = "singer",
              pairs: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """``values[(method, artifacts, seed)][probe] → number`` into per-cell mean/std, and the paired differences
    (same teacher and seed) of each ``(method, reference)`` in ``pairs`` — by default of the methods whose name
    starts with ``paired_prefix`` to ``baseline``. ``paired`` is keyed by ``(method, reference, artifacts)``."""
    cells: dict[tuple[str, bool], dict[str, list[float]]] = {}
    for (method, art, _seed), vals in sorted(values.items()):
        for p in probes:
            if p in vals:
                cells.setdefault((method, art), {}).setdefault(p, []).append(vals[p])
    table = {k: {p: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                 for p, v in d.items()} for k, d in cells.items()}
    if not pairs:
        pairs = sorted({(m, baseline) for m, _a, _s in values if m.startswith(paired_prefix)})
    paired: dict[tuple[str, str, bool], dict[str, list[float]]] = {}
    for method, reference in pairs:
        for (m, art, seed), vals in sorted(values.items()):
            base = values.get((reference, art, seed))
            if m != method or base is None:
                continue
            for p in probes:
                if p in vals and p in base:
                    paired.setdefault((method, reference, art), {}).setdefault(p, []).append(vals[p] - base[p])
    intervals = {k: {p: (*paired_interval(d), len(d)) for p, d in v.items()} for k, v in paired.items()}
    return {"cells": table, "paired": intervals}


def format_cell(mean: float, std: float, digits: int = 2) -> str:
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
    """One panel per probe: mean ± std over seeds per method, clean vs emulated-artifact teacher (the analysis
    figures' type sizes and resolution, :mod:`mdistiller.analysis.viz`)."""
    import matplotlib.pyplot as plt

    from mdistiller.analysis.viz import save_figure, style

    with style():
        fig, axes = plt.subplots(1, len(probes), figsize=(3.3 * len(probes), 3.4), squeeze=False)
        width = 0.38
        for ax, (p, higher) in zip(axes[0], probes):
            for k, (art, color) in enumerate(((False, "#4c72b0"), (True, "#dd8452"))):
                xs, ms, ss = [], [], []
                for i, m in enumerate(methods):
                    cell = summary["cells"].get((m, art), {}).get(p)
                    if cell:
                        xs.append(i + (k - 0.5) * width)
                        ms.append(cell[0])
                        ss.append(cell[1])
                ax.bar(xs, ms, width, yerr=ss, color=color, capsize=2,
                       label="emulated artifacts" if art else "clean teacher")
            ax.set_xticks(range(len(methods)))
            ax.set_xticklabels([m.replace("singer_", "S-") for m in methods], rotation=35, ha="right")
            ax.set_title(f"{p} {'↑' if higher else '↓'}")
        axes[0][0].legend()
        fig.suptitle(title)
        fig.tight_layout()
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
