"""Building a distiller from a config: the registry look-up, the teacher, and the checks against the architectures.

``build_distiller`` = student + (frozen, cut) teacher + ``DISTILLERS.get(TYPE).from_config``. The checks that need
the chosen architectures (layer indices, the method's own bounds, the artifact layer) live here too, beside the
code they protect, so ``mdistiller.config`` knows no layer above it (it runs them through a registered check).
"""

from __future__ import annotations

from mdistiller.registry import Registry

from .base import Distiller, LayerPlan
from .fitnet import FitNet
from .singer import SiNGER
from .supervised import Supervised
from .vitkd import ViTKD

__all__ = ["DISTILLERS", "build_distiller", "build_teacher", "check_config_against_models", "plan_layers",
           "weights_arg"]

DISTILLERS = Registry("distiller")
for _cls in (FitNet, ViTKD, SiNGER, Supervised):
    DISTILLERS.register(_cls.__name__)(_cls)


def plan_layers(cfg, teacher_depth: int, student_depth: int) -> LayerPlan:
    """The distillation layers 𝒟 and their student blocks for ``cfg`` (the method's own rule)."""
    return DISTILLERS.get(cfg.DISTILLER.TYPE).plan_layers(cfg, teacher_depth, student_depth)


def weights_arg(value: str | bool) -> bool | str:
    """``DISTILLER.*_WEIGHTS`` → ``build_model``'s ``pretrained``: pretrained → True, random → False, else a path."""
    v = str(value)
    if v.lower() in ("pretrained", "true"):
        return True
    if v.lower() in ("random", "false", "", "none"):
        return False
    return v


def build_teacher(cfg, teacher_model, deepest: int, device=None):
    """The :class:`FrozenTeacher` cut after block ``deepest``, in ``DISTILLER.TEACHER_DTYPE``, with the emulated
    artifacts of ``DISTILLER.ARTIFACTS`` implanted when enabled."""
    import torch

    from mdistiller.models import FrozenTeacher, implant_artifacts

    d = cfg.DISTILLER
    cuda = device is not None and torch.device(device).type == "cuda"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(d.TEACHER_DTYPE.lower(),
                                                                        torch.bfloat16 if cuda else torch.float32)
    teacher = FrozenTeacher(teacher_model, min(deepest, len(teacher_model.blocks) - 1), dtype=dtype,
                            grid_align=d.GRID_ALIGN.lower())
    if d.ARTIFACTS.ENABLE:
        a = d.ARTIFACTS
        teacher.implant = implant_artifacts(teacher.net.model, int(a.LAYER), share=float(a.SHARE),
                                            scale=float(a.SCALE), direction=a.DIRECTION.lower(), seed=int(a.SEED),
                                            persist=bool(a.PERSIST))
    return teacher


def build_distiller(cfg, device=None) -> Distiller:
    """Build student, teacher (when the method has one) and the distiller named by ``cfg.DISTILLER.TYPE``."""
    from mdistiller.models import build_model

    d = cfg.DISTILLER
    cls = DISTILLERS.get(d.TYPE)
    strict = bool(d.STRICT_WEIGHTS)
    student = build_model(d.STUDENT, weights_arg(d.STUDENT_WEIGHTS), img_size=int(cfg.DATASET.INPUT_SIZE),
                          strict=strict, **dict(d.STUDENT_KWARGS))
    teacher = plan = None
    if cls.needs_teacher:
        teacher_model = build_model(d.TEACHER, weights_arg(d.TEACHER_WEIGHTS), dynamic_img_size=True,
                                    strict=strict, **dict(d.TEACHER_KWARGS))
        plan = cls.plan_layers(cfg, len(teacher_model.blocks), len(student.blocks))
        teacher = build_teacher(cfg, teacher_model, cls.deepest_teacher_block(cfg, plan), device)
    model = cls.from_config(cfg, student, teacher, plan)
    return model.to(device) if device is not None else model


def check_config_against_models(cfg) -> None:
    """Checks that need no weights but the chosen classes and architectures: ``DISTILLER.TYPE``, the model names,
    layer indices in range for the teacher/student depth, the method's own checks (``Distiller.check_config``:
    e.g. every ``SiNGER.*`` key),
    the artifact layer. The models are built on the ``meta`` device (no memory, no download): well under a second.
    Raises :class:`mdistiller.config.ConfigError` with one sentence.
    """
    import torch

    from mdistiller.config import ConfigError
    from mdistiller.models import build_model, check_model_kwargs, check_model_name

    d = cfg.DISTILLER
    if d.TYPE not in DISTILLERS:
        raise ConfigError(f"unknown DISTILLER.TYPE '{d.TYPE}'; valid distillers: {', '.join(DISTILLERS.names())}.")
    cls = DISTILLERS.get(d.TYPE)
    for key, name in (("DISTILLER.TEACHER", d.TEACHER), ("DISTILLER.STUDENT", d.STUDENT)):
        try:
            check_model_name(str(name))
        except KeyError as e:
            raise ConfigError(f"{key}: {e.args[0]}") from None
        if key == "DISTILLER.TEACHER" and not cls.needs_teacher:
            continue  # no teacher is built
        try:
            check_model_kwargs(str(name), dict(d[key.split(".")[1] + "_KWARGS"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"{key}_KWARGS: {e.args[0]}") from None
    try:
        with torch.device("meta"):
            teacher = build_model(d.TEACHER, False, dynamic_img_size=True, **dict(d.TEACHER_KWARGS))
            student = build_model(d.STUDENT, False, img_size=int(cfg.DATASET.INPUT_SIZE), **dict(d.STUDENT_KWARGS))
    except Exception as e:  # noqa: BLE001 - timm's constructor errors (asserts, ZeroDivisionError, ...) as one sentence
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"teacher '{d.TEACHER}' or student '{d.STUDENT}' cannot be built at DATASET.INPUT_SIZE "
                          f"{cfg.DATASET.INPUT_SIZE} ({type(e).__name__}: {why}); check DISTILLER.TEACHER_KWARGS, "
                          "DISTILLER.STUDENT_KWARGS and DATASET.INPUT_SIZE.") from None
    t_depth, s_depth, width = len(teacher.blocks), len(student.blocks), int(teacher.embed_dim)
    size, patch = int(cfg.DATASET.INPUT_SIZE), int(student.patch_embed.patch_size[0])
    if size % patch:  # the teacher's input is resized to the student's grid (or to its own patch multiple)
        near = max(patch, round(size / patch) * patch)
        raise ConfigError(f"DATASET.INPUT_SIZE {size} is not a multiple of the patch size {patch} of student "
                          f"'{d.STUDENT}'; use a multiple of {patch}, e.g. {near}.")
    try:
        plan = cls.plan_layers(cfg, t_depth, s_depth)
    except (IndexError, ValueError) as e:
        # the message names its key itself
        named = str(e.args[0]).startswith(("DISTILLER.", "SiNGER.", "FITNET.", "VITKD."))
        raise ConfigError(e.args[0] if named else f"{cls.layer_keys}: {e.args[0]}") from None
    try:
        cls.check_config(cfg, width, plan)
    except ValueError as e:
        raise ConfigError(e.args[0]) from None
    if d.ARTIFACTS.ENABLE and not 0 <= d.ARTIFACTS.LAYER < t_depth - 1:
        raise ConfigError(
            f"DISTILLER.ARTIFACTS.LAYER {d.ARTIFACTS.LAYER} must lie in [0, {t_depth - 2}] for the "
            f"{t_depth}-block teacher '{d.TEACHER}' (later blocks must exist to carry the artifacts)."
        )
