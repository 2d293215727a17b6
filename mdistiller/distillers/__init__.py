"""Distillers (FitNet, ViTKD, SiNGER) over one ``Distiller`` base, selected by ``DISTILLER.TYPE``."""

from __future__ import annotations

from mdistiller.registry import Registry

from .base import Distiller, LayerPlan
from .fitnet import FitNet
from .layers import map_layers, normalize_layers
from .losses import feature_kd_loss, gram, gram_mse, outlier_loss
from .singer import SiNGER
from .supervised import Supervised
from .vitkd import ViTKD

DISTILLERS = Registry("distiller")
DISTILLERS.register("FitNet")(FitNet)
DISTILLERS.register("ViTKD")(ViTKD)
DISTILLERS.register("SiNGER")(SiNGER)
DISTILLERS.register("Supervised")(Supervised)

__all__ = [
    "DISTILLERS",
    "Distiller",
    "FitNet",
    "LayerPlan",
    "SiNGER",
    "Supervised",
    "ViTKD",
    "build_distiller",
    "feature_kd_loss",
    "gram",
    "gram_mse",
    "map_layers",
    "normalize_layers",
    "outlier_loss",
    "plan_layers",
    "weights_arg",
]


def plan_layers(cfg, teacher_depth: int, student_depth: int) -> LayerPlan:
    """The distillation layers 𝒟 and their student blocks for ``cfg`` (see ``DISTILLER.TEACHER_LAYERS``).

    FitNet/SiNGER: ``TEACHER_LAYERS`` (or ``SiNGER.M_LAYERS``) plus the teacher's last block, mapped by relative
    depth unless ``STUDENT_LAYERS`` is given. ViTKD: ``VITKD.MIMIC_LAYERS`` on both sides (the first blocks), plus
    last ↔ last for generation. Raises ``IndexError``/``ValueError`` with one sentence for bad indices.
    """
    kind = cfg.DISTILLER.TYPE.lower()
    if kind == "vitkd":
        mimic_t = normalize_layers(cfg.VITKD.MIMIC_LAYERS, teacher_depth - 1, "teacher (ViTKD mimic)")
        mimic_s = normalize_layers(cfg.VITKD.MIMIC_LAYERS, student_depth - 1, "student (ViTKD mimic)")
        return LayerPlan(mimic_t + [teacher_depth - 1], mimic_s + [student_depth - 1])
    base = list(cfg.DISTILLER.TEACHER_LAYERS) or list(cfg.SiNGER.M_LAYERS)
    teacher = normalize_layers(base + [teacher_depth - 1], teacher_depth)
    if cfg.DISTILLER.STUDENT_LAYERS:
        student = normalize_layers(cfg.DISTILLER.STUDENT_LAYERS, student_depth, "student")
        if len(student) != len(teacher):
            raise ValueError(
                f"DISTILLER.STUDENT_LAYERS {list(cfg.DISTILLER.STUDENT_LAYERS)} must give one distinct student block "
                f"for each teacher layer {teacher} (the teacher's last block is always included)."
            )
    else:
        student = map_layers(teacher, teacher_depth, student_depth)
    return LayerPlan(teacher, student)


def dataset_num_classes(cfg) -> int:
    """``DATASET.NUM_CLASSES``, or the dataset class's ``num_classes`` attribute when it is 0."""
    if cfg.DATASET.NUM_CLASSES:
        return int(cfg.DATASET.NUM_CLASSES)
    from mdistiller.dataset import DATASETS

    n = getattr(DATASETS.get(cfg.DATASET.TYPE), "num_classes", None)
    if not n:
        raise ValueError(
            f"dataset '{cfg.DATASET.TYPE}' does not declare its number of classes; set DATASET.NUM_CLASSES."
        )
    return int(n)


def weights_arg(value: str | bool) -> bool | str:
    """``DISTILLER.*_WEIGHTS`` → ``build_model``'s ``pretrained``: pretrained → True, random → False, else a path."""
    v = str(value)
    if v.lower() in ("pretrained", "true"):
        return True
    if v.lower() in ("random", "false", "", "none"):
        return False
    return v


def build_distiller(cfg, device=None) -> Distiller:
    """Build teacher, student and the distiller named by ``cfg.DISTILLER.TYPE`` (validated layers and rank)."""
    import torch

    from mdistiller.models import FrozenTeacher, build_model

    d = cfg.DISTILLER
    size = int(cfg.DATASET.INPUT_SIZE)
    strict = bool(d.STRICT_WEIGHTS)
    student = build_model(d.STUDENT, weights_arg(d.STUDENT_WEIGHTS), img_size=size, strict=strict,
                          **dict(d.STUDENT_KWARGS))
    kind = d.TYPE.lower()
    if kind == "supervised":
        model = Supervised(student, num_classes=dataset_num_classes(cfg))
        return model.to(device) if device is not None else model
    teacher_model = build_model(d.TEACHER, weights_arg(d.TEACHER_WEIGHTS), dynamic_img_size=True, strict=strict,
                                **dict(d.TEACHER_KWARGS))
    plan = plan_layers(cfg, len(teacher_model.blocks), len(student.blocks))
    cuda = device is not None and torch.device(device).type == "cuda"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(d.TEACHER_DTYPE.lower(),
                                                                        torch.bfloat16 if cuda else torch.float32)
    deepest = max(plan.teacher) + (1 if kind == "singer" and len(plan.teacher) > 1 else 0)
    teacher = FrozenTeacher(teacher_model, min(deepest, len(teacher_model.blocks) - 1), dtype=dtype,
                            grid_align=d.GRID_ALIGN.lower())
    if d.ARTIFACTS.ENABLE:
        from mdistiller.analysis.emulated import implant_artifacts

        a = d.ARTIFACTS
        teacher.implant = implant_artifacts(teacher.net.model, int(a.LAYER), share=float(a.SHARE),
                                            scale=float(a.SCALE), direction=a.DIRECTION.lower(), seed=int(a.SEED),
                                            persist=bool(a.PERSIST))
    common = dict(kd_reduction=d.KD_REDUCTION.lower(), kd_cls=bool(d.KD_CLS),
                  layer_reduction=d.LAYER_REDUCTION.lower())
    if kind == "fitnet":
        model = FitNet(student, teacher, plan, feat_weight=cfg.FITNET.LOSS.FEAT_WEIGHT, **common)
    elif kind == "vitkd":
        v = cfg.VITKD
        model = ViTKD(student, teacher, plan, mask_ratio=v.MASK_RATIO, alpha=v.ALPHA, beta=v.BETA, **common)
    elif kind == "singer":
        s = cfg.SiNGER
        model = SiNGER(student, teacher, plan, rank=s.RANK, q=s.OUTLIER_Q, init=s.INIT.lower(),
                       basis=s.BASIS.lower(), null_thres=s.NULL_THRES, linearize_norm=s.LINEARIZE_NORM,
                       linearize_layerscale=s.LINEARIZE_LAYERSCALE, use_outlier=s.USE_OUTLIER, use_info=s.USE_INFO,
                       info=s.INFO.lower(), info_fraction=s.INFO_FRACTION, gram=s.GRAM.lower(),
                       scale=s.SCALE.lower(), info_patches=s.INFO_PATCHES.lower(),
                       adapter_lr_scale=s.ADAPTER_LR_SCALE, detach_target=s.DETACH_TARGET,
                       feat_weight=s.LOSS.FEAT_WEIGHT, outlier_weight=s.LOSS.OUTLIER_WEIGHT,
                       info_weight=s.LOSS.INFO_WEIGHT, seed=cfg.EXPERIMENT.SEED, **common)
    else:  # pragma: no cover - validate_config rejects unknown types first
        DISTILLERS.get(d.TYPE)
        raise AssertionError
    if device is not None:
        model.to(device)
    return model
