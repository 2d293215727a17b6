"""High-norm artifact statistics per layer and the distillation-layer rule (§3.1.1, §4.5, Table 7, App. C).

Only *patch* tokens are measured: CLS and register tokens (timm's ``num_prefix_tokens``) are split off by
:func:`extract_patch_tokens`, never by slicing ``x[:, 1:]`` (which would count registers as patches).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mdistiller.models.emulated import median
from mdistiller.models.indices import normalize_layers

__all__ = [
    "extract_patch_tokens",
    "patch_norms",
    "patch_norm_stats",
    "layer_artifact_table",
    "recommend_layers",
    "NO_ARTIFACTS_MESSAGE",
    "LAYER_RULE",
]

NO_ARTIFACTS_MESSAGE = "no artifacts found; SiNGER's outlier term has little to act on (App. C)"

LAYER_RULE = (
    "A layer is artifact-prone when its mean per-image max/median patch-norm ratio reaches `ratio_threshold` or "
    "its share of patches above `share_k` x the image's median norm reaches `share_threshold`. The onset is the "
    "first artifact-prone layer; SiNGER distils the final layer L plus the intermediate layer "
    "floor((onset + L) / 2), roughly midway between onset and end (ViT-L: onset after 11 -> 17, with 23; §4.5, "
    "Table 7). With no artifact-prone layer the default is floor(3/4 * L) plus L."
)


def patch_norms(patch_tokens: torch.Tensor) -> torch.Tensor:
    """ℓ2 norm of every patch token, ``[B, P, d] → [B, P]`` (float64)."""
    if patch_tokens.ndim != 3:
        raise ValueError(
            f"patch_tokens must be [B, P, d] (prefix tokens removed), got shape {tuple(patch_tokens.shape)}."
        )
    return patch_tokens.double().norm(dim=-1)


def patch_norm_stats(patch_tokens: torch.Tensor, k: Sequence[float] = (2, 4, 10)) -> dict[str, float]:
    """Patch-norm statistics of one layer (§3.1.1; Figure 6's distribution summarised).

    ``patch_tokens [B, P, d]`` (CLS/registers excluded). Per image: median, mean, max and ``max/median`` of the
    patch norms, then averaged over images (keys ``median``, ``mean``, ``max``, ``max_median_ratio``); the same
    over all patches of all images pooled (``pooled_*``). ``share_above_{k}x`` is the fraction of all patches
    whose norm exceeds ``k`` × its own image's median. Medians interpolate (numpy convention).
    """
    n = patch_norms(patch_tokens)
    if n.shape[1] == 0:
        raise ValueError("patch_tokens has no patches (P = 0); check the prefix-token split.")
    med = median(n, dim=1)
    mx = n.max(dim=1).values
    pooled = n.flatten()
    pooled_med = median(pooled, dim=0)
    stats: dict[str, float] = {
        "num_images": int(n.shape[0]),
        "num_patches": int(n.shape[1]),
        "median": med.mean().item(),
        "mean": n.mean(dim=1).mean().item(),
        "max": mx.mean().item(),
        "max_median_ratio": (mx / med).mean().item(),
        "pooled_median": pooled_med.item(),
        "pooled_mean": pooled.mean().item(),
        "pooled_max": pooled.max().item(),
        "pooled_max_median_ratio": (pooled.max() / pooled_med).item(),
    }
    for kk in k:
        stats[f"share_above_{kk:g}x"] = (n > kk * med[:, None]).double().mean().item()
    return stats


def layer_artifact_table(
    per_layer_patch_tokens: Mapping[int, torch.Tensor], k: Sequence[float] = (2, 4, 10)
) -> list[dict[str, float]]:
    """One :func:`patch_norm_stats` row per layer, sorted by layer, each with a ``layer`` key (§4.5 "inspecting
    teacher feature trends"). Input: ``{layer: patch_tokens [B, P, d]}`` as from :func:`extract_patch_tokens`."""
    if not per_layer_patch_tokens:
        raise ValueError("per_layer_patch_tokens is empty; pass {layer: patch tokens [B, P, d]} for one layer or more.")
    return [
        {"layer": int(layer), **patch_norm_stats(per_layer_patch_tokens[layer], k)}
        for layer in sorted(per_layer_patch_tokens)
    ]


def recommend_layers(
    table: Sequence[Mapping[str, float]],
    ratio_threshold: float = 4.0,
    share_threshold: float = 0.01,
    share_k: float = 4,
    depth: int | None = None,
) -> dict:
    """Choose SiNGER's distillation layers from an artifact table (§4.5 "Distillation Layers", Table 7; App. C).

    Rule (also in :data:`LAYER_RULE`): a layer is *artifact-prone* when ``max_median_ratio >= ratio_threshold``
    or ``share_above_{share_k}x >= share_threshold``. The *onset* is the first such layer. The final layer
    ``L`` (``depth - 1``, default the table's last layer) is always distilled; the intermediate layer is
    ``floor((onset + L) / 2)`` — for ViT-L, artifacts appear after block 11 and ``(11 + 23) // 2 = 17``, the
    paper's choice. If the onset is ``L`` itself, only ``L`` is returned. If nothing is artifact-prone the
    result says :data:`NO_ARTIFACTS_MESSAGE` and falls back to ``floor(3/4 · L)`` plus ``L`` (17 and 23 for ViT-L).

    Returns ``{"layers", "intermediate", "final", "onset", "artifact_layers", "artifacts_found", "reason",
    "rule", "thresholds"}``; layer indices are 0-based block indices, as in the table.
    """
    if not table:
        raise ValueError("the artifact table is empty; build it with layer_artifact_table() over at least one layer.")
    share_key = f"share_above_{share_k:g}x"
    rows = sorted(table, key=lambda row: row["layer"])
    for row in rows:
        if "max_median_ratio" not in row or share_key not in row:
            raise KeyError(
                f"table row for layer {row.get('layer')} lacks 'max_median_ratio' or '{share_key}'; build it with "
                f"layer_artifact_table(..., k=...) including {share_k:g} in k."
            )
    final = int(depth - 1 if depth is not None else rows[-1]["layer"])
    flagged = [
        int(row["layer"])
        for row in rows
        if row["max_median_ratio"] >= ratio_threshold or row[share_key] >= share_threshold
    ]
    out = {
        "rule": LAYER_RULE,
        "thresholds": {"ratio_threshold": ratio_threshold, "share_threshold": share_threshold, "share_k": share_k},
        "artifact_layers": flagged,
        "final": final,
    }
    if not flagged:
        inter = math.floor(0.75 * final)
        inter = inter if inter < final else None
        return {
            **out,
            "layers": [x for x in (inter, final) if x is not None],
            "intermediate": inter,
            "onset": None,
            "artifacts_found": False,
            "reason": f"{NO_ARTIFACTS_MESSAGE}; defaulting to about 3/4 depth plus the last layer.",
        }
    onset = flagged[0]
    inter = (onset + final) // 2
    inter = inter if inter < final else None
    reason = f"artifacts appear from layer {onset} on; distil " + (
        f"layer {inter} (midway between onset {onset} and the last layer) plus the last layer {final}."
        if inter is not None
        else f"only the last layer {final} (the onset leaves no intermediate layer)."
    )
    return {
        **out,
        "layers": [x for x in (inter, final) if x is not None],
        "intermediate": inter,
        "onset": onset,
        "artifacts_found": True,
        "reason": reason,
    }


@torch.no_grad()
def extract_patch_tokens(
    model: nn.Module,
    images: torch.Tensor,
    layers: int | Sequence[int] | None = None,
    return_prefix: bool = False,
) -> dict[int, torch.Tensor] | tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Block-output tokens of a timm ViT, split into patch and prefix (CLS + register) tokens.

    Uses ``model.forward_intermediates(images, indices=layers, return_prefix_tokens=True, output_fmt="NLC",
    norm=False, intermediates_only=True, stop_early=True)`` so timm's own ``num_prefix_tokens`` decides the split.
    ``layers`` are 0-based block indices (an int is one block, not timm's "last n"; negative counts from the
    end; ``None`` = all). Returns
    ``{layer: patch_tokens [B, P, d]}``, and with ``return_prefix`` also ``{layer: prefix_tokens [B, T, d]}``
    (``T = 0`` for models without prefix tokens). Runs under ``no_grad`` in the model's current mode (call
    ``model.eval()`` first for deterministic features); forward hooks on the model (e.g. emulated artifacts) apply.
    """
    if not hasattr(model, "forward_intermediates") or not hasattr(model, "blocks"):
        raise TypeError(
            f"{type(model).__name__} has no `forward_intermediates`/`blocks`; pass a timm VisionTransformer."
        )
    if images.ndim != 4:
        raise ValueError(f"images must be a [B, C, H, W] batch, got shape {tuple(images.shape)}.")
    idx = normalize_layers(layers, len(model.blocks), "model")
    outs = model.forward_intermediates(
        images,
        indices=idx,
        return_prefix_tokens=True,
        output_fmt="NLC",
        norm=False,
        intermediates_only=True,
        stop_early=True,
    )
    patches: dict[int, torch.Tensor] = {}
    prefixes: dict[int, torch.Tensor] = {}
    for layer, item in zip(idx, outs, strict=True):
        if isinstance(item, tuple):
            patch, prefix = item
        else:  # no prefix tokens: timm returns the patch tokens alone
            patch, prefix = item, item[:, :0]
        patches[layer], prefixes[layer] = patch, prefix
    return (patches, prefixes) if return_prefix else patches


def clean_vs_emulated_tables(model: nn.Module, images: torch.Tensor,
                             **implant: object) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Per-layer artifact tables of ``model`` on (normalised) ``images``: clean, then with emulated artifacts
    implanted by :func:`mdistiller.models.emulated.implant_artifacts` with ``implant`` (removed again after)."""
    from mdistiller.models.emulated import implant_artifacts

    layers = list(range(len(model.blocks)))
    clean = layer_artifact_table(extract_patch_tokens(model, images, layers))
    with implant_artifacts(model, **implant):  # type: ignore[arg-type]
        emulated = layer_artifact_table(extract_patch_tokens(model, images, layers))
    return clean, emulated


def clean_vs_emulated_markdown(clean: Sequence[Mapping[str, float]], emulated: Sequence[Mapping[str, float]]) -> str:
    """A Markdown table of :func:`clean_vs_emulated_tables` (max/median and share above 4× the median per layer)
    and the layer recommendation of each."""
    lines = ["| layer | clean max/median | clean share > 4× median | emulated artifacts max/median "
             "| emulated share > 4× median |", "|---|---|---|---|---|"]
    for c, e in zip(clean, emulated):
        lines.append(f"| {c['layer']} | {c['max_median_ratio']:.2f} | {100 * c['share_above_4x']:.1f} % | "
                     f"{e['max_median_ratio']:.2f} | {100 * e['share_above_4x']:.1f} % |")
    rec_clean, rec_emul = recommend_layers(clean), recommend_layers(emulated)
    lines.append("")
    lines.append(f"Recommended distillation layers: clean teacher {rec_clean['layers']} ({rec_clean['reason']}); "
                 f"with emulated artifacts {rec_emul['layers']} ({rec_emul['reason']}).")
    return "\n".join(lines)
