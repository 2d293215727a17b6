"""Subspace diagnostics: normalised subspace energy (App. I), adapter alignment (eq. 13, Table 5a)."""

from __future__ import annotations

import torch
from torch import nn

from mdistiller.singer.nullspace import null_basis, principal_basis

__all__ = [
    "subspace_energy",
    "alignment",
    "adapter_alignment",
    "norm_energy_correlation",
    "pearson",
]


def _check_basis(u: torch.Tensor, d: int | None = None) -> None:
    if u.ndim != 2 or u.shape[1] > u.shape[0]:
        raise ValueError(f"basis must be [d, r] with orthonormal columns and r <= d, got shape {tuple(u.shape)}.")
    if d is not None and u.shape[0] != d:
        raise ValueError(
            f"basis has {u.shape[0]} rows but the features have width {d}; build the basis from the same layer's "
            "weights (e.g. linearize_ffn of that teacher block)."
        )


def subspace_energy(x: torch.Tensor, u: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Normalised subspace energy ``E_U(p) = Σ_k ⟨x_p, u_k⟩² / (‖x_p‖² + ε)`` (App. I).

    ``x [..., d]`` (one token per row), ``u [d, r]`` with orthonormal columns → ``[...]`` values in ``[0, 1]``:
    the fraction of each token's energy captured by ``span(U)``, invariant to the token's norm.
    """
    _check_basis(u, x.shape[-1])
    xd = x.double()
    proj = xd @ u.to(device=x.device, dtype=torch.float64)
    return (proj**2).sum(-1) / ((xd**2).sum(-1) + eps)


def alignment(phi: torch.Tensor, basis: torch.Tensor) -> float:
    """Normalised Frobenius alignment ``E(φ) = ‖φ B‖_F / ‖φ‖_F`` of eq. 13.

    ``phi`` holds directions of ``R^d`` as rows, ``[r', d]`` — pass ``φ_up`` or ``φ_downᵀ``; a ``[d, r']`` matrix
    such as ``φ_down`` (first dimension ``d``, last not) is transposed automatically. ``basis [d, r]`` is
    orthonormal: ``P`` gives ``E_prob``, ``N`` gives ``E_safe``. The value lies in ``[0, 1]``; a random ``φ``
    scores about ``sqrt(r / d)``.
    """
    _check_basis(basis)
    d = basis.shape[0]
    if phi.ndim != 2:
        raise ValueError(f"phi must be a 2-D matrix [r, d] (rows in R^d), got shape {tuple(phi.shape)}.")
    if phi.shape[1] != d:
        if phi.shape[0] != d:
            raise ValueError(
                f"phi of shape {tuple(phi.shape)} has no dimension of size d={d} (the basis width); pass φ_up [r, d] "
                "or φ_downᵀ [r, d] of the adapter at the same layer as the basis."
            )
        phi = phi.T
    p = phi.detach().double()
    total = torch.linalg.matrix_norm(p, ord="fro")
    if total == 0:
        return float("nan")
    return (torch.linalg.matrix_norm(p @ basis.to(device=p.device, dtype=torch.float64), ord="fro") / total).item()


def adapter_alignment(adapter: nn.Module, w_tilde: torch.Tensor, r: int | None = None) -> dict:
    """``E_prob``/``E_safe`` (eq. 13) of a SiNGER adapter's ``φ_up`` and ``φ_downᵀ`` against ``W̃_{l+1}`` (Table 5a).

    ``adapter`` has ``down [d, r]`` and ``up [r, d]`` (:class:`mdistiller.singer.SiNGERAdapter`); ``w_tilde`` is the
    linearised FFN of the *next* teacher block (``linearize_ffn(teacher.blocks[l + 1])``, eq. 14). ``r`` is the
    rank of the principal basis ``P`` and null basis ``N`` (default: the adapter rank).

    Returns ``{"rank": r, "up": {"E_prob", "E_safe"}, "down_T": {"E_prob", "E_safe"}}``. At nullspace
    initialisation (eq. 8) both ``E_safe`` are 1 and both ``E_prob`` 0 (when ``2r <= d``).
    """
    down, up = getattr(adapter, "down", None), getattr(adapter, "up", None)
    if not isinstance(down, torch.Tensor) or not isinstance(up, torch.Tensor):
        raise TypeError(
            f"{type(adapter).__name__} has no `down`/`up` tensors; pass a SiNGERAdapter (φ_down [d, r], φ_up [r, d])."
        )
    d = down.shape[0]
    if w_tilde.shape != (d, d):
        raise ValueError(
            f"W̃ has shape {tuple(w_tilde.shape)} but the adapter width is {d}; pass linearize_ffn of the teacher "
            "block that follows the adapted layer."
        )
    r = int(down.shape[1]) if r is None else int(r)
    p_basis, n_basis = principal_basis(w_tilde, r), null_basis(w_tilde, r)
    out: dict = {"rank": r}
    for name, phi in (("up", up), ("down_T", down.T)):
        out[name] = {"E_prob": alignment(phi, p_basis), "E_safe": alignment(phi, n_basis)}
    return out


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two equal-length sequences (float64); ``nan`` if either is constant."""
    a, b = a.double().flatten(), b.double().flatten()
    if a.numel() != b.numel() or a.numel() < 2:
        raise ValueError(f"pearson needs two sequences of equal length >= 2, got {a.numel()} and {b.numel()}.")
    a, b = a - a.mean(), b - b.mean()
    denom = a.norm() * b.norm()
    return (a @ b / denom).item() if denom > 0 else float("nan")


def norm_energy_correlation(x: torch.Tensor, u: torch.Tensor, eps: float = 1e-12) -> float:
    """``corr(‖x_p‖₂, E_U(p))`` over patches (App. I, Figure 13 m–n).

    ``x [P, d]`` are one image's patch tokens (CLS and registers excluded); ``[..., P, d]`` pools all patches of
    all images. ``u [d, r]`` is ``U_prin`` or ``U_null`` of ``W̃_l``. A positive value means high-norm (outlier)
    patches lean toward ``span(U)``: the paper reports ``corr(‖F‖, E_null) > 0`` at ``l = 17`` and the signs
    flipped at ``l = 23`` for ViT-L.
    """
    if x.ndim < 2:
        raise ValueError(f"x must be patch tokens [P, d] (or [..., P, d]), got shape {tuple(x.shape)}.")
    tokens = x.reshape(-1, x.shape[-1])
    return pearson(tokens.double().norm(dim=-1), subspace_energy(tokens, u, eps))
