"""Sub-layer change analysis of a ViT block (App. A.1, Figure 7): why SiNGER linearises only the FFN (eq. 14)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mdistiller.models.indices import normalize_layers

__all__ = ["instrument_block", "sublayer_changes", "sublayer_profile"]

_KEYS = ("delta_sa", "delta_ffn", "g_ffn1", "g_ffn2")


def _check_block(block: nn.Module) -> None:
    needed = ("norm1", "attn", "norm2", "mlp")
    missing = [name for name in needed if not hasattr(block, name)]
    mlp = getattr(block, "mlp", None)
    if missing or not all(hasattr(mlp, name) for name in ("fc1", "act", "fc2")):
        raise TypeError(
            f"{type(block).__name__} is not a pre-LN timm ViT Block (needs norm1, attn, norm2 and mlp.fc1/act/fc2); "
            "the App. A.1 decomposition supports timm's standard `Block` only."
        )


def instrument_block(block: nn.Module, x_in: torch.Tensor) -> dict[str, torch.Tensor]:
    """Re-apply a timm ``Block`` to ``x_in [B, N, d]`` keeping the App. A.1 intermediates.

    ``x_SA = x_in + ls1(attn(norm1(x_in)))``, ``h1 = norm2(x_SA)``, ``z1 = fc1(h1)``,
    ``a1 = mlp.norm(act(z1))`` (``mlp.norm`` is the identity in standard ViTs, so ``a1 = GELU(z1)`` as in the
    paper), ``z2 = fc2(a1)``, ``x_out = x_SA + ls2(z2)``. LayerScale (``ls1``/``ls2``, DeiT-III/DINOv2) is
    applied; drop-path and dropout are identities (the block is evaluated in ``eval`` mode and restored), so
    ``x_out`` equals ``block(x_in)`` in eval mode. Returns all tensors ``[B, N, ·]``.
    """
    _check_block(block)
    if x_in.ndim != 3:
        raise ValueError(f"x_in must be the block input [B, N, d], got shape {tuple(x_in.shape)}.")
    was_training = block.training
    block.eval()
    try:
        ls1 = getattr(block, "ls1", nn.Identity())
        ls2 = getattr(block, "ls2", nn.Identity())
        mlp = block.mlp
        x_sa = x_in + ls1(block.attn(block.norm1(x_in)))
        h1 = block.norm2(x_sa)
        z1 = mlp.fc1(h1)
        a1 = getattr(mlp, "norm", nn.Identity())(mlp.act(z1))
        z2 = mlp.fc2(a1)
        x_out = x_sa + ls2(z2)
    finally:
        block.train(was_training)
    return {"x_in": x_in, "x_sa": x_sa, "h1": h1, "z1": z1, "a1": a1, "z2": z2, "x_out": x_out}


def _ratio(num: torch.Tensor, den: torch.Tensor, eps: float) -> torch.Tensor:
    return num.double().norm(dim=-1) / den.double().norm(dim=-1).clamp_min(eps)


def sublayer_changes(
    block: nn.Module, x_in: torch.Tensor, num_prefix_tokens: int = 1, eps: float = 1e-12
) -> dict[str, torch.Tensor]:
    """Per-image relative changes and gains of a block's sub-layers (App. A.1, Figure 7).

    For each patch token (the first ``num_prefix_tokens`` — CLS and registers — are excluded), averaged over
    patches per image (→ ``[B]`` float64 each):

    * ``delta_sa  = ‖x_SA − x_in‖ / ‖x_in‖`` (Δ_SA), ``delta_ffn = ‖x_out − x_SA‖ / ‖x_SA‖`` (Δ_FFN),
    * ``g_ffn1 = ‖a1‖ / ‖h1‖`` (G_FFN1), ``g_ffn2 = ‖z2‖ / ‖a1‖`` (G_FFN2).

    ``Δ_FFN`` includes LayerScale ``ls2`` (it is the actual residual update); ``G_FFN2`` is the raw ``fc2`` gain.
    """
    if not 0 <= num_prefix_tokens < x_in.shape[1]:
        raise ValueError(
            f"num_prefix_tokens={num_prefix_tokens} leaves no patch tokens in an input of {x_in.shape[1]} tokens; "
            "pass model.num_prefix_tokens."
        )
    with torch.no_grad():
        t = {k: v[:, num_prefix_tokens:] for k, v in instrument_block(block, x_in).items()}
    return {
        "delta_sa": _ratio(t["x_sa"] - t["x_in"], t["x_in"], eps).mean(-1),
        "delta_ffn": _ratio(t["x_out"] - t["x_sa"], t["x_sa"], eps).mean(-1),
        "g_ffn1": _ratio(t["a1"], t["h1"], eps).mean(-1),
        "g_ffn2": _ratio(t["z2"], t["a1"], eps).mean(-1),
    }


@torch.no_grad()
def sublayer_profile(
    model: nn.Module, images: torch.Tensor, layers: int | Sequence[int] | None = None
) -> dict[int, dict[str, torch.Tensor]]:
    """:func:`sublayer_changes` for the chosen blocks of a timm ViT on a batch of images (App. A.1, Figure 7).

    Block inputs are captured with forward pre-hooks during one ``forward_features`` pass (in the model's current
    mode; use ``eval()``). Returns ``{layer: {"delta_sa", "delta_ffn", "g_ffn1", "g_ffn2": [B]}}``.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "forward_features"):
        raise TypeError(f"{type(model).__name__} has no `blocks`/`forward_features`; pass a timm VisionTransformer.")
    idx = normalize_layers(layers, len(blocks), "model")
    inputs: dict[int, torch.Tensor] = {}
    handles = []
    for i in idx:

        def grab(_mod: nn.Module, args: tuple, i: int = i) -> None:
            inputs[i] = args[0]

        handles.append(blocks[i].register_forward_pre_hook(grab))
    try:
        model.forward_features(images)
    finally:
        for h in handles:
            h.remove()
    npt = int(getattr(model, "num_prefix_tokens", 1))
    return {i: sublayer_changes(blocks[i], inputs[i], npt) for i in idx}
