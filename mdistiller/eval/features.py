"""Frozen-backbone features for the linear probes: which blocks, which tokens, with or without the final norm.

A :class:`FeatureSpec` says what a probe sees; a :class:`FeatureExtractor` computes it from images in ``[0, 1]``
with a frozen :class:`~mdistiller.models.ViTFeatures`; :func:`load_backbone` turns a command-line target (a
distilled run directory, a model name, or ``random:<name>``) into a frozen backbone plus a description of where
its weights came from (recorded in every result and used to key the feature caches).

Token layouts (``D`` = width, ``L`` = number of chosen blocks):

* ``cls``      the CLS token of each chosen block, concatenated: ``L·D`` (released SiNGER code: last block,
  no final norm);
* ``avg``      the mean patch token of each chosen block, concatenated: ``L·D``;
* ``cls+avg``  CLS of each chosen block ⊕ the mean patch token of the *last* chosen block: ``L·D + D``
  (exactly DINOv2's ``create_linear_input(use_avgpool=True)``);
* ``patch``    the patch-token grid of each chosen block, concatenated along channels, ``[L·D, h, w]``, plus
  the concatenated CLS tokens ``[L·D]`` (dense heads: segmentation uses the grid, depth grid ⊕ CLS).

Register tokens are never part of any layout (the split comes from :meth:`ViTFeatures.split`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdistiller.eval.heads import tokens_to_grid
from mdistiller.models import ViTFeatures, build_model, check_model_name, resolve_model_name

__all__ = ["TOKEN_LAYOUTS", "Backbone", "FeatureExtractor", "FeatureSpec", "load_backbone", "parse_layers"]

TOKEN_LAYOUTS = ("cls", "avg", "cls+avg", "patch")


def parse_layers(text: str | int | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """``"last"`` → ``(-1,)``, ``"last4"`` → ``(-4, -3, -2, -1)``, ``"8,11"`` → ``(8, 11)`` (negative: from the end)."""
    if isinstance(text, int):
        return (int(text),)
    if isinstance(text, list | tuple):
        return tuple(int(v) for v in text)
    t = str(text).strip().lower()
    if t == "last":
        return (-1,)
    if t.startswith("last") and t[4:].isdigit() and int(t[4:]) >= 1:
        n = int(t[4:])
        return tuple(range(-n, 0))
    try:
        out = tuple(int(v) for v in t.split(",") if v.strip())
    except ValueError:
        out = ()
    if not out:
        raise ValueError(f"layers '{text}' is not understood; use 'last', 'lastN' (e.g. last4) or indices like '8,11'.")
    return out


@dataclass(frozen=True)
class FeatureSpec:
    """What the probe sees: ``layers`` (block indices, negative from the end), ``final_norm``, ``tokens``."""

    layers: tuple[int, ...] = (-1,)
    final_norm: bool = True
    tokens: str = "cls"

    def __post_init__(self) -> None:
        if self.tokens not in TOKEN_LAYOUTS:
            raise ValueError(f"tokens '{self.tokens}' is not one of {', '.join(TOKEN_LAYOUTS)}; pick one of those.")
        if not self.layers:
            raise ValueError("a FeatureSpec needs at least one block index; pass layers='last'.")

    @property
    def dense(self) -> bool:
        """True for the patch-grid layout (segmentation / depth)."""
        return self.tokens == "patch"

    def resolve(self, depth: int) -> tuple[int, ...]:
        """Non-negative block indices for a ``depth``-block model, in the order given (duplicates are an error)."""
        out = tuple(i + depth if i < 0 else i for i in self.layers)
        if any(not 0 <= i < depth for i in out):
            raise ValueError(f"layers {list(self.layers)} fall outside the model's {depth} blocks; use 0..{depth - 1}.")
        if len(set(out)) != len(out):
            raise ValueError(f"layers {list(self.layers)} name the same block twice; list each block once.")
        return out

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-ready dict (``layers`` as a list), as recorded in caches and results."""
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d


@dataclass
class Backbone:
    """A frozen backbone plus where it came from.

    ``info`` holds ``source`` ("run_dir" | "model" | "random"), ``name``, ``timm_name``, ``weights`` and the
    number of parameters, and for a run directory ``student_fingerprint`` (the content hash of its
    ``student.safetensors``, :mod:`mdistiller.engine.fingerprint`; ``tools/lineval/table.py`` compares it with the
    run's current student); ``fingerprint`` identifies the weights (caches built from other weights are never
    reused); ``default_input_size`` is the run's training resolution, or 224 for a model name.
    """

    features: ViTFeatures
    info: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    default_input_size: int = 224
    label: str = ""


def _file_id(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_backbone(target: str | os.PathLike[str], *, seed: int = 0) -> Backbone:
    """Frozen backbone for ``target``: a run directory (``student.safetensors`` + its ``.json``), a model name
    (``build_model(name, pretrained=True)``; ``dinov2_small_imgfocus`` works offline) or ``random:<name>``
    (random init, seeded with ``seed``). Built with ``dynamic_img_size=True`` so any probe resolution works.
    """
    text = str(target)
    path = Path(text).expanduser()
    if path.is_dir():
        weights = path / "student.safetensors"
        meta_path = path / "student.safetensors.json"
        if not weights.is_file() or not meta_path.is_file():
            raise FileNotFoundError(
                f"run directory '{path}' has no student.safetensors(.json); pass a finished tools/train.py run "
                "directory or a model name such as dinov2_small_imgfocus."
            )
        meta = json.loads(meta_path.read_text())
        kwargs = dict(meta.get("create_kwargs") or {})
        kwargs.pop("dynamic_img_size", None)
        model = build_model(meta["model"], weights, num_classes=0, dynamic_img_size=True, **kwargs)
        from mdistiller.engine.fingerprint import student_fingerprint

        info = {"source": "run_dir", "run_dir": str(path.resolve()), "name": meta["model"],
                "timm_name": meta.get("timm_name"), "create_kwargs": meta.get("create_kwargs"),
                "weights": _file_id(weights), "student_fingerprint": student_fingerprint(weights)}
        default_size = int(kwargs.get("img_size") or 224)
        label = path.resolve().name
    else:
        random_init = text.startswith("random:")
        name = text.split(":", 1)[1] if random_init else text
        try:
            check_model_name(name)
        except KeyError:
            raise ValueError(
                f"'{text}' is neither a run directory nor a model name; pass a tools/train.py run directory, a "
                "model name (e.g. dinov2_small_imgfocus, vit_tiny) or random:<name>."
            ) from None
        if random_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = build_model(name, False, dynamic_img_size=True)
            info = {"source": "random", "name": name, "timm_name": resolve_model_name(name), "init_seed": seed}
        else:
            model = build_model(name, True, dynamic_img_size=True)
            info = {"source": "model", "name": name, "timm_name": resolve_model_name(name), "pretrained": True}
            if name == "dinov2_small_imgfocus":
                from mdistiller.models.assets import dinov2_small_weights

                info["weights"] = _file_id(Path(dinov2_small_weights()))
        default_size = 224
        label = text
    model.eval().requires_grad_(False)
    info["params"] = sum(p.numel() for p in model.parameters())
    feats = ViTFeatures(model).eval()
    info.update({"depth": feats.depth, "width": feats.width, "patch_size": feats.patch_size,
                 "num_prefix_tokens": feats.num_prefix, "has_cls": feats.has_cls})
    return Backbone(features=feats, info=info, fingerprint=_hash(info), default_input_size=default_size, label=label)


class FeatureExtractor(nn.Module):
    """Compute a :class:`FeatureSpec`'s features with a frozen backbone (no gradients, eval mode).

    ``forward(images [B, 3, H, W] in [0, 1])`` returns float32 tensors: ``{"feat": [B, dim]}`` for the global
    layouts, ``{"patch": [B, dim, h, w], "cls": [B, dim]}`` for ``patch`` (``"cls"`` only if the model has one).
    ``amp``: run the backbone under bf16 autocast on CUDA (DINOv2's eval does too); ignored on CPU.
    """

    def __init__(self, backbone: ViTFeatures, spec: FeatureSpec, amp: bool = True) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.spec = spec
        self.layers = spec.resolve(backbone.depth)
        self.amp = bool(amp)
        if spec.tokens in ("cls", "cls+avg") and not backbone.has_cls:
            raise ValueError(f"this model has no CLS token, so tokens='{spec.tokens}' is impossible; use 'avg'.")

    def train(self, mode: bool = True) -> FeatureExtractor:  # the backbone stays in eval mode
        """Set the training flag of this module while the backbone stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def dim(self) -> int:
        """Channels of ``feat`` (global layouts) or of ``patch``/``cls`` (dense layout)."""
        n, d = len(self.layers), self.backbone.width
        return n * d + (d if self.spec.tokens == "cls+avg" else 0)

    def grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The backbone's patch grid ``(h, w)`` for images of ``image_hw`` pixels."""
        return tuple(self.backbone.grid(tuple(image_hw)))  # type: ignore[return-value]

    def field_shapes(self, image_hw: tuple[int, int]) -> dict[str, tuple[int, ...]]:
        """Shape (without batch) of every output for images of ``image_hw`` pixels."""
        if not self.spec.dense:
            return {"feat": (self.dim,)}
        h, w = self.grid(image_hw)
        out: dict[str, tuple[int, ...]] = {"patch": (self.dim, h, w)}
        if self.backbone.has_cls:
            out["cls"] = (self.dim,)
        return out

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Float32 features of ``images`` in [0, 1] under ``no_grad`` (and bf16 autocast on CUDA with ``amp``),
        laid out as the class docstring says."""
        amp = self.amp and images.device.type == "cuda"
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            outs = self.backbone(images, self.layers, final_norm=self.spec.final_norm)
        grid = self.grid(images.shape[-2:])
        parts = [self.backbone.split(outs[i].float(), grid) for i in self.layers]
        tokens = self.spec.tokens
        if tokens == "cls":
            return {"feat": torch.cat([p.cls for p in parts], dim=-1)}
        if tokens == "avg":
            return {"feat": torch.cat([p.patches.mean(dim=1) for p in parts], dim=-1)}
        if tokens == "cls+avg":
            return {"feat": torch.cat([p.cls for p in parts] + [parts[-1].patches.mean(dim=1)], dim=-1)}
        out = {"patch": tokens_to_grid(torch.cat([p.patches for p in parts], dim=-1), grid)}
        if self.backbone.has_cls:
            out["cls"] = torch.cat([p.cls for p in parts], dim=-1)
        return out
