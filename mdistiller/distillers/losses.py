"""Loss terms shared by the distillers (paper eq. 1, 9-11)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["feature_kd_loss", "outlier_loss", "gram", "gram_mse", "inlier_mask", "masked_gram_mse", "norm_clamp",
           "token_mse"]


def feature_kd_loss(student: torch.Tensor, teacher: torch.Tensor, reduction: str = "token",
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Feature KD between projected student tokens and teacher tokens, both ``[B, N, D]`` (eq. 1, eq. 9).

    ``token`` (eq. 1): ``(1/n) Σ_i ‖F^T_i − P(F^S_i)‖²`` — squared L2 over channels, mean over tokens and images.
    ``element``: mean over every element (``F.mse_loss``; the released code), i.e. ``token`` divided by D.
    ``mask [B, N]``: the mean runs over the tokens where it holds only (:func:`token_mse`).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} tokens differ in shape.")
    if reduction not in ("token", "element"):
        raise ValueError(f"unknown KD reduction '{reduction}'; use 'token' or 'element'.")
    if mask is not None:
        loss = token_mse(student, teacher, mask)
        return loss if reduction == "token" else loss / student.shape[-1]
    diff = (student.float() - teacher.float()).pow(2)
    return diff.sum(-1).mean() if reduction == "token" else diff.mean()


def outlier_loss(patch_tokens: torch.Tensor, q: float) -> torch.Tensor:
    """L_outlier of eq. 10 on patch tokens ``[B, N, D]``.

    Per image, the threshold ``q_α`` is the ``q``-quantile of its patch norms (linear interpolation, detached);
    outliers are patches with norm strictly above it; the loss is the mean of ``(‖F̂_i‖ − q_α)²`` over all
    outlier patches of the batch (``1/|O|`` of eq. 10), and exactly 0 when there are none.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile q must lie in (0, 1), got {q}.")
    norms = patch_tokens.float().norm(dim=-1)  # [B, N]
    thresh = torch.quantile(norms.detach(), q, dim=1, keepdim=True)  # [B, 1]
    excess = (norms - thresh).clamp_min(0)  # 0 for inliers; branch-free: no host sync, one compiled graph
    count = (excess > 0).sum()
    return excess.pow(2).sum() / count.clamp_min(1)


def gram(tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Per-image Gram matrix ``G(F) = F Fᵀ`` of ``[B, N, D]`` tokens → ``[B, N, N]``.

    ``normalize=True`` uses row-normalised tokens (the cosine Gram), which compares directions only, so the
    information term does not fight the outlier term over norms (released code and our default for eq. 11).
    """
    f = tokens.float()
    if normalize:
        f = F.normalize(f, dim=-1)
    return f @ f.transpose(-1, -2)


def gram_mse(a: torch.Tensor, b: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``MSE(G(a), G(b))`` over all Gram entries (eq. 11)."""
    return (gram(a, normalize) - gram(b, normalize)).pow(2).mean()


def inlier_mask(patch_tokens: torch.Tensor, q: float) -> torch.Tensor:
    """Patches at or below their image's ``q``-quantile of ``‖F_i‖`` (the complement of 𝒪 in eq. 10), ``[B, N]``."""
    norms = patch_tokens.detach().float().norm(dim=-1)
    return norms <= torch.quantile(norms, q, dim=1, keepdim=True)


def norm_clamp(patch_tokens: torch.Tensor, q: float) -> torch.Tensor:
    """``F_i · min(1, q_α / ‖F_i‖)`` on patch tokens ``[B, N, D]``, ``q_α`` the per-image ``q``-quantile of the
    patch norms (eq. 10's threshold): patches above it are scaled down onto it, their direction kept; the others are
    returned unchanged, bit for bit. A fixed, parameter-free version of what L_outlier asks of SiNGER's ``F̂``."""
    norms = patch_tokens.float().norm(dim=-1, keepdim=True)  # [B, N, 1]
    thresh = torch.quantile(norms.squeeze(-1), q, dim=1, keepdim=True)[..., None]  # [B, 1, 1]
    scaled = (patch_tokens.float() * (thresh / norms.clamp_min(1e-12))).to(patch_tokens.dtype)
    return torch.where(norms > thresh, scaled, patch_tokens)


def masked_gram_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """``MSE(G(a), G(b))`` restricted to the patch pairs where ``mask [B, N]`` holds for both patches: the mean of
    the squared Gram differences over those pairs (eq. 11 on the masked patches; raw Gram unless ``normalize``)."""
    m = mask.float()
    diff = (gram(a, normalize) - gram(b, normalize)).pow(2)
    pairs = m[:, :, None] * m[:, None, :]
    return (diff * pairs).sum() / pairs.sum().clamp_min(1)


def token_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(1/|M|) Σ_{i∈M} ‖a_i − b_i‖²``: squared L2 over channels, mean over the patches where ``mask [B, N]`` holds
    (all patches without a mask) — L_info with no Gram, ``G(F) = F`` (the scale-aware mode's information term)."""
    diff = (a.float() - b.float()).pow(2).sum(-1)
    if mask is None:
        return diff.mean()
    m = mask.float()
    return (diff * m).sum() / m.sum().clamp_min(1)
