"""SiNGER's named parts: the choices around the paper's path (eq. 6-12), each a small object built from the config.

``SiNGER.forward`` computes eq. 9-12 and asks its parts for what the config chose; every part's docstring says what
it changes relative to the paper, and every part reports its own extra FLOPs (``SiNGER.extra_flops`` sums them).

=====================  ==========================  =============================================================
part                   config key(s)               choices (the paper's first)
=====================  ==========================  =============================================================
adapter basis (eq. 8)  ``SiNGER.INIT``, ``BASIS``  :class:`SmallestBasis`, :class:`ThresholdBasis`, :class:`RandomBasis`
L_KD target (eq. 9)    ``SiNGER.DETACH_TARGET``    :class:`AttachedTarget`, :class:`DetachedTarget`
L_info (eq. 11)        ``SiNGER.INFO``             :class:`PaperInfo`, :class:`ReleasedInfo` (``USE_INFO false``: none)
G of eq. 11            ``SiNGER.GRAM``             :class:`CosineGram`, :class:`RawGram`, :class:`NoGram`
patches of eq. 11      ``SiNGER.INFO_PATCHES``     :class:`AllPatches`, :class:`InlierPatches`
units                  ``SiNGER.SCALE``            :class:`~.units.RawUnits`, :class:`~.units.MedianUnits`
=====================  ==========================  =============================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from mdistiller.models.flops import gram_flops
from mdistiller.singer import null_basis, random_basis, threshold_basis

from .losses import gram_mse, inlier_mask, masked_gram_mse, token_mse
from .units import SCALES

__all__ = ["AllPatches", "AttachedTarget", "BASES", "CHOICES", "CosineGram", "DetachedTarget", "GRAMS",
           "INFO_TERMS", "InlierPatches", "NoGram", "PATCHES", "PaperInfo", "RandomBasis", "RawGram", "ReleasedInfo",
           "SmallestBasis", "ThresholdBasis", "make_basis", "make_info"]


# ---------------------------------------------------------------------------------------------- adapter basis
class SmallestBasis:
    """The paper's basis (eq. 16): the left singular vectors of ``W̃`` for its ``r`` smallest singular values."""

    def __call__(self, weight: Callable[[], torch.Tensor], dim: int, rank: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, int | None]:
        """``(basis [d, r], None)`` from ``weight()`` = ``W̃`` of the source block (eq. 14)."""
        return null_basis(weight(), rank), None


class ThresholdBasis(SmallestBasis):
    """**Not the paper** (released code, ``SiNGER.BASIS threshold``): the first ``r`` singular directions with
    ``σ < ε`` in SVD order (the largest σ below ε), topped up with random unit-norm columns when fewer exist."""

    def __init__(self, eps: float) -> None:
        self.eps = float(eps)

    def __call__(self, weight: Callable[[], torch.Tensor], dim: int, rank: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, int | None]:
        """``(basis, number of genuine null vectors)``."""
        return threshold_basis(weight(), rank, self.eps, generator=generator)


class RandomBasis(SmallestBasis):
    """**Not the paper's method** (Table 4 "Random", ``SiNGER.INIT random``): unit-norm Gaussian columns (the
    released code's random init) in place of the nullspace; ``W̃`` is never computed."""

    def __call__(self, weight: Callable[[], torch.Tensor], dim: int, rank: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, int | None]:
        """``(random basis [d, r], None)``."""
        return random_basis(dim, rank, generator=generator, orthonormal=False), None


#: ``SiNGER.BASIS`` → the nullspace rule (``SiNGER.INIT nullspace``)
BASES: dict[str, Callable[[float], SmallestBasis]] = {"smallest": lambda eps: SmallestBasis(),
                                                     "threshold": ThresholdBasis}


def make_basis(init: str, basis: str, eps: float) -> SmallestBasis:
    """The basis part of ``SiNGER.INIT`` / ``BASIS`` / ``NULL_THRES``."""
    return RandomBasis() if init == "random" else BASES[basis](eps)


# ---------------------------------------------------------------------------------------------- L_KD target
class AttachedTarget:
    """The paper (eq. 9): ``F̂`` is the target as it is, so L_KD's gradient reaches the adapter too."""

    def __call__(self, f_hat: torch.Tensor) -> torch.Tensor:
        """``F̂`` itself."""
        return f_hat

    def flops(self) -> int:
        """No matmul of its own."""
        return 0


class DetachedTarget(AttachedTarget):
    """**Not the paper** (``SiNGER.DETACH_TARGET true``): L_KD sees ``F̂`` detached, so only L_outlier and L_info
    move the adapter (the student's loss cannot pull the target toward the student)."""

    def __call__(self, f_hat: torch.Tensor) -> torch.Tensor:
        """``F̂`` without its graph."""
        return f_hat.detach()


# ---------------------------------------------------------------------------------------------- G and patches of eq. 11
class CosineGram:
    """G of eq. 11 as the released code computes it (this default): the Gram of row-normalised tokens
    ``F̃ F̃ᵀ``, which compares directions only (**a reading**, not the literal ``F Fᵀ``)."""

    normalize = True

    def compare(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``MSE(G(a), G(b))`` over every patch pair, or over the pairs where ``mask [B, N]`` holds for both."""
        if mask is None:
            return gram_mse(a, b, normalize=self.normalize)
        return masked_gram_mse(a, b, mask, normalize=self.normalize)

    def flops(self, patches: int, width: int) -> int:
        """One Gram matrix of ``patches`` tokens (its backward counts as two more)."""
        return gram_flops(patches, width)


class RawGram(CosineGram):
    """G of eq. 11 read literally (``SiNGER.GRAM raw``): ``F Fᵀ`` as §4.4 defines it, in the features' units."""

    normalize = False


class NoGram(CosineGram):
    """**Not the paper** (``SiNGER.GRAM none``, the scale-aware preset): no Gram, the tokens themselves
    (``G(F) = F``): per-token squared error, mean over the chosen patches."""

    def compare(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``(1/|M|) Σ_{i∈M} ‖a_i − b_i‖²``."""
        return token_mse(a, b, mask)

    def flops(self, patches: int, width: int) -> int:
        """No matmul."""
        return 0


class AllPatches:
    """The paper: eq. 11 compares every patch (pair)."""

    def mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """No mask."""
        return None


class InlierPatches(AllPatches):
    """**Not the paper** (``SiNGER.INFO_PATCHES inliers``): eq. 11 compares only the patches at or below their
    image's α-quantile of ``‖F‖`` in the original features (the complement of eq. 10's outliers)."""

    def __init__(self, q: float) -> None:
        self.q = float(q)

    def mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """``[B, N]`` inliers of the original features ``x``."""
        return inlier_mask(x, self.q)


# ---------------------------------------------------------------------------------------------- L_info
class PaperInfo:
    """L_info of eq. 11: intermediate l: ``MSE(G(block_{l+1}([prefix, F̂_l])), G(block_{l+1}([prefix, F_l])))``
    (the second from the teacher pass, never recomputed; the gradient flows through the frozen block into the
    adapter only); final l: ``MSE(G(F̂_l), G(F_l))``; both in the owner's units, with the configured G and patches.

    ``fraction < 1`` (``SiNGER.INFO_FRACTION``, **not the paper**): block l+1 re-runs on the first ``ceil(f·B)``
    images of the local batch only — an unbiased estimate of eq. 11 at about ``f`` of its cost."""

    def __init__(self, gram: CosineGram | None = None, patches: AllPatches | None = None,
                 fraction: float = 1.0) -> None:
        self.gram = gram or CosineGram()
        self.patches = patches or AllPatches()
        self.fraction = float(fraction)

    def batch(self, batch: int) -> int:
        """Images of a local batch on which block l+1 re-runs (all of them unless ``fraction < 1``)."""
        return batch if self.fraction >= 1.0 else max(1, math.ceil(self.fraction * batch))

    def next_outputs(self, owner: Any, t: int, split: Any, f_hat: torch.Tensor, t_feats: dict[int, torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(block l+1 on [prefix, F̂_l], block l+1 on [prefix, F_l])`` on this part's share of the batch."""
        n = self.batch(f_hat.shape[0])
        return owner.next_block_on(t, split.prefix[:n], f_hat[:n]), t_feats[owner.plan.next_block(t)][:n]

    def compare(self, owner: Any, x_hat: torch.Tensor, x: torch.Tensor, unit: Any) -> torch.Tensor:
        """``MSE(G(x̂ / s), G(x / s))`` over the chosen patches (``s`` = 1 in the paper's units)."""
        x_hat, x = owner.feature_units.express(x_hat, unit), owner.feature_units.express(x, unit)
        return self.gram.compare(x_hat, x, self.patches.mask(x))

    def __call__(self, owner: Any, t: int, split: Any, f_hat: torch.Tensor, t_feats: dict[int, torch.Tensor],
                 tgrid: tuple[int, int], refined: dict[int, tuple], units: tuple) -> torch.Tensor:
        """L_info of layer ``t`` in the units ``(s_l, s_next)``."""
        if owner.plan.next_block(t) is None:
            return self.compare(owner, f_hat, split.patches, units[0])
        y_hat, y = self.next_outputs(owner, t, split, f_hat, t_feats)
        patches = owner.teacher.net.split
        return self.compare(owner, patches(y_hat, tgrid).patches, patches(y, tgrid).patches, units[1])

    def flops(self, layers: list[int], patches: int, width: int, block: int) -> int:
        """Intermediate: block l+1 forward + input gradient, a Gram with gradient and one without (× fraction);
        final: the two Grams."""
        grams = 3 * self.gram.flops(patches, width) + self.gram.flops(patches, width)
        inter = round(self.fraction * (2 * block + grams))
        return (len(layers) - 1) * inter + grams


class ReleasedInfo(PaperInfo):
    """**Not the paper** (released code, ``SiNGER.INFO official``): intermediate l: plain MSE of block l+1's full
    output on ``[prefix, F̂_l]`` vs on ``[prefix, F_l]`` (no Gram); final l: the cosine Gram of ``F̂_final``
    compared with that of the refined *intermediate* layer ``F̂_inter`` (needs an intermediate layer)."""

    def __init__(self, fraction: float = 1.0) -> None:
        super().__init__(CosineGram(), AllPatches(), fraction)

    def __call__(self, owner: Any, t: int, split: Any, f_hat: torch.Tensor, t_feats: dict[int, torch.Tensor],
                 tgrid: tuple[int, int], refined: dict[int, tuple], units: tuple) -> torch.Tensor:
        """The released L_info of layer ``t`` (the intermediate one divided by ``s_next²``)."""
        if owner.plan.next_block(t) is None:
            return gram_mse(f_hat, refined[owner.plan.teacher[-2]][1], normalize=True)
        y_hat, y = self.next_outputs(owner, t, split, f_hat, t_feats)
        return F.mse_loss(y_hat.float(), y.float()) / units[1] ** 2

    def flops(self, layers: list[int], patches: int, width: int, block: int) -> int:
        """Intermediate: block l+1 forward + input gradient (× fraction); final: two Grams with gradient."""
        inter = round(self.fraction * 2 * block)
        final = 2 * 3 * gram_flops(patches, width) if len(layers) > 1 else 4 * gram_flops(patches, width)
        return (len(layers) - 1) * inter + final


#: ``SiNGER.GRAM`` → G of eq. 11
GRAMS: dict[str, CosineGram] = {"cosine": CosineGram(), "raw": RawGram(), "none": NoGram()}
#: ``SiNGER.INFO_PATCHES`` → the patches eq. 11 compares (given α)
PATCHES: dict[str, Callable[[float], AllPatches]] = {"all": lambda q: AllPatches(), "inliers": InlierPatches}
#: ``SiNGER.INFO`` → the information term
INFO_TERMS = ("paper", "official")


def make_info(info: str = "paper", gram: str = "cosine", info_patches: str = "all", q: float = 0.95,
              fraction: float = 1.0) -> PaperInfo:
    """The L_info part of ``SiNGER.INFO`` / ``GRAM`` / ``INFO_PATCHES`` / ``INFO_FRACTION`` (α = ``q``)."""
    if info == "official":
        return ReleasedInfo(fraction)
    return PaperInfo(GRAMS[gram], PATCHES[info_patches](q), fraction)


#: the choices of every SiNGER key that selects a part (checked by ``SiNGER.check_config``)
CHOICES: dict[str, tuple[str, ...]] = {
    "SiNGER.INIT": ("nullspace", "random"),
    "SiNGER.BASIS": tuple(BASES),
    "SiNGER.INFO": INFO_TERMS,
    "SiNGER.GRAM": tuple(GRAMS),
    "SiNGER.SCALE": SCALES,
    "SiNGER.INFO_PATCHES": tuple(PATCHES),
}
