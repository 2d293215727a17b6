"""Per-block token features of a timm ViT, with CLS / register / patch tokens split correctly.

A :class:`ViTFeatures` wrapper owns the model's input normalisation (callers pass images in [0, 1]) and runs the
block loop itself so it can stop at the deepest block a method needs and hand back the *full* token sequence of
each requested block (SiNGER re-enters teacher block l+1 with refined patch tokens, so it needs the prefix too).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .zoo import model_mean_std

__all__ = ["TokenSplit", "ViTFeatures", "split_tokens", "align_patch_grid", "grid_of"]


@dataclass
class TokenSplit:
    """A block output split into its parts: ``cls [B, D] | None``, ``registers [B, R, D]``, ``patches [B, P, D]``."""

    cls: torch.Tensor | None
    registers: torch.Tensor
    patches: torch.Tensor
    grid: tuple[int, int]

    @property
    def prefix(self) -> torch.Tensor:
        """The prefix tokens ``[B, num_prefix, D]``: CLS (when present) followed by the registers."""
        parts = ([self.cls[:, None]] if self.cls is not None else []) + [self.registers]
        return torch.cat(parts, dim=1)


def split_tokens(tokens: torch.Tensor, num_prefix: int, has_cls: bool, grid: tuple[int, int]) -> TokenSplit:
    """Split ``[B, num_prefix + P, D]`` into CLS, registers and patches (never ``x[:, 1:]`` on register models)."""
    if tokens.shape[1] != num_prefix + grid[0] * grid[1]:
        raise ValueError(
            f"token count {tokens.shape[1]} does not equal {num_prefix} prefix + {grid[0]}×{grid[1]} patch tokens."
        )
    cls = tokens[:, 0] if has_cls else None
    registers = tokens[:, int(has_cls) : num_prefix]
    return TokenSplit(cls=cls, registers=registers, patches=tokens[:, num_prefix:], grid=grid)


def align_patch_grid(patches: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resample patch tokens ``[B, h·w, D]`` from grid ``src`` to ``dst`` (identity when equal)."""
    if tuple(src) == tuple(dst):
        return patches
    b, _, d = patches.shape
    x = patches.transpose(1, 2).reshape(b, d, src[0], src[1])
    x = F.interpolate(x.float(), size=dst, mode="bilinear", align_corners=False).to(patches.dtype)
    return x.reshape(b, d, dst[0] * dst[1]).transpose(1, 2)


def grid_of(model: nn.Module, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The patch grid a timm ViT produces for an image of ``image_hw`` pixels."""
    pe = model.patch_embed
    if hasattr(pe, "dynamic_feat_size"):
        return tuple(pe.dynamic_feat_size(image_hw))  # type: ignore[return-value]
    p = pe.patch_size
    return image_hw[0] // p[0], image_hw[1] // p[1]


class ViTFeatures(nn.Module):
    """A timm ``VisionTransformer`` with its own normalisation and a block loop that returns chosen block outputs.

    ``forward(images, layers, final_norm=False)`` → ``dict[layer, Tensor[B, N, D]]`` of raw residual-stream
    tokens after block ``layer`` (0-based), running the blocks only up to ``max(layers)``. ``final_norm=True``
    applies the model's final ``norm`` (DINOv2 probes, ViTKD's generation branch).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
            raise TypeError(f"{type(model).__name__} is not a timm VisionTransformer (no blocks/patch_embed).")
        self.model = model
        mean, std = model_mean_std(model)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    # ----------------------------------------------------------------------------------------- facts
    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return len(self.model.blocks)

    @property
    def width(self) -> int:
        """Token width D (the model's ``embed_dim``)."""
        return int(self.model.embed_dim)

    @property
    def num_prefix(self) -> int:
        """Number of tokens before the patch tokens (CLS + registers)."""
        return int(self.model.num_prefix_tokens)

    @property
    def has_cls(self) -> bool:
        """Whether the model has a CLS token."""
        return getattr(self.model, "cls_token", None) is not None

    @property
    def patch_size(self) -> int:
        """The (square) patch size in pixels."""
        return int(self.model.patch_embed.patch_size[0])

    def grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The patch grid ``(h, w)`` for images of ``image_hw`` pixels (:func:`grid_of`)."""
        return grid_of(self.model, image_hw)

    def split(self, tokens: torch.Tensor, grid: tuple[int, int]) -> TokenSplit:
        """Split one block output ``[B, N, D]`` into CLS, registers and patches (:func:`split_tokens`)."""
        return split_tokens(tokens, self.num_prefix, self.has_cls, grid)

    # ----------------------------------------------------------------------------------------- compute
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] normalised with the model's own mean and std."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise, patchify, add CLS/registers and positions: the input of block 0."""
        m = self.model
        x = m.patch_embed(self.normalize(images))
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        return m.norm_pre(x)

    def forward(
        self, images: torch.Tensor, layers: Iterable[int], final_norm: bool = False
    ) -> dict[int, torch.Tensor]:
        """``{block: tokens [B, N, D]}`` after each requested block (0-based, negative from the end), running
        the blocks only up to the deepest one; ``final_norm`` applies the model's final norm to each.
        """
        want = sorted({int(i) if i >= 0 else self.depth + int(i) for i in layers})
        if not want:
            return {}
        if want[0] < 0 or want[-1] >= self.depth:
            raise IndexError(f"block indices {want} out of range for a {self.depth}-block model.")
        x = self.embed(images)
        out: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.model.blocks[: want[-1] + 1]):
            x = blk(x)
            if i in want:
                out[i] = self.model.norm(x) if final_norm else x
        return out
