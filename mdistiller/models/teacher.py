"""``FrozenTeacher``: a teacher that is frozen for real: no gradient, no optimizer, no checkpoint."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .features import ViTFeatures, align_patch_grid

__all__ = ["FrozenTeacher"]


class FrozenTeacher(nn.Module):
    """A timm ViT in ``eval()`` with ``requires_grad_(False)``, its own input normalisation, blocks beyond the
    deepest needed one removed, optionally bf16 weights, and grid alignment to the student's patch grid.

    It is deliberately *not* registered as a submodule of a distiller, so it never enters DDP, an optimizer or a
    checkpoint. Its forward runs under ``torch.no_grad()`` (not ``inference_mode``: SiNGER re-enters block l+1
    with refined features and needs autograd through it, into the adapter only — the weights stay frozen).
    """

    def __init__(self, model: nn.Module, deepest_block: int, dtype: torch.dtype = torch.float32,
                 grid_align: str = "resize_input") -> None:
        super().__init__()
        self.net = ViTFeatures(model)
        depth = self.net.depth
        if not 0 <= deepest_block < depth:
            raise IndexError(f"deepest teacher block {deepest_block} out of range for a {depth}-block teacher.")
        self.full_depth = depth
        model.blocks = model.blocks[: deepest_block + 1]  # the teacher stops where the method stops
        if hasattr(model, "head"):
            model.reset_classifier(0)
        model.to(dtype)
        model.eval()
        model.requires_grad_(False)
        self.dtype = dtype
        self.grid_align = grid_align
        self.implant = None  # emulated artifacts (mdistiller.models.emulated.ArtifactImplant), if any
        self.train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:  # noqa: ARG002 - always eval
        """Always stays in eval mode, whatever ``mode`` says (dropout and drop-path stay off)."""
        return super().train(False)

    @property
    def blocks(self) -> nn.ModuleList:
        """The kept blocks (those up to the deepest block the method needs)."""
        return self.net.model.blocks

    @property
    def width(self) -> int:
        """Token width D of the teacher."""
        return self.net.width

    def input_for(self, images: torch.Tensor, student_grid: tuple[int, int] | None) -> torch.Tensor:
        """Resize the images so the teacher's grid equals ``student_grid`` (``grid_align == "resize_input"``), or,
        for ``"interpolate"``, to the nearest multiple of the teacher's patch size (tokens are resampled later)."""
        p = self.net.patch_size
        h, w = images.shape[-2:]
        if student_grid is not None and self.grid_align == "resize_input":
            size = (student_grid[0] * p, student_grid[1] * p)
        else:
            size = (max(1, round(h / p)) * p, max(1, round(w / p)) * p)
        if tuple(images.shape[-2:]) == size:
            return images
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, layers: Iterable[int], final_norm: bool = False,
                student_grid: tuple[int, int] | None = None) -> tuple[dict[int, torch.Tensor], tuple[int, int]]:
        """Block outputs (full token sequences, detached) and the teacher's patch grid."""
        x = self.input_for(images, student_grid).to(self.dtype)
        grid = self.net.grid(tuple(x.shape[-2:]))
        return self.net(x, layers, final_norm=final_norm), grid

    def to_student_grid(self, patches: torch.Tensor, grid: tuple[int, int],
                        student_grid: tuple[int, int]) -> torch.Tensor:
        """Patch tokens on the student's grid (bilinear resampling when the grids still differ)."""
        return align_patch_grid(patches, grid, student_grid)
