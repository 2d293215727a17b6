"""The study's experiments: the methods, the named matrices (:data:`MATRICES`) and the runs they train.

Every run is the demo setting (DINOv2-S/14 → ViT-Ti on toy scenes, 𝒟 = {8, 11}) with the same budget; only the
method, the teacher (clean, or with the persistent emulated artifacts of ``configs/demo/artifacts.yaml``) and the
seed change. A SiNGER method takes every ``SiNGER.*`` key and the L_KD reduction keys from its preset file
(:func:`mode_overrides`), so the study measures exactly what that preset trains. Plain data and config overrides
only: nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ACCEPTANCE_ONLY", "LADDER", "MATRICES", "METHODS", "ROOT", "Matrix", "StudyRun", "mode_overrides",
           "plan_runs", "run_config", "target_changes"]

ROOT = Path(__file__).resolve().parents[2]

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
_MODE_KEYS = ("DISTILLER.KD_REDUCTION", "DISTILLER.KD_CLS", "DISTILLER.LAYER_REDUCTION")


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
    # 600 steps: where the clamp's and SiNGER's toy classification leaves the random-init level (docs/study.md
    # gives the measurement: FitNet 30.8 / 33.0 / 33.5 at 100 / 300 / 600 steps, the clamp and SiNGER 93.5 / 96.0)
    "long": Matrix(("fitnet", "fitnet_clamp", "singer_scaled"), "Long arm: FitNet, clamp, SiNGER at a longer budget",
                   teachers=(True,), steps=600,
                   pairs=(("fitnet_clamp", "fitnet"), ("singer_scaled", "fitnet"), ("singer_scaled", "fitnet_clamp")),
                   paired_title="Paired differences (same seed, emulated-artifact teacher)"),
}


def target_changes(method: str) -> bool:
    """Whether ``method``'s L_KD target differs from the teacher (SiNGER's ``F̂``, the clamp control), so that its
    refinement numbers (:func:`refinement_run`) mean something."""
    return method.startswith(("singer", "scaled")) or method == "fitnet_clamp"


@dataclass(frozen=True)
class StudyRun:
    """One cell of a matrix: a method, its teacher (``artifacts``: the emulated-artifact teacher) and a seed."""

    method: str
    artifacts: bool
    seed: int

    @property
    def name(self) -> str:
        """The run's folder and ``EXPERIMENT.NAME``: ``METHOD[_artifacts]_sSEED``."""
        return f"{self.method}{'_artifacts' if self.artifacts else ''}_s{self.seed}"


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
