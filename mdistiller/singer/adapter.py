"""The SiNGER LoRA adapter ``F̂ = F + (F φ_down) φ_up`` (paper eq. 6-8)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SiNGERAdapter"]


class SiNGERAdapter(nn.Module):
    """Low-rank teacher-feature refinement (eq. 6): ``forward(x) = x + (x @ down) @ up`` on the last dim.

    Parameters ``down ∈ R^{d×r}`` (φ_down) and ``up ∈ R^{r×d}`` (φ_up), initialised from an orthonormal basis
    ``N ∈ R^{d×r}`` as ``down = N``, ``up = Nᵀ`` (eq. 7-8). With the nullspace basis of the next block's
    linearised FFN this biases the perturbation ``ΔF = F N Nᵀ`` (non-zero at init, unlike standard LoRA) toward
    directions the next block ignores. The random-init ablation (Table 4) passes a random basis instead
    (``SiNGER.INIT random``, ``mdistiller/distillers/singer_parts.py:RandomBasis``).
    """

    def __init__(self, basis: torch.Tensor) -> None:
        super().__init__()
        if basis.ndim != 2 or basis.shape[1] > basis.shape[0]:
            raise ValueError(f"basis must be [d, r] with r <= d, got shape {tuple(basis.shape)}.")
        basis = basis.detach().float().clone()
        self.down = nn.Parameter(basis)  # φ_down [d, r]
        self.up = nn.Parameter(basis.T.contiguous())  # φ_up [r, d]

    @property
    def dim(self) -> int:
        """``d``, the feature width."""
        return self.down.shape[0]

    @property
    def rank(self) -> int:
        """``r``, the adapter rank."""
        return self.down.shape[1]

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``ΔF = (F φ_down) φ_up`` (eq. 6)."""
        return (x @ self.down.to(x.dtype)) @ self.up.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``F̂ = F + ΔF`` (eq. 6)."""
        return x + self.delta(x)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, rank={self.rank}"
