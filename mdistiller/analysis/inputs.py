"""Shared inputs of the analyses: image sets (scikit-image photos, held-out toy scenes), the model to analyse
(:class:`AnalysisModel`, with optional emulated artifacts), batched block tokens, and the emulated-artifact stamp
every report carries."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mdistiller.analysis.render import EMULATED_LABEL
from mdistiller.analysis.runs import is_run_dir, load_run_seeded
from mdistiller.distillers import weights_arg
from mdistiller.models.emulated import ArtifactImplant, implant_artifacts

#: scikit-image's bundled real photographs (no synthetic pictures, no binary masks, no duplicates such as ``cat``).
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "clock", "brick", "grass", "gravel",
    "cell", "hubble_deep_field", "immunohistochemistry", "retina", "page", "text", "microaneurysms",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- inputs
def _square(img: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop ``[3, H, W]`` to a square and resize it to ``size`` (bilinear, antialiased)."""
    _, h, w = img.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = img[:, top : top + s, left : left + s]
    return F.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def load_skimage_images(size: int, names: Sequence[str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """scikit-image's bundled photos (:data:`SKIMAGE_PHOTOS`, offline) as ``[B, 3, size, size]`` in ``[0, 1]``.

    Grey images are repeated over three channels, an alpha channel is dropped; each photo is centre-cropped to a
    square before resizing.
    """
    try:
        import skimage.data as skdata
    except ImportError as e:  # pragma: no cover - scikit-image is a dependency of the analysis extras
        raise ImportError("--images skimage needs scikit-image; run `pip install scikit-image`.") from e
    names = list(names or SKIMAGE_PHOTOS)
    out = []
    for name in names:
        loader = getattr(skdata, name, None)
        if loader is None:
            raise ValueError(f"scikit-image has no bundled image '{name}'; use one of {', '.join(SKIMAGE_PHOTOS)}.")
        arr = np.asarray(loader())
        if arr.dtype == bool:
            arr = arr.astype(np.float32)
        elif np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
        arr = np.clip(arr.astype(np.float32), 0.0, 1.0)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        arr = arr[..., :3]
        out.append(_square(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1), size))
    return torch.stack(out), names


def load_toy_images(
    size: int, num: int, split: str = "val", with_masks: bool = False
) -> tuple[torch.Tensor, list[str]] | tuple[torch.Tensor, list[str], torch.Tensor]:
    """``num`` procedural toy scenes of ``split`` (held-out ``val`` by default) at ``size`` px, ``[B, 3, S, S]``.

    With ``with_masks`` the segmentation masks ``[B, S, S]`` (0 = background) come as a third value.
    """
    from mdistiller.dataset import build_dataset

    if num < 1:
        raise ValueError(f"--num-images must be at least 1, got {num}.")
    ds = build_dataset("toy_scenes", split, root=None, input_size=size, train=False, num_images=num)
    items = [ds[i] for i in range(num)]
    images = torch.stack([it[0] for it in items])
    names = [f"toy_{split}_{i}" for i in range(num)]
    if with_masks:
        return images, names, torch.stack([it[1]["mask"] for it in items])
    return images, names


def load_images(source: str, size: int, num: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Images for a model-level analysis: ``"skimage"`` (real photos) or ``"toy"`` (held-out toy scenes)."""
    if source == "skimage":
        images, names = load_skimage_images(size)
        return (images[:num], names[:num]) if num else (images, names)
    if source == "toy":
        return load_toy_images(size, num or 16)  # type: ignore[return-value]
    raise ValueError(f"--images must be 'skimage' or 'toy', got '{source}'.")


@dataclass
class AnalysisModel:
    """A full-depth timm ViT prepared for analysis: ``model`` (eval, frozen), ``net`` (:class:`ViTFeatures`,
    own normalisation), a display ``label``, the emulated-artifact ``implant`` (or ``None``) and its ``source``."""

    model: nn.Module
    net: Any
    label: str
    source: str
    implant: ArtifactImplant | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def emulated(self) -> bool:
        """Whether artifacts were implanted into an artifact-free model (``implant`` is set)."""
        return self.implant is not None

    @property
    def depth(self) -> int:
        """The number of transformer blocks of ``model``."""
        return len(self.model.blocks)

    def snap(self, size: int) -> int:
        """The image side closest to ``size`` that is a multiple of the patch size (no dynamic padding)."""
        p = self.net.patch_size
        return max(1, round(size / p)) * p


def load_analysis_model(
    spec: str,
    weights: str = "pretrained",
    model_kwargs: Mapping[str, Any] | None = None,
    emulate: Mapping[str, Any] | None = None,
) -> AnalysisModel:
    """Build the model to analyse from a short/timm name or a run directory (its *teacher*, at full depth).

    ``weights``: ``pretrained`` | ``random`` | a weights file; ``model_kwargs`` go to
    :func:`mdistiller.models.build_model` (e.g. ``depth``). Both are ignored for a run directory, whose teacher is
    rebuilt by :func:`mdistiller.engine.load.load_run` exactly as trained (random-init teachers included: the
    run's seed is set first). ``emulate`` (``{"layer", "share", "scale", "direction", "seed"}``) implants emulated
    artifacts; a run trained with ``DISTILLER.ARTIFACTS.ENABLE`` keeps its own emulation unless ``emulate``
    replaces it.
    """
    from mdistiller.models import ViTFeatures, build_model

    kwargs = dict(model_kwargs or {})
    source = str(spec)
    implant = None
    if is_run_dir(spec):
        cfg, distiller = load_run_seeded(spec)  # the run's own (full-depth: 𝒟 holds the last block) frozen teacher
        name = cfg.DISTILLER.TEACHER
        model = distiller.teacher.net.model
        implant = distiller.teacher.implant
        if emulate is not None and implant is not None:
            implant.remove()
            implant = None
        label = f"{name} (teacher of {Path(spec).name})"
        info = {"name": name, "weights": str(cfg.DISTILLER.TEACHER_WEIGHTS),
                "kwargs": dict(cfg.DISTILLER.TEACHER_KWARGS), "run": str(spec)}
    else:
        name = spec
        label = name if weights_arg(weights) is True else f"{name} ({weights} weights)"
        model = build_model(name, weights_arg(weights), dynamic_img_size=True, **kwargs)
        model.reset_classifier(0)
        info = {"name": name, "weights": str(weights), "kwargs": kwargs}
    model.float().eval().requires_grad_(False)
    if emulate is not None:
        implant = implant_artifacts(model, int(emulate["layer"]), share=float(emulate.get("share", 0.03)),
                                    scale=float(emulate.get("scale", 10.0)),
                                    direction=str(emulate.get("direction", "principal")),
                                    seed=int(emulate.get("seed", 0)))
    return AnalysisModel(model=model, net=ViTFeatures(model).eval(), label=label, source=source, implant=implant,
                         info=info)


def stamp(am_or_flag: AnalysisModel | bool, implant_cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The emulated-artifact fields every report carries."""
    emulated = am_or_flag.emulated if isinstance(am_or_flag, AnalysisModel) else bool(am_or_flag)
    if isinstance(am_or_flag, AnalysisModel) and am_or_flag.implant is not None:
        implant_cfg = am_or_flag.implant.config
    return {"emulated_artifacts": emulated, "label": EMULATED_LABEL if emulated else None,
            "emulation": dict(implant_cfg) if emulated and implant_cfg else None}


@torch.no_grad()
def block_tokens(
    am: AnalysisModel, images: torch.Tensor, layers: Iterable[int], batch_size: int = 8
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """Full token sequences ``{layer: [B, N, d]}`` (float32, CPU) after the chosen blocks, in batches.

    Returns also the implanted-patch mask ``[B, P]`` when emulated artifacts are on (else ``None``).
    """
    layers = sorted(set(int(x) for x in layers))
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    masks = []
    for start in range(0, images.shape[0], batch_size):
        feats = am.net(images[start : start + batch_size], layers)
        for layer in layers:
            out[layer].append(feats[layer].float().cpu())
        if am.implant is not None and am.implant.last_mask is not None:
            masks.append(am.implant.last_mask.cpu())
    mask = torch.cat(masks) if masks and am.implant is not None else None
    return {layer: torch.cat(v) for layer, v in out.items()}, mask


def representative_layers(depth: int) -> list[int]:
    """Four layers spread like Figure 8's ``l = 5, 13, 17, 23`` of 24 blocks (``5/23, 13/23, 17/23, 1`` of depth)."""
    last = depth - 1
    return sorted({min(last, max(0, round(f * last))) for f in (5 / 23, 13 / 23, 17 / 23, 1.0)})


def default_layer(depth: int) -> int:
    """The paper's intermediate layer position (17 of 23 → ``floor(3/4 · (L − 1))``), kept below the last block."""
    return max(0, min(depth - 2, math.floor(0.75 * (depth - 1))))


def mean_of(e: torch.Tensor, m: torch.Tensor) -> float | None:
    """Mean of ``e`` over the boolean selection ``m`` (``None`` when nothing is selected)."""
    return e[m].mean().item() if m.any() else None
