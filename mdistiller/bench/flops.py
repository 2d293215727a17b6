"""The FLOP bound of one training step per image: teacher forward + student step + the method's own extras.

The ViT bricks (blocks, patch embedding, Grams) are in :mod:`mdistiller.models.flops`; each distiller counts its
own extras (``Distiller.extra_flops``).
"""

from __future__ import annotations

from collections.abc import Sequence

from mdistiller.models.flops import ViTShape, forward_flops

__all__ = ["method_flops"]


def method_flops(
    method: str,
    teacher: ViTShape,
    student: ViTShape,
    *,
    teacher_patches: int,
    student_patches: int,
    teacher_blocks: int,
    student_blocks: int,
    teacher_layers: Sequence[int] = (),
    **options,
) -> dict[str, int]:
    """FLOP bound per image of one training step: ``{"teacher", "student", "extras", "total"}``.

    ``method`` is a distiller name (``FitNet``, ``ViTKD``, ``SiNGER``; case-insensitive), ``student`` (no
    distillation: the student step alone) or ``teacher`` (teacher forward alone). ``teacher_blocks`` /
    ``student_blocks`` are the numbers of blocks actually run (deepest used index + 1); ``teacher_layers`` are the
    distillation layers 𝒟 (their last entry is the final one; for ViTKD the ones before it are the mimicked
    layers). ``options`` go to the method's ``extra_flops`` (a built distiller gives them with
    ``flops_options()``: ``kd_cls`` (a CLS token in L_KD; ViTKD ignores it); SiNGER adds ``rank`` and ``info``, its
    built L_info part from :mod:`mdistiller.distillers.singer_parts`, or None without L_info). Without a built
    distiller, SiNGER's ``info`` may be a ``SiNGER.INFO`` name, then read with ``use_info``, ``gram`` and
    ``info_fraction``; options a method does not know are ignored.
    """
    from mdistiller.distillers import DISTILLERS

    kind = method.lower()
    t_fwd = forward_flops(teacher, teacher_patches, teacher_blocks)
    s_train = 3 * forward_flops(student, student_patches, student_blocks)
    if kind == "teacher":
        return {"teacher": t_fwd, "student": 0, "extras": 0, "total": t_fwd}
    if kind in ("student", "none"):
        return {"teacher": 0, "student": s_train, "extras": 0, "total": s_train}
    layers = list(teacher_layers)
    if not layers:
        raise ValueError(f"method '{method}' needs its distillation layers (teacher_layers) to count its extras.")
    if kind not in DISTILLERS or not DISTILLERS.get(kind).needs_teacher:
        raise ValueError(f"unknown method '{method}'; use FitNet, ViTKD, SiNGER, student or teacher.")
    extras = DISTILLERS.get(kind).extra_flops(teacher, student, teacher_patches=teacher_patches,
                                              student_patches=student_patches, layers=layers, **options)
    return {"teacher": t_fwd, "student": s_train, "extras": extras, "total": t_fwd + s_train + extras}
