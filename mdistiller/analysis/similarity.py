"""Representation-similarity measures: Gram matrices, Gram distance, linear CKA, patch-wise cosine (§4.3–4.5).

Conventions: a feature map is ``F ∈ R^{n×d}`` (``n`` tokens as rows, usually patch tokens only), optionally with
leading batch dimensions ``[B, n, d]``; every "per image" result has one value per leading index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "gram",
    "gram_distance",
    "linear_cka",
    "linear_cka_per_image",
    "patch_cosine",
    "summary",
]


def _check_tokens(name: str, f: torch.Tensor) -> None:
    if not isinstance(f, torch.Tensor) or f.ndim < 2:
        shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
        raise ValueError(f"{name} must be a tensor of shape [..., n, d] (tokens as rows), got {shape}.")


def gram(f: torch.Tensor, normalize: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """Gram matrix ``G(F) = F Fᵀ ∈ R^{n×n}`` of a feature map ``F [..., n, d]`` (eq. 11, Table 5b).

    With ``normalize=True`` the rows are first scaled to unit ℓ2 norm, giving the cosine-similarity Gram
    (each entry in ``[-1, 1]``, diagonal 1) that the paper's Figure 5 visualises.
    """
    _check_tokens("F", f)
    if normalize:
        f = f / f.norm(dim=-1, keepdim=True).clamp_min(eps)
    return f @ f.transpose(-1, -2)


def gram_distance(fa: torch.Tensor, fb: torch.Tensor, normalize: bool = False, per_entry: bool = False) -> torch.Tensor:
    """Gram distance ``D_G(F_a, F_b) = ‖G(F_a) − G(F_b)‖_F`` per image (§4.5, Table 5b; "GD" of Table 2).

    ``fa [..., n, da]`` and ``fb [..., n, db]`` must have the same tokens (``n``) but may differ in width, since
    Gram matrices are ``n×n`` — so teacher and student features compare directly. Returns a scalar for
    ``[n, d]`` inputs and one value per image (``[B]``) for ``[B, n, d]``. Computed in float64.

    ``normalize=True`` uses cosine Grams (:func:`gram`); ``per_entry=True`` divides by ``n`` (the RMS entry
    difference). The paper defines the raw form; its reported magnitudes (0.13–0.52 in Table 2) suggest a
    normalised variant, hence the options.
    """
    _check_tokens("Fa", fa)
    _check_tokens("Fb", fb)
    if fa.shape[:-1] != fb.shape[:-1]:
        raise ValueError(
            f"Fa {tuple(fa.shape)} and Fb {tuple(fb.shape)} must share batch and token dimensions [..., n]; "
            "pass the same images and the same token set (e.g. patch tokens only) for both."
        )
    diff = gram(fa.double(), normalize) - gram(fb.double(), normalize)
    dist = torch.linalg.matrix_norm(diff, ord="fro")
    if per_entry:
        dist = dist / fa.shape[-2]
    return dist


def _centre(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=-2, keepdim=True)


def linear_cka_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA per image for ``x [B, n, d1]``, ``y [B, n, d2]`` → ``[B]`` (see :func:`linear_cka`)."""
    if x.ndim != 3 or y.ndim != 3 or x.shape[:2] != y.shape[:2]:
        raise ValueError(
            f"linear_cka_per_image expects X [B, n, d1] and Y [B, n, d2] with matching B and n, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}."
        )
    xc, yc = _centre(x.double()), _centre(y.double())
    cross = torch.linalg.matrix_norm(yc.transpose(-1, -2) @ xc, ord="fro") ** 2
    nx = torch.linalg.matrix_norm(xc.transpose(-1, -2) @ xc, ord="fro")
    ny = torch.linalg.matrix_norm(yc.transpose(-1, -2) @ yc, ord="fro")
    return cross / (nx * ny)  # nan when either side has zero variance


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA (Kornblith et al., 2019; Table 2, Table 8) between ``X [n, d1]`` and ``Y [n, d2]``.

    Columns are centred over the ``n`` examples (tokens), then the feature-space formula is used:
    ``CKA = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)``, in float64. It is invariant to orthogonal transforms and isotropic
    scaling of either side, lies in ``[0, 1]``, and is ``nan`` when one side is constant. ``[B, n, d]`` inputs
    are handled per image (returns ``[B]``, like :func:`linear_cka_per_image`).
    """
    if x.ndim == 3 and y.ndim == 3:
        return linear_cka_per_image(x, y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"linear_cka expects X [n, d1] and Y [n, d2] with the same n (rows = examples), got "
            f"{tuple(x.shape)} and {tuple(y.shape)}."
        )
    return linear_cka_per_image(x[None], y[None])[0]


def patch_cosine(fa: torch.Tensor, fb: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-image mean over patches of ``cos(F_a,i, F_b,i)`` (Table 3, §4.4).

    ``fa`` and ``fb`` are ``[B, P, d]`` (→ ``[B]``) or ``[P, d]`` (→ scalar) with identical shapes; pass patch
    tokens only. Summarise the per-image values over a dataset with :func:`summary` (μ, σ, median of Table 3).
    """
    _check_tokens("Fa", fa)
    if fa.shape != fb.shape:
        raise ValueError(
            f"patch_cosine needs features of identical shape, got {tuple(fa.shape)} and {tuple(fb.shape)}; "
            "project the student to the teacher width first."
        )
    cos = torch.nn.functional.cosine_similarity(fa.double(), fb.double(), dim=-1, eps=eps)
    return cos.mean(dim=-1)


def summary(values: torch.Tensor | Sequence[float]) -> dict[str, float]:
    """``{mean, std, median}`` of per-image values (Table 3, Table 5b "mean ± std, median").

    ``std`` is the sample standard deviation (``n − 1``; 0 for a single value); ``median`` interpolates
    between the two middle values for an even count (numpy's default).
    """
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("summary() got no values; pass at least one per-image measurement.")
    std = v.std(unbiased=True).item() if v.numel() > 1 else 0.0
    return {
        "mean": v.mean().item(),
        "std": std if math.isfinite(std) else float("nan"),
        "median": torch.quantile(v, 0.5).item(),
    }
