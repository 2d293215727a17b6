"""Emulated-artifact teacher: implant controlled high-norm tokens into a ViT (a test bed for §3.1.1 / App. C).

Real high-norm artifacts (Darcet et al., 2024) appear in large, long-trained ViTs, in low-information
(background) patches, with norms several times the typical patch norm, and align with the leading left singular
vector of the weights (Wang et al., 2025; SiNGER §2). Small or random-init teachers have none, so SiNGER's
outlier term (eq. 10) has nothing to act on (App. C). :func:`implant_artifacts` emulates them with forward hooks
so that the whole pipeline (artifact table, layer rule, outlier loss, adapter) can be exercised on any timm ViT.
Results obtained with it must be labelled :attr:`ArtifactImplant.label` — they are not real artifacts.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import nn

from mdistiller.singer.nullspace import linearize_ffn, singular_spectrum

from .indices import normalize_layers

__all__ = ["ArtifactImplant", "implant_artifacts", "median", "patch_pixel_std", "artifact_direction"]

_DIRECTIONS = ("principal", "null", "random")


def median(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Median along ``dim``, interpolating the two middle values for an even count (numpy's convention)."""
    return torch.quantile(x.double(), 0.5, dim=dim)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def patch_pixel_std(images: torch.Tensor, patch_size: int | tuple[int, int]) -> torch.Tensor:
    """Per-patch pixel standard deviation ("local information"), ``[B, C, H, W] → [B, P]`` in row-major patch
    order (timm's token order). All channels and pixels of a patch are pooled; trailing pixels that do not fill a
    whole patch are ignored."""
    ph, pw = _pair(patch_size)
    cols = nnf.unfold(images.detach().float(), kernel_size=(ph, pw), stride=(ph, pw))  # [B, C·ph·pw, P]
    return cols.std(dim=1, unbiased=False)


def artifact_direction(model: nn.Module, layer: int, direction: str, seed: int = 0) -> torch.Tensor:
    """Unit vector ``u ∈ R^d`` along which artifacts are implanted after block ``layer``.

    ``"principal"``/``"null"``: the left singular vector of ``W̃`` (eq. 14–15) with the largest/smallest singular
    value, where ``W̃ = linearize_ffn(model.blocks[layer + 1])`` (the block that reads the artifacts), or of the
    block itself when ``layer`` is the last; its sign is fixed so the largest-magnitude entry is positive.
    ``"random"``: a seeded Gaussian unit vector. Returned as float32 on CPU.
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}.")
    blocks = model.blocks
    if direction == "random":
        gen = torch.Generator().manual_seed(int(seed))
        dim = int(getattr(model, "embed_dim", linearize_ffn(blocks[layer]).shape[0]))
        u = torch.randn(dim, generator=gen, dtype=torch.float64)
    else:
        src = blocks[layer + 1] if layer + 1 < len(blocks) else blocks[layer]
        vecs, _ = singular_spectrum(linearize_ffn(src).cpu())
        u = vecs[:, 0 if direction == "principal" else -1].double()
        if u[u.abs().argmax()] < 0:
            u = -u
    return (u / u.norm()).float()


class ArtifactImplant:
    """Handle for implanted artifacts (see :func:`implant_artifacts`): ``remove()`` detaches the hooks.

    Attributes: ``label`` (``"emulated artifacts"``; tag every result with it), ``config`` (the arguments),
    ``direction`` (the unit vector ``u``, CPU), ``last_mask`` (bool ``[B, P]``: implanted patches of the last
    batch), ``last_target`` (``[B]``: the norm given to them), ``last_std`` (``[B, P]``: patch pixel std).
    Usable as a context manager.
    """

    label = "emulated artifacts"

    def __init__(self, model: nn.Module, config: dict[str, Any], direction: torch.Tensor) -> None:
        self.model = model
        self.config = dict(config, label=self.label)
        self.direction = direction
        self.last_mask: torch.Tensor | None = None
        self.last_target: torch.Tensor | None = None
        self.last_std: torch.Tensor | None = None
        self._std: torch.Tensor | None = None
        self._handles: list[Any] = []

    # hooks ---------------------------------------------------------------------------------------------------
    def _capture(self, _mod: nn.Module, args: tuple) -> None:
        images = args[0] if args else None
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise RuntimeError(
                "emulated artifacts need the [B, C, H, W] image at model.patch_embed to rank patches by pixel std; "
                "run the whole model (forward / forward_features / forward_intermediates), not the blocks alone."
            )
        self._std = patch_pixel_std(images, self.model.patch_embed.patch_size)

    def _implant(self, _mod: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.ndim != 3:
            layer = self.config["layer"]
            raise TypeError(f"block {layer} returned {type(output).__name__}; expected [B, N, d] tokens.")
        if self._std is None:
            raise RuntimeError(
                f"block {self.config['layer']} ran without an image passing model.patch_embed first; emulated "
                "artifacts need the full model forward."
            )
        npt = int(getattr(self.model, "num_prefix_tokens", 0))
        prefix, patches = output[:, :npt], output[:, npt:]
        b, p, _ = patches.shape
        std = self._std.to(output.device)
        if tuple(std.shape) != (b, p):
            raise RuntimeError(
                f"the image gives {tuple(std.shape)} patches per batch but block {self.config['layer']} has "
                f"{(b, p)} patch tokens; use an image size divisible by the patch size (no dynamic padding)."
            )
        n_pick = min(p, max(int(self.config["min_patches"]), math.ceil(self.config["share"] * p - 1e-9)))
        order = torch.argsort(std, dim=1, stable=True)[:, :n_pick]  # lowest pixel std first, ties by position
        mask = torch.zeros(b, p, dtype=torch.bool, device=output.device)
        mask.scatter_(1, order, True)

        with torch.no_grad():
            x = patches.detach().double()
            u = self.direction.to(device=output.device, dtype=torch.float64)
            norms = x.norm(dim=-1)  # [B, P]
            target = self.config["scale"] * median(norms, dim=1)  # [B]
            # shift c ≥ 0 along u with ‖x + c u‖ = target:  c = −⟨x,u⟩ + sqrt(⟨x,u⟩² + target² − ‖x‖²)
            a = x @ u
            disc = a**2 + target[:, None] ** 2 - norms**2
            c = torch.where(disc >= a**2, -a + disc.clamp_min(0).sqrt(), torch.zeros_like(a))  # 0 if ‖x‖ ≥ target
            c = torch.where(mask, c, torch.zeros_like(c))
            shift = (c[..., None] * u).to(output.dtype)
        # self._std is kept (not cleared) so activation-checkpoint recomputation of the block sees the same ranking
        self.last_mask, self.last_target, self.last_std = mask, target.float(), std
        return torch.cat([prefix, patches + shift], dim=1)

    # lifecycle -----------------------------------------------------------------------------------------------
    def remove(self) -> None:
        """Detach both hooks; the model behaves as before."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._std = None

    def __enter__(self) -> ArtifactImplant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"ArtifactImplant({self.label!r}, {self.config})"


def implant_artifacts(
    model: nn.Module,
    layer: int,
    share: float = 0.02,
    scale: float = 10.0,
    direction: str = "principal",
    seed: int = 0,
    min_patches: int = 1,
    persist: bool = False,
) -> ArtifactImplant:
    """Turn a timm ViT into an *emulated-artifact teacher* by hooking block ``layer``.

    A forward pre-hook on ``model.patch_embed`` records each image's per-patch pixel std; a forward hook on
    ``model.blocks[layer]`` then picks, per image, the ``max(min_patches, ceil(share · P))`` patches with the
    lowest std (flat, background-like — where real artifacts live) and moves each along the unit direction ``u``
    (:func:`artifact_direction`: ``"principal"``, ``"null"`` or ``"random"``) by the ``c ≥ 0`` that makes its
    norm exactly ``scale ×`` the image's median patch norm at that layer (``x_p ← x_p + c·u``; a patch already
    above that norm is left alone). Prefix tokens (CLS and registers, ``model.num_prefix_tokens``) are never
    touched; later blocks carry the implanted tokens on naturally. No in-place ops, so gradients still flow
    through the tokens (the shift itself is a constant). Any batch size works.

    ``persist=True`` re-applies the implant after every later block too (same patches, same direction, each
    block's own median): small teachers tend to wash implanted tokens out within a few blocks (the offline
    DINOv2-S/14's last block removes them entirely), whereas the artifacts of large ViTs persist to the last
    layer (paper Fig. 10); persistence emulates that.

    Returns an :class:`ArtifactImplant`; call ``.remove()`` (or use ``with``) to restore the model.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "patch_embed"):
        raise TypeError(f"{type(model).__name__} has no `blocks`/`patch_embed`; pass a timm VisionTransformer.")
    depth = len(blocks)
    idx = normalize_layers(layer, depth, "model")[0]
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must lie in (0, 1] (the fraction of patches to implant), got {share}.")
    if not scale > 0:
        raise ValueError(f"scale must be positive (artifact norm as a multiple of the median), got {scale}.")
    if min_patches < 0:
        raise ValueError(f"min_patches must be >= 0, got {min_patches}.")
    u = artifact_direction(model, idx, direction, seed)
    config = {
        "layer": idx,
        "share": float(share),
        "scale": float(scale),
        "direction": direction,
        "seed": int(seed),
        "min_patches": int(min_patches),
        "persist": bool(persist),
    }
    implant = ArtifactImplant(model, config, u)
    implant._handles = [
        model.patch_embed.register_forward_pre_hook(implant._capture),
        *(blocks[i].register_forward_hook(implant._implant) for i in range(idx, depth if persist else idx + 1)),
    ]
    return implant
