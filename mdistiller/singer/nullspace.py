"""Left-nullspace of a block's linearised FFN (paper §3.2, Appendix A).

Row-vector convention throughout: a token is a row ``x ∈ R^{1×d}`` and a linear map acts as ``x @ W``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "linearize_ffn",
    "singular_spectrum",
    "null_basis",
    "principal_basis",
    "threshold_basis",
    "random_basis",
    "k_energy",
    "k_eps",
    "jacobian_null_basis",
]


def _ffn_linears(block: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    mlp = getattr(block, "mlp", None)
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    if not isinstance(fc1, nn.Linear) or not isinstance(fc2, nn.Linear):
        raise TypeError(
            f"block {type(block).__name__} has no `mlp.fc1`/`mlp.fc2` Linear layers; SiNGER's FFN linearisation "
            "(eq. 14) needs a timm ViT block with a plain two-layer MLP (gated MLPs such as SwiGLU are not supported)."
        )
    return fc1.weight, fc2.weight


@torch.no_grad()
def linearize_ffn(block: nn.Module, include_norm: bool = False, include_layerscale: bool = False) -> torch.Tensor:
    """Linear surrogate ``W̃ = W_FFN1 W_FFN2 ∈ R^{d×d}`` of a block's FFN (eq. 14).

    ``x @ W̃ ≈ block.mlp.fc2(block.mlp.fc1(x))`` with both biases and the activation removed. torch stores
    ``fc1.weight ∈ R^{h×d}`` and ``fc2.weight ∈ R^{d×h}``, so
    ``W̃ = fc1.weightᵀ fc2.weightᵀ = (fc2.weight fc1.weight)ᵀ``.

    The paper (and the released code) ignore the pre-FFN LayerNorm's scale γ and DeiT-III/DINOv2 LayerScale;
    ``include_norm`` folds ``diag(norm2.weight)`` in front and ``include_layerscale`` folds ``diag(ls2.gamma)``
    behind, as optional refinements (off by default = the paper).
    Computed in float32 on the weights' device; the result is detached.
    """
    w1, w2 = _ffn_linears(block)
    w = (w2.float() @ w1.float()).T  # [d, d]
    if include_norm:
        gamma = getattr(getattr(block, "norm2", None), "weight", None)
        if gamma is not None:
            w = gamma.float()[:, None] * w
    if include_layerscale:
        ls = getattr(getattr(block, "ls2", None), "gamma", None)
        if ls is not None:
            w = w * ls.float()[None, :]
    return w.detach()


def singular_spectrum(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors ``U`` (columns) and singular values ``σ₁ ≥ … ≥ σ_d`` of ``W`` (eq. 15), float64 SVD."""
    u, s, _ = torch.linalg.svd(w.double(), full_matrices=True)
    return u.to(w.dtype if w.dtype.is_floating_point else torch.float32), s.to(torch.float32)


def _check_rank_bound(rank: int, dim: int) -> None:
    """The library's own guard of the rank argument (the config key ``SiNGER.RANK`` is checked by
    ``SiNGER.check_config``)."""
    if not 1 <= rank <= dim:
        raise ValueError(f"rank {rank} must lie in [1, {dim}] (the feature width); lower the rank.")


def _check_rank(w: torch.Tensor, rank: int) -> None:
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"expected a square [d, d] matrix, got shape {tuple(w.shape)}.")
    _check_rank_bound(rank, w.shape[0])


def null_basis(w: torch.Tensor, rank: int) -> torch.Tensor:
    """Orthonormal ``Ñ ∈ R^{d×r}``: left singular vectors of ``W`` for its ``r`` smallest singular values (eq. 16).

    ``‖Ñᵀ W‖₂ = σ_{d−r+1}``: every row ``v ∈ span(Ñ)`` satisfies ``‖vᵀW‖ ≤ σ_{d−r+1}‖v‖`` (eq. 17).
    """
    _check_rank(w, rank)
    u, _ = singular_spectrum(w)
    return u[:, -rank:].contiguous().float()


def principal_basis(w: torch.Tensor, rank: int) -> torch.Tensor:
    """Left singular vectors for the ``r`` largest singular values (the principal basis ``P``, eq. 13, App. I)."""
    _check_rank(w, rank)
    u, _ = singular_spectrum(w)
    return u[:, :rank].contiguous().float()


def random_basis(
    dim: int, rank: int, generator: torch.Generator | None = None, orthonormal: bool = True
) -> torch.Tensor:
    """A random ``[d, r]`` basis: orthonormal columns (QR of a Gaussian) or, if not ``orthonormal``, unit-norm
    Gaussian columns (the released code's random init, Table 4 "Random")."""
    _check_rank_bound(rank, dim)
    g = torch.randn(dim, rank, generator=generator, dtype=torch.float64)
    if orthonormal:
        q, r = torch.linalg.qr(g)
        return (q * torch.sign(torch.diagonal(r))[None, :]).float()
    return (g / g.norm(dim=0, keepdim=True)).float()


def threshold_basis(
    w: torch.Tensor, rank: int, eps: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, int]:
    """The released code's basis rule (named option ``SiNGER.BASIS = "threshold"``).

    Candidates are the left singular vectors with ``σ < eps`` in SVD order (σ decreasing); the first ``r`` of
    them are taken, i.e. the *largest* σ below the threshold, not the r smallest of eq. 16. When fewer than ``r``
    exist, the rest are random unit-norm Gaussian columns (not orthogonalised), as released.
    Returns ``(basis [d, r], number of genuine null vectors)``.
    """
    _check_rank(w, rank)
    u, s = singular_spectrum(w)
    idx = torch.nonzero(s < eps).flatten()
    k = int(min(len(idx), rank))
    cols = [u[:, idx[:k]].float()]
    if k < rank:
        cols.append(random_basis(w.shape[0], rank - k, generator=generator, orthonormal=False))
    return torch.cat(cols, dim=1).contiguous(), k


def k_energy(singular_values: torch.Tensor, rho: float = 0.999) -> int:
    """``k_energy(ρ) = min{k : Σ_{i≤k} σ_i² / Σ_i σ_i² ≥ ρ}`` (eq. 18), 1-based."""
    if not 0.0 < rho < 1.0:
        raise ValueError(f"rho must lie in (0, 1), got {rho}.")
    e = torch.cumsum(singular_values.double() ** 2, 0)
    e = e / e[-1]
    return int(torch.nonzero(e >= rho - 1e-12)[0].item()) + 1


def k_eps(singular_values: torch.Tensor, eps: float = 0.05) -> tuple[int | None, int]:
    """First-crossing index ``k_ε = min{k : σ_k ≤ ε}`` (1-based) and tail size ``r_ε = d − k_ε + 1`` (eq. 19).

    Returns ``(None, 0)`` when no singular value is ≤ ε.
    """
    hits = torch.nonzero(singular_values <= eps).flatten()
    if len(hits) == 0:
        return None, 0
    k = int(hits[0].item()) + 1
    return k, len(singular_values) - k + 1


def jacobian_null_basis(
    block: nn.Module, tokens: torch.Tensor, rank: int, num_samples: int = 32, residual: bool = False
) -> torch.Tensor:
    """A Jacobian-based null basis of the *real* (non-linear) block (paper §5, Table 8 baseline).

    The token-local Jacobian ``J_i = ∂f(X)_i / ∂X_i`` is taken at ``num_samples`` tokens of ``tokens [B, N, d]``
    (mixing into other tokens through attention is ignored), where ``f(X) = block(X) − X`` is the block's update
    (``residual=False``, default: the skip connection passes every direction unchanged, so the full block has no
    null directions) or ``f = block`` (``residual=True``). In the row convention a perturbation ``δ`` moves the
    output by ``δ Jᵢᵀ``, with energy ``δ (Σ_i Jᵢᵀ Jᵢ) δᵀ``; the ``r`` eigenvectors of that Gram with the smallest
    eigenvalues are returned as orthonormal columns ``[d, r]``.
    """
    b, n, d = tokens.shape
    if not 1 <= rank <= d:
        raise ValueError(f"rank {rank} must lie in [1, {d}] (the feature width); lower the rank.")
    gen = torch.Generator().manual_seed(0)
    picks = torch.randperm(b * n, generator=gen)[:num_samples].tolist()
    x0 = tokens.detach().float()
    gram = torch.zeros(d, d, dtype=torch.float64)
    for flat in picks:
        bi, ti = divmod(flat, n)
        base = x0[bi : bi + 1]

        def token_fn(v: torch.Tensor, base: torch.Tensor = base, ti: int = ti) -> torch.Tensor:
            x = torch.cat([base[:, :ti], v[None, None], base[:, ti + 1 :]], dim=1)
            out = block(x)[0, ti]
            return out if residual else out - v

        jac = torch.autograd.functional.jacobian(token_fn, base[0, ti]).double()  # [d_out, d_in]
        gram += jac.T @ jac
    _, evecs = torch.linalg.eigh(gram / len(picks))  # ascending eigenvalues
    return evecs[:, :rank].float().contiguous()
