"""Analysis reports behind ``tools/analyze.py``: each ``*_report`` computes one table of the paper from a model or a
trained run and returns a plain dict (JSON-ready after :func:`to_jsonable`; keys starting with ``_`` hold the raw
tensors the figures of :mod:`mdistiller.analysis.viz` need and are never written to JSON).

Reports and the paper parts they reproduce:

* :func:`artifacts_report` — per-layer patch-norm statistics and the distillation-layer rule (§3.1.1, §4.5,
  Table 7, App. C); :func:`nullspace_report` — singular spectra of ``W̃_l`` with ``k_energy``/``k_ε``/``r_ε``
  (App. A.2, eq. 18–19, Figure 8) and sub-layer changes (App. A.1, Figure 7);
* :func:`null_vs_reality_report` — the approximation gap of §5 (Table 8), extended with a random control and the
  block's residual update; :func:`subspace_report` — subspace energy vs patch norm (App. I, Figure 13);
* :func:`adapter_report` — adapter alignment (eq. 13, Table 5a), patch cosines (Table 3), patch-norm
  distributions (Figure 6) and Gram distances (Table 5b) of a SiNGER run; :func:`similarity_report` —
  teacher–student Gram distance and CKA (§4.3, Table 2) of several runs; :func:`figures_report` — per-image maps
  (Figure 2, 9, 11, 12).

Everything computed with emulated artifacts (:func:`mdistiller.models.emulated.implant_artifacts`) carries
``"emulated_artifacts": true`` and ``"label": "emulated artifacts"``, and its text header says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mdistiller.distillers import weights_arg
from mdistiller.models.emulated import ArtifactImplant, implant_artifacts
from mdistiller.models.indices import normalize_layers
from mdistiller.singer.nullspace import (
    jacobian_null_basis,
    k_energy,
    k_eps,
    linearize_ffn,
    null_basis,
    principal_basis,
    random_basis,
    singular_spectrum,
)

from .artifacts import LAYER_RULE, layer_artifact_table, patch_norms, recommend_layers
from .similarity import gram_distance, linear_cka, patch_cosine, summary
from .sublayer import instrument_block, sublayer_profile
from .subspace import adapter_alignment, pearson, subspace_energy

__all__ = [
    "EMULATED_LABEL",
    "SKIMAGE_PHOTOS",
    "AnalysisModel",
    "load_analysis_model",
    "load_images",
    "load_skimage_images",
    "load_toy_images",
    "block_tokens",
    "artifacts_report",
    "nullspace_report",
    "null_vs_reality_report",
    "subspace_report",
    "adapter_report",
    "similarity_report",
    "figures_report",
    "format_report",
    "to_jsonable",
    "save_report",
    "representative_layers",
]

EMULATED_LABEL = ArtifactImplant.label  # "emulated artifacts"

#: scikit-image's bundled real photographs (no synthetic pictures, no binary masks, no duplicates such as ``cat``).
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "clock", "brick", "grass", "gravel",
    "cell", "hubble_deep_field", "immunohistochemistry", "retina", "page", "text", "microaneurysms",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- inputs
def _square(img: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop ``[3, H, W]`` to a square and resize it to ``size`` (bilinear, antialiased)."""
    _, h, w = img.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = img[:, top : top + s, left : left + s]
    return F.interpolate(img[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def load_skimage_images(size: int, names: Sequence[str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """scikit-image's bundled photos (:data:`SKIMAGE_PHOTOS`, offline) as ``[B, 3, size, size]`` in ``[0, 1]``.

    Grey images are repeated over three channels, an alpha channel is dropped; each photo is centre-cropped to a
    square before resizing.
    """
    try:
        import skimage.data as skdata
    except ImportError as e:  # pragma: no cover - scikit-image is a dependency of the analysis extras
        raise ImportError("--images skimage needs scikit-image; run `pip install scikit-image`.") from e
    names = list(names or SKIMAGE_PHOTOS)
    out = []
    for name in names:
        loader = getattr(skdata, name, None)
        if loader is None:
            raise ValueError(f"scikit-image has no bundled image '{name}'; use one of {', '.join(SKIMAGE_PHOTOS)}.")
        arr = np.asarray(loader())
        if arr.dtype == bool:
            arr = arr.astype(np.float32)
        elif np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
        arr = np.clip(arr.astype(np.float32), 0.0, 1.0)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        arr = arr[..., :3]
        out.append(_square(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1), size))
    return torch.stack(out), names


def load_toy_images(
    size: int, num: int, split: str = "val", with_masks: bool = False
) -> tuple[torch.Tensor, list[str]] | tuple[torch.Tensor, list[str], torch.Tensor]:
    """``num`` procedural toy scenes of ``split`` (held-out ``val`` by default) at ``size`` px, ``[B, 3, S, S]``.

    With ``with_masks`` the segmentation masks ``[B, S, S]`` (0 = background) come as a third value.
    """
    from mdistiller.dataset import build_dataset

    if num < 1:
        raise ValueError(f"--num-images must be at least 1, got {num}.")
    ds = build_dataset("toy_scenes", split, root=None, input_size=size, train=False, num_images=num)
    items = [ds[i] for i in range(num)]
    images = torch.stack([it[0] for it in items])
    names = [f"toy_{split}_{i}" for i in range(num)]
    if with_masks:
        return images, names, torch.stack([it[1]["mask"] for it in items])
    return images, names


def load_images(source: str, size: int, num: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Images for a model-level analysis: ``"skimage"`` (real photos) or ``"toy"`` (held-out toy scenes)."""
    if source == "skimage":
        images, names = load_skimage_images(size)
        return (images[:num], names[:num]) if num else (images, names)
    if source == "toy":
        return load_toy_images(size, num or 16)  # type: ignore[return-value]
    raise ValueError(f"--images must be 'skimage' or 'toy', got '{source}'.")


@dataclass
class AnalysisModel:
    """A full-depth timm ViT prepared for analysis: ``model`` (eval, frozen), ``net`` (:class:`ViTFeatures`,
    own normalisation), a display ``label``, the emulated-artifact ``implant`` (or ``None``) and its ``source``."""

    model: nn.Module
    net: Any
    label: str
    source: str
    implant: ArtifactImplant | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def emulated(self) -> bool:
        return self.implant is not None

    @property
    def depth(self) -> int:
        return len(self.model.blocks)

    def snap(self, size: int) -> int:
        """The image side closest to ``size`` that is a multiple of the patch size (no dynamic padding)."""
        p = self.net.patch_size
        return max(1, round(size / p)) * p


def is_run_dir(spec: str | Path) -> bool:
    """Whether ``spec`` is a run directory written by ``tools/train.py`` (it holds ``config.yaml``)."""
    return (Path(spec) / "config.yaml").is_file()


def load_analysis_model(
    spec: str,
    weights: str = "pretrained",
    model_kwargs: Mapping[str, Any] | None = None,
    emulate: Mapping[str, Any] | None = None,
) -> AnalysisModel:
    """Build the model to analyse from a short/timm name or a run directory (its *teacher*, at full depth).

    ``weights``: ``pretrained`` | ``random`` | a weights file; ``model_kwargs`` go to
    :func:`mdistiller.models.build_model` (e.g. ``depth``). Both are ignored for a run directory, whose teacher is
    rebuilt by :func:`mdistiller.engine.trainer.load_run` exactly as trained (random-init teachers included: the
    run's seed is set first). ``emulate`` (``{"layer", "share", "scale", "direction", "seed"}``) implants emulated
    artifacts; a run trained with ``DISTILLER.ARTIFACTS.ENABLE`` keeps its own emulation unless ``emulate``
    replaces it.
    """
    from mdistiller.models import ViTFeatures, build_model

    kwargs = dict(model_kwargs or {})
    source = str(spec)
    implant = None
    if is_run_dir(spec):
        cfg, distiller = _load(spec)  # the run's own (full-depth: 𝒟 holds the last block) frozen teacher
        name = cfg.DISTILLER.TEACHER
        model = distiller.teacher.net.model
        implant = distiller.teacher.implant
        if emulate is not None and implant is not None:
            implant.remove()
            implant = None
        label = f"{name} (teacher of {Path(spec).name})"
        info = {"name": name, "weights": str(cfg.DISTILLER.TEACHER_WEIGHTS),
                "kwargs": dict(cfg.DISTILLER.TEACHER_KWARGS), "run": str(spec)}
    else:
        name = spec
        label = name if weights_arg(weights) is True else f"{name} ({weights} weights)"
        model = build_model(name, weights_arg(weights), dynamic_img_size=True, **kwargs)
        if hasattr(model, "reset_classifier"):
            model.reset_classifier(0)
        info = {"name": name, "weights": str(weights), "kwargs": kwargs}
    model.float().eval().requires_grad_(False)
    if emulate is not None:
        implant = implant_artifacts(model, int(emulate["layer"]), share=float(emulate.get("share", 0.03)),
                                    scale=float(emulate.get("scale", 10.0)),
                                    direction=str(emulate.get("direction", "principal")),
                                    seed=int(emulate.get("seed", 0)))
    return AnalysisModel(model=model, net=ViTFeatures(model).eval(), label=label, source=source, implant=implant,
                         info=info)


def _stamp(am_or_flag: AnalysisModel | bool, implant_cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The emulated-artifact fields every report carries."""
    emulated = am_or_flag.emulated if isinstance(am_or_flag, AnalysisModel) else bool(am_or_flag)
    if isinstance(am_or_flag, AnalysisModel) and am_or_flag.implant is not None:
        implant_cfg = am_or_flag.implant.config
    return {"emulated_artifacts": emulated, "label": EMULATED_LABEL if emulated else None,
            "emulation": dict(implant_cfg) if emulated and implant_cfg else None}


@torch.no_grad()
def block_tokens(
    am: AnalysisModel, images: torch.Tensor, layers: Iterable[int], batch_size: int = 8
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    """Full token sequences ``{layer: [B, N, d]}`` (float32, CPU) after the chosen blocks, in batches.

    Returns also the implanted-patch mask ``[B, P]`` when emulated artifacts are on (else ``None``).
    """
    layers = sorted(set(int(x) for x in layers))
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    masks = []
    for start in range(0, images.shape[0], batch_size):
        feats = am.net(images[start : start + batch_size], layers)
        for layer in layers:
            out[layer].append(feats[layer].float().cpu())
        if am.implant is not None and am.implant.last_mask is not None:
            masks.append(am.implant.last_mask.cpu())
    mask = torch.cat(masks) if masks and am.implant is not None else None
    return {layer: torch.cat(v) for layer, v in out.items()}, mask


def representative_layers(depth: int) -> list[int]:
    """Four layers spread like Figure 8's ``l = 5, 13, 17, 23`` of 24 blocks (``5/23, 13/23, 17/23, 1`` of depth)."""
    last = depth - 1
    return sorted({min(last, max(0, round(f * last))) for f in (5 / 23, 13 / 23, 17 / 23, 1.0)})


def _default_layer(depth: int) -> int:
    """The paper's intermediate layer position (17 of 23 → ``floor(3/4 · (L − 1))``), kept below the last block."""
    return max(0, min(depth - 2, math.floor(0.75 * (depth - 1))))


def _mean_of(e: torch.Tensor, m: torch.Tensor) -> float | None:
    """Mean of ``e`` over the boolean selection ``m`` (``None`` when nothing is selected)."""
    return e[m].mean().item() if m.any() else None


# ---------------------------------------------------------------------------------------------------- artifacts
def artifacts_report(
    am: AnalysisModel,
    images: torch.Tensor,
    names: Sequence[str],
    source: str = "skimage",
    k: Sequence[float] = (2, 4, 10),
    ratio_threshold: float = 4.0,
    share_threshold: float = 0.01,
    share_k: float = 4,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Patch-norm statistics of every block and SiNGER's layer recommendation (§3.1.1, §4.5, Table 7, App. C).

    Per layer (patch tokens only; CLS and registers are split off by the model's ``num_prefix_tokens``): the
    per-image median patch norm, max/median and the share of patches above ``k×`` the image median (averaged over
    images), plus the CLS and mean register norm relative to the median patch norm (registers absorb artifacts in
    DINOv2-reg). :func:`recommend_layers` then picks the distillation layers. With emulated artifacts the
    ``implant`` entry says how many implanted patches the ``share_k`` rule finds at the implanted layer.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}.")
    depth = am.depth
    grid = am.net.grid(tuple(images.shape[-2:]))
    feats, mask = block_tokens(am, images, range(depth), batch_size)
    patches, cls_ratio, reg_ratio = {}, {}, {}
    for layer, tokens in feats.items():
        split = am.net.split(tokens, grid)
        patches[layer] = split.patches
        med = torch.quantile(patch_norms(split.patches), 0.5, dim=1)
        cls_ratio[layer] = (split.cls.double().norm(dim=-1) / med).mean().item() if split.cls is not None else None
        reg_ratio[layer] = ((split.registers.double().norm(dim=-1).mean(-1) / med).mean().item()
                            if split.registers.shape[1] else None)
    table = layer_artifact_table(patches, k)
    for row in table:
        row["cls_over_median"] = cls_ratio[row["layer"]]
        row["registers_over_median"] = reg_ratio[row["layer"]]
    rec = recommend_layers(table, ratio_threshold, share_threshold, share_k, depth)
    norms = {layer: patch_norms(p).float() for layer, p in patches.items()}
    implant_check = None
    if am.implant is not None and mask is not None:
        layer = int(am.implant.config["layer"])
        n = norms[layer].double()
        flagged = n > share_k * torch.quantile(n, 0.5, dim=1, keepdim=True)
        hits = (flagged & mask).sum().item()
        implant_check = {
            "layer": layer,
            "implanted_patches": int(mask.sum().item()),
            "found_by_rule": int(hits),
            "recall": hits / max(1, int(mask.sum().item())),
            "precision": hits / max(1, int(flagged.sum().item())),
            "onset_matches_implant": rec["onset"] == layer,
        }
    return {
        "command": "artifacts",
        "model": am.label,
        **_stamp(am),
        "images": source,
        "image_names": list(names),
        "num_images": int(images.shape[0]),
        "image_size": int(images.shape[-1]),
        "grid": list(grid),
        "num_prefix_tokens": am.net.num_prefix,
        "num_registers": am.net.num_prefix - int(am.net.has_cls),
        "depth": depth,
        "k": list(k),
        "table": table,
        "recommendation": rec,
        "implant": implant_check,
        "_norms": norms,
        "_images": images,
        "_mask": mask,
    }


# ---------------------------------------------------------------------------------------------------- nullspace
def nullspace_report(
    am: AnalysisModel,
    images: torch.Tensor | None = None,
    eps: float = 0.05,
    rho: float = 0.999,
    rank: int = 16,
    include_norm: bool = False,
    include_layerscale: bool = False,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Singular spectrum of every block's ``W̃_l`` (eq. 14–15) with ``k_energy(ρ)`` (eq. 18), ``k_ε`` and
    ``r_ε = d − k_ε + 1`` (eq. 19) — Figure 8 — and, given ``images``, the sub-layer changes
    ``Δ_SA, Δ_FFN, G_FFN1, G_FFN2`` per image (App. A.1, Figure 7).

    ``sigma_rank`` is ``σ_{d−r+1}``, the bound ``‖Ñᵀ W̃‖₂`` of a rank-``rank`` null basis (eq. 17). ``ε`` is absolute,
    as in the paper, so it means different things for models with different weight scales: ``rel_sigma_rank``
    (``σ_{d−r+1}/σ_1``) is the scale-free view.
    """
    depth = am.depth
    rows, spectra = [], {}
    for layer, block in enumerate(am.model.blocks):
        w = linearize_ffn(block, include_norm=include_norm, include_layerscale=include_layerscale).cpu()
        _, s = singular_spectrum(w)
        d = int(s.numel())
        r = min(rank, d)
        k_en = k_energy(s, rho)
        k_e, r_e = k_eps(s, eps)
        rows.append({
            "layer": layer, "d": d, "sigma_max": s[0].item(), "sigma_min": s[-1].item(),
            "k_energy": k_en, "tail_energy_dim": d - k_en, "k_eps": k_e, "r_eps": r_e,
            "sigma_rank": s[d - r].item(), "rel_sigma_rank": (s[d - r] / s[0]).item(),
        })
        spectra[layer] = s
    sub_rows, sub = [], {}
    if images is not None:
        parts: list[dict[int, dict[str, torch.Tensor]]] = []
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                batch = am.net.normalize(images[start : start + batch_size])
                parts.append(sublayer_profile(am.model, batch, list(range(depth))))
        for layer in range(depth):
            sub[layer] = {key: torch.cat([p[layer][key] for p in parts]) for key in parts[0][layer]}
            row = {"layer": layer}
            for key, vals in sub[layer].items():
                s_ = summary(vals)
                row[key] = s_["mean"]
                row[f"{key}_std"] = s_["std"]
                row[f"{key}_median"] = s_["median"]
            sub_rows.append(row)
    return {
        "command": "nullspace",
        "model": am.label,
        **_stamp(am),
        "num_images": int(images.shape[0]) if images is not None else 0,
        "image_size": int(images.shape[-1]) if images is not None else None,
        "eps": eps,
        "rho": rho,
        "rank": rank,
        "linearize": {"include_norm": include_norm, "include_layerscale": include_layerscale},
        "depth": depth,
        "spectrum_table": rows,
        "sublayer_table": sub_rows,
        "representative_layers": representative_layers(depth),
        "_spectra": spectra,
        "_sublayer": sub,
    }


# ---------------------------------------------------------------------------------------------------- Table 8
def _rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image ``‖a − b‖_F / ‖b‖_F`` for ``[B, P, d]``."""
    return (a - b).double().flatten(1).norm(dim=1) / b.double().flatten(1).norm(dim=1).clamp_min(1e-12)


def _deviation(new: torch.Tensor, ref: torch.Tensor) -> dict[str, torch.Tensor]:
    """Relative L2, mean patch cosine and linear CKA between two ``[B, P, d]`` maps (per image)."""
    return {"l2": _rel(new, ref), "cos": patch_cosine(new, ref), "cka": linear_cka(new, ref)}


def _branches(block: nn.Module, x: torch.Tensor, npfx: int, batch_size: int) -> tuple[torch.Tensor, ...]:
    """Patch tokens of a block's output, attention update ``x_SA − x``, FFN update ``x_out − x_SA`` and FFN
    pre-activation ``z_1`` (App. A.1)."""
    outs = []
    for i in range(0, x.shape[0], batch_size):
        t = instrument_block(block, x[i : i + batch_size])
        outs.append((t["x_out"], t["x_sa"] - t["x_in"], t["x_out"] - t["x_sa"], t["z1"]))
    return tuple(torch.cat([o[k] for o in outs])[:, npfx:] for k in range(4))


def _act_slope(block: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Elementwise derivative of the FFN activation at its pre-activations ``z`` (GELU' for ViTs)."""
    with torch.enable_grad():
        zz = z.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(block.mlp.act(zz).sum(), zz)
    return g.detach()


def _verdict(rows: list[dict[str, Any]], scale: float) -> str:
    """One plain sentence comparing SiNGER's null basis with the random control at one perturbation size."""
    by = {r["basis"]: r for r in rows if r["scale"] == scale}
    if "singer_null" not in by or "random" not in by:
        return ""
    s, r = by["singer_null"], by["random"]
    lin = s["lin_response"] / max(r["lin_response"], 1e-12)
    res = s["residual_l2"] / max(r["residual_l2"], 1e-12)
    out = s["output_l2"] / max(r["output_l2"], 1e-12)
    if res <= 0.8:
        real = (f"on the real block the null directions also help: the block's update moves {res:.2f}x as much as "
                "under random directions")
    elif res < 1.25:
        real = (f"on the real block the random control is about as good: the block's update moves {res:.2f}x as "
                "much as under random directions")
    else:
        real = (f"on the real block random directions disturb it less: the block's update moves {res:.2f}x as much "
                "as under random directions")
    act = s["act_response"] / max(r["act_response"], 1e-12)
    text = (f"At ‖ΔF‖ = {scale:g}‖F‖ per token, the SiNGER null basis gives {lin:.3f}x the linearised response of a "
            f"random basis ({act:.2f}x once the activation's slope at the real tokens is kept); {real}; the whole "
            f"output moves {out:.2f}x as much (the skip connection passes ΔF unchanged).")
    if "jacobian" in by:
        jac = by["jacobian"]["residual_l2"] / max(r["residual_l2"], 1e-12)
        text += f" The Jacobian null basis moves the update {jac:.2f}x as much as random."
    return text


def null_vs_reality_report(
    am: AnalysisModel,
    images: torch.Tensor,
    layer: int | None = None,
    rank: int = 16,
    scales: Sequence[float] = (0.05, 0.1, 0.2),
    mode: str = "random",
    jacobian_samples: int = 16,
    seed: int = 0,
    include_principal: bool = True,
    include_norm_variant: bool = True,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Does ``W̃``'s nullspace reach the real, non-linear block? (§5 "Approximation Gap", Table 8, extended.)

    ``F_l`` (patch tokens after block ``l``) is perturbed along a rank-``rank`` basis ``U`` of
    ``(a)`` the SiNGER null basis of block ``l+1``'s ``W̃`` (eq. 16), ``(b)`` a Jacobian-based null basis of the real
    block update (:func:`jacobian_null_basis`, ``residual=False``), ``(c)`` a random orthonormal basis, and
    ``(d)`` ``W̃``'s principal basis (a worst-case reference) and, with ``include_norm_variant``, the null basis of
    ``W̃`` with the pre-FFN LayerNorm scale and LayerScale folded in (``singer_null_ln``). ``mode="random"`` draws
    ``ΔF_i = z_i Uᵀ`` with the same seeded ``z_i ~ N(0, I_r)`` for every basis; ``mode="projection"`` uses
    ``ΔF_i = F_i U Uᵀ`` (the adapter's initial perturbation, eq. 6–8). Every token is then rescaled to
    ``‖ΔF_i‖ = scale · ‖F_i‖``, so all bases perturb by the same amount.
    Reported per basis and scale (mean over images):

    * ``lin_response = ‖ΔF W̃‖_F / ‖F W̃‖_F`` — what eq. 4 approximates;
    * ``act_response``: the same through the FFN's local linear map ``W_FFN1 diag(act'(z_i)) W_FFN2`` at each
      token's real pre-activation ``z_i`` — ``W̃`` with the activation's slope kept (LayerNorm still ignored);
    * ``output_*``: block ``l+1`` output with vs without ``ΔF`` (relative L2, mean patch cosine, linear CKA);
    * ``residual_*``: the same for the block's update ``block(x) − x`` — the skip connection passes ``ΔF`` to the
      output unchanged, so only the update can show whether the block "ignores" the perturbation;
    * ``attn_l2`` / ``ffn_l2``: relative change of the attention update ``x_SA − x`` and of the FFN update
      ``x_out − x_SA`` separately (the FFN is what ``W̃`` linearises);
    * ``skip_floor = ‖ΔF‖_F / ‖Y‖_F``: the output change the skip connection alone contributes.

    ``lin_response`` always uses the paper's ``W̃`` (no LayerNorm, no LayerScale).
    """
    depth = am.depth
    layer = _default_layer(depth) if layer is None else normalize_layers(layer, depth, "model")[0]
    if layer + 1 >= depth:
        raise ValueError(f"--layer {layer} has no next block in a {depth}-block model; pick a layer below {depth - 1}.")
    if mode not in ("random", "projection"):
        raise ValueError(f"--mode must be 'random' or 'projection', got '{mode}'.")
    if am.implant is not None and int(am.implant.config["layer"]) == layer + 1:
        raise ValueError(f"emulated artifacts are implanted by block {layer + 1} itself, so it cannot be re-run alone; "
                         f"pick a --layer other than {layer}.")
    grid = am.net.grid(tuple(images.shape[-2:]))
    feats, _ = block_tokens(am, images, [layer, layer + 1], batch_size)
    x = feats[layer]
    npfx = am.net.num_prefix
    block = am.model.blocks[layer + 1]
    d = x.shape[-1]
    r = min(rank, d)
    w = linearize_ffn(block).cpu()
    gen = torch.Generator().manual_seed(seed)
    bases = {"singer_null": null_basis(w, r)}
    if include_norm_variant:  # LayerNorm γ and LayerScale folded into W̃ (SiNGER.LINEARIZE_NORM / _LAYERSCALE)
        bases["singer_null_ln"] = null_basis(linearize_ffn(block, include_norm=True, include_layerscale=True).cpu(), r)
    # the Jacobian basis is computed without the implant hooks on the block (they sit on other modules)
    bases["jacobian"] = jacobian_null_basis(block, x, r, num_samples=jacobian_samples, residual=False)
    bases["random"] = random_basis(d, r, generator=gen)
    if include_principal:
        bases["principal"] = principal_basis(w, r)
    p = x[:, npfx:]
    with torch.no_grad():
        y, attn, ffn, z1 = _branches(block, x, npfx, batch_size)
        w1, w2 = block.mlp.fc1.weight.T.double(), block.mlp.fc2.weight.T.double()
        slope = _act_slope(block, z1).double()

        def local(v: torch.Tensor) -> torch.Tensor:  # v W1 diag(act'(z)) W2 per token, the FFN's local linear map
            return ((v.double() @ w1) * slope) @ w2

        fw_local = local(p).flatten(1).norm(dim=1)
        consistency = _rel(y, feats[layer + 1][:, npfx:]).max().item()
        yp = y
        fw = (p.double() @ w.double()).flatten(1).norm(dim=1)
        z = torch.randn(p.shape[0], p.shape[1], r, generator=torch.Generator().manual_seed(seed + 1),
                        dtype=torch.float64)
        rows, per_image = [], {}
        for scale in scales:
            for name, u in bases.items():
                ud = u.double()
                delta = z @ ud.T if mode == "random" else (p.double() @ ud) @ ud.T
                delta = delta / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                delta = (delta * scale * p.double().norm(dim=-1, keepdim=True)).float()
                x2 = torch.cat([x[:, :npfx], p + delta], dim=1)
                y2p, attn2, ffn2, _ = _branches(block, x2, npfx, batch_size)
                dev_out = _deviation(y2p, yp)
                dev_res = _deviation(y2p - (p + delta), yp - p)
                lin = (delta.double() @ w.double()).flatten(1).norm(dim=1) / fw.clamp_min(1e-12)
                skip = delta.double().flatten(1).norm(dim=1) / yp.double().flatten(1).norm(dim=1)
                lin_act = local(delta).flatten(1).norm(dim=1) / fw_local.clamp_min(1e-12)
                vals = {"lin_response": lin, "act_response": lin_act, "output_l2": dev_out["l2"],
                        "output_cos": dev_out["cos"], "output_cka": dev_out["cka"], "residual_l2": dev_res["l2"],
                        "residual_cos": dev_res["cos"],
                        "residual_cka": dev_res["cka"], "attn_l2": _rel(attn2, attn), "ffn_l2": _rel(ffn2, ffn),
                        "skip_floor": skip}
                per_image[(scale, name)] = vals
                row: dict[str, Any] = {"scale": scale, "basis": name}
                for key, v in vals.items():
                    row[key] = v.mean().item()
                    row[f"{key}_std"] = summary(v)["std"]
                rows.append(row)
    verdicts = [v for v in (_verdict(rows, s) for s in scales) if v]
    return {
        "command": "null-vs-reality",
        "model": am.label,
        **_stamp(am),
        "layer": layer,
        "next_block": layer + 1,
        "rank": r,
        "mode": mode,
        "scales": list(scales),
        "jacobian_samples": jacobian_samples,
        "num_images": int(images.shape[0]),
        "image_size": int(images.shape[-1]),
        "grid": list(grid),
        "recompute_error": consistency,
        "table": rows,
        "verdict": verdicts,
        "_per_image": per_image,
    }


# ---------------------------------------------------------------------------------------------------- App. I
def subspace_report(
    am: AnalysisModel,
    images: torch.Tensor,
    layers: Sequence[int] | None = None,
    ranks: Sequence[int] = (4, 8, 16, 32, 64),
    basis_block: str = "next",
    outlier_k: float = 4.0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Normalised subspace energy ``E_U(p)`` of each patch in ``W̃``'s principal and null bases vs its norm
    (App. I, Figure 13), for several ranks ``r``.

    ``basis_block="next"`` takes ``W̃`` of block ``l+1`` — the block that reads ``F_l`` and whose nullspace SiNGER's
    adapter at ``l`` uses (eq. 8; the last layer uses its own block, as the adapter does); ``"same"`` takes ``W̃_l``
    as App. I writes it. Per layer and ``r``: ``corr(‖x_p‖, E_null)``, ``corr(‖x_p‖, E_prin)`` over all patches
    (Figure 13 m–n), and the mean energies of outlier patches (norm above ``outlier_k ×`` the image median)
    and of the rest.
    """
    if basis_block not in ("next", "same"):
        raise ValueError(f"--basis-block must be 'next' or 'same', got '{basis_block}'.")
    depth = am.depth
    if layers is None:
        layers = [_default_layer(depth), depth - 1]
        if am.implant is not None:
            layers = [int(am.implant.config["layer"]), *layers]
    layers = normalize_layers(layers, depth, "model")
    grid = am.net.grid(tuple(images.shape[-2:]))
    feats, _ = block_tokens(am, images, layers, batch_size)
    rows, data = [], {}
    for layer in layers:
        pt = am.net.split(feats[layer], grid).patches  # [B, P, d]
        norms = patch_norms(pt)
        outlier = (norms > outlier_k * torch.quantile(norms, 0.5, dim=1, keepdim=True)).flatten()
        tokens = pt.reshape(-1, pt.shape[-1])
        flat_norms = norms.flatten()
        src = layer + 1 if basis_block == "next" and layer + 1 < depth else layer
        u, _ = singular_spectrum(linearize_ffn(am.model.blocks[src]).cpu())
        d = u.shape[0]
        data[layer] = {"norms": flat_norms.float(), "outlier": outlier, "energy": {}}
        for r in ranks:
            if not 1 <= r <= d // 2:
                continue
            e_null = subspace_energy(tokens, u[:, -r:].contiguous())
            e_prin = subspace_energy(tokens, u[:, :r].contiguous())
            data[layer]["energy"][r] = {"null": e_null.float(), "prin": e_prin.float()}
            rows.append({
                "layer": layer, "basis_block": src, "r": r,
                "corr_null": pearson(flat_norms, e_null), "corr_prin": pearson(flat_norms, e_prin),
                "E_null_outliers": _mean_of(e_null, outlier), "E_null_rest": _mean_of(e_null, ~outlier),
                "E_prin_outliers": _mean_of(e_prin, outlier), "E_prin_rest": _mean_of(e_prin, ~outlier),
                "num_outliers": int(outlier.sum().item()), "random_reference": r / d,
            })
    if not rows:
        raise ValueError(f"no rank in {list(ranks)} fits the model width (1 <= r <= d/2); pass smaller --ranks.")
    return {
        "command": "subspace",
        "model": am.label,
        **_stamp(am),
        "layers": layers,
        "ranks": [r for r in ranks if any(row["r"] == r for row in rows)],
        "basis_block": basis_block,
        "outlier_k": outlier_k,
        "num_images": int(images.shape[0]),
        "image_size": int(images.shape[-1]),
        "table": rows,
        "_data": data,
    }


# ---------------------------------------------------------------------------------------------------- runs
def _load(run_dir: str | Path):
    """``load_run`` with torch seeded by the run's ``EXPERIMENT.SEED`` first, as ``Trainer`` does before building,
    so a random-init teacher comes back identical (the global RNG state is restored afterwards)."""
    from mdistiller.config import load_config
    from mdistiller.engine.trainer import load_run

    if not is_run_dir(run_dir):
        raise FileNotFoundError(f"'{run_dir}' is not a run directory (no config.yaml); pass one written by "
                                "tools/train.py.")
    seed = int(load_config([Path(run_dir) / "config.yaml"]).EXPERIMENT.SEED)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_run(run_dir)


def _run_name(cfg, run_dir: str | Path) -> str:
    return str(cfg.EXPERIMENT.NAME or Path(run_dir).name)


def _teacher_emulation(distiller) -> dict[str, Any] | None:
    implant = getattr(distiller.teacher, "implant", None)
    return dict(implant.config) if implant is not None else None


def _next_block_w(distiller, t: int, cfg) -> torch.Tensor:
    """``W̃`` the adapter at teacher layer ``t`` was initialised from: block ``t+1``, or block ``t`` for ``l_final``."""
    final = distiller.plan.teacher[-1]
    block = distiller.teacher.blocks[t + 1] if t != final else distiller.teacher.blocks[t]
    s = cfg.SiNGER
    return linearize_ffn(block, include_norm=bool(s.LINEARIZE_NORM),
                         include_layerscale=bool(s.LINEARIZE_LAYERSCALE)).cpu()


@torch.no_grad()
def _run_features(distiller, images: torch.Tensor, batch_size: int = 16, want_next: bool = True) -> dict[str, Any]:
    """Teacher ``F``, refined ``F̂`` (SiNGER), next-block ``F_{l+1}``/``F̂_{l+1}`` (intermediate SiNGER layers),
    student ``F^S`` and its projection ``P(F^S)``, all patch tokens on the student grid, per distilled layer."""
    plan = distiller.plan
    singer = hasattr(distiller, "adapters")
    final = plan.teacher[-1]
    keys = ("t", "t_hat", "t_next", "t_next_hat", "s", "s_proj")
    out: dict[int, dict[str, list[torch.Tensor]]] = {t: {k: [] for k in keys} for t in plan.teacher}
    masks = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        sgrid = distiller.student_grid(x)
        request = set(plan.teacher)
        if singer and want_next:
            request |= {t + 1 for t in plan.teacher if t != final}
        t_feats, tgrid = distiller.teacher(x, sorted(request), student_grid=sgrid)
        implant = getattr(distiller.teacher, "implant", None)
        if implant is not None and implant.last_mask is not None:
            masks.append(implant.last_mask.cpu())
        s_feats = distiller.student(x, plan.student)
        to_s = distiller.teacher.to_student_grid
        for t, s in plan.pairs():
            split = distiller.teacher.net.split(t_feats[t], tgrid)
            o = out[t]
            o["t"].append(to_s(split.patches, tgrid, sgrid).float())
            s_patches = distiller.student.split(s_feats[s], sgrid).patches
            o["s"].append(s_patches.float())
            o["s_proj"].append(distiller.proj[str(t)](s_patches).float())
            if singer:
                f_hat = distiller.adapters[str(t)](split.patches)
                o["t_hat"].append(to_s(f_hat, tgrid, sgrid).float())
                if want_next and t != final:
                    block = distiller.teacher.blocks[t + 1]
                    y_hat = block(torch.cat([split.prefix.to(f_hat.dtype), f_hat], dim=1))
                    nxt = distiller.teacher.net.split(t_feats[t + 1], tgrid).patches
                    o["t_next"].append(to_s(nxt, tgrid, sgrid).float())
                    y_hat = distiller.teacher.net.split(y_hat, tgrid).patches
                    o["t_next_hat"].append(to_s(y_hat, tgrid, sgrid).float())
    feats = {t: {k: torch.cat(v) for k, v in o.items() if v} for t, o in out.items()}
    return {"feats": feats, "mask": torch.cat(masks) if masks else None, "singer": singer}


def _norm_stats(n: torch.Tensor, k: float = 4.0) -> dict[str, float]:
    """Mean per-image median, max/median and share above ``k×`` median of patch norms ``[B, P]``."""
    med = torch.quantile(n.double(), 0.5, dim=1)
    return {"median": med.mean().item(), "max_median_ratio": (n.max(dim=1).values / med).mean().item(),
            f"share_above_{k:g}x": (n > k * med[:, None]).double().mean().item()}


def _implanted_ratio(tokens: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean ``‖F_i‖ / median_image ‖F‖`` over the implanted patches (emulated artifacts; ``mask [B, P]``)."""
    n = patch_norms(tokens)
    return (n / torch.quantile(n, 0.5, dim=1, keepdim=True))[mask].mean().item()


def adapter_report(run_dir: str | Path, num_images: int = 64, batch_size: int = 16) -> dict[str, Any]:
    """How the trained SiNGER adapters act (§4.4–4.5) on held-out toy scenes at the run's input size.

    Per adapted teacher layer ``l``: ``E_prob``/``E_safe`` of ``φ_up`` and ``φ_downᵀ`` against ``W̃_{l+1}`` (eq. 13,
    Table 5a; a random matrix scores ``≈ sqrt(r/d)``, given as ``random_reference``); per-image patch cosine
    ``F_l`` vs ``F̂_l`` and ``F_{l+1}`` vs ``F̂_{l+1}`` (Table 3, μ/σ/median); patch-norm statistics before/after
    (Figure 6); Gram distances ``D_G(F, F̂)`` and ``D_G(F, F^S)`` per image (Table 5b), raw (the paper's
    ``‖G(F_i) − G(F_j)‖_F``) and on cosine Grams divided by the number of patches (``gd_cos``, scale-free).
    """
    cfg, distiller = _load(run_dir)
    if not hasattr(distiller, "adapters"):
        raise ValueError(f"'{run_dir}' is a {cfg.DISTILLER.TYPE} run; the adapter analysis needs a SiNGER run.")
    images, _ = load_toy_images(int(cfg.DATASET.INPUT_SIZE), num_images)
    got = _run_features(distiller, images, batch_size)
    feats, mask = got["feats"], got["mask"]
    final = distiller.plan.teacher[-1]
    align_rows, cos_rows, norm_rows, gd_rows = [], [], [], []
    norms: dict[str, torch.Tensor] = {}
    cosines: dict[str, torch.Tensor] = {}
    for t in distiller.plan.teacher:
        adapter = distiller.adapters[str(t)]
        a = adapter_alignment(adapter, _next_block_w(distiller, t, cfg))
        ref = math.sqrt(a["rank"] / adapter.dim)
        for m in ("up", "down_T"):
            align_rows.append({"layer": t, "matrix": m, "E_prob": a[m]["E_prob"], "E_safe": a[m]["E_safe"],
                               "rank": a["rank"], "random_reference": ref,
                               "basis_block": t + 1 if t != final else t})
        f, fh = feats[t]["t"], feats[t]["t_hat"]
        pairs = [(f"F_{t}", f"F̂_{t}", f, fh)]
        if "t_next" in feats[t] and t != final:
            pairs.append((f"F_{t + 1}", f"F̂_{t + 1}", feats[t]["t_next"], feats[t]["t_next_hat"]))
        for a_name, b_name, fa, fb in pairs:
            cos = patch_cosine(fa, fb)
            cosines[f"{a_name} vs {b_name}"] = cos.float()
            cos_rows.append({"layer": t, "pair": f"{a_name} vs {b_name}", **summary(cos)})
            na, nb = patch_norms(fa), patch_norms(fb)
            norms[a_name], norms[b_name] = na.float(), nb.float()
            for name, n in ((a_name, na), (b_name, nb)):
                row = {"layer": t, "features": name, **_norm_stats(n)}
                if mask is not None and mask.shape == n.shape:
                    row["implanted_over_median"] = _implanted_ratio(fa if name == a_name else fb, mask)
                norm_rows.append(row)
        for pair, fa, fb in ((f"F_{t} vs F̂_{t}", f, fh), (f"F_{t} vs F^S", f, feats[t]["s"])):
            raw = gram_distance(fa, fb)
            cosd = gram_distance(fa, fb, normalize=True, per_entry=True)
            gd_rows.append({"layer": t, "pair": pair, "gd": summary(raw)["mean"], "gd_std": summary(raw)["std"],
                            "gd_median": summary(raw)["median"], "gd_cos": summary(cosd)["mean"],
                            "gd_cos_std": summary(cosd)["std"]})
    return {
        "command": "adapter",
        "run": str(run_dir),
        "run_name": _run_name(cfg, run_dir),
        "model": f"{cfg.DISTILLER.TEACHER} → {cfg.DISTILLER.STUDENT}",
        **_stamp(_teacher_emulation(distiller) is not None, _teacher_emulation(distiller)),
        "num_images": num_images,
        "image_size": int(images.shape[-1]),
        "layers": list(distiller.plan.teacher),
        "alignment_table": align_rows,
        "cosine_table": cos_rows,
        "norm_table": norm_rows,
        "gram_table": gd_rows,
        "_norms": norms,
        "_cos": cosines,
        "_mask": mask,
    }


def similarity_report(run_dirs: Sequence[str | Path], num_images: int = 64, batch_size: int = 16) -> dict[str, Any]:
    """Teacher–student representation similarity of several runs side by side (§4.3, Table 2).

    For each run and each distilled pair (the distilled layers include the teacher's last block) on held-out toy
    scenes: Gram distance on cosine Grams divided by the number of patches (``gd``, scale-free; Table 2 reports
    magnitudes of this order), the raw ``D_G`` of Table 5b (``gd_raw``), linear CKA (``cka``) between the teacher's
    and the student's patch tokens, and the mean patch cosine of the projected student ``P(F^S)`` with the
    teacher ``F^T`` (``cos_teacher``) and, for SiNGER, with its refined target ``F̂`` (``cos_target``).
    """
    if not run_dirs:
        raise ValueError("similarity needs at least one RUN_DIR.")
    rows, runs, grams = [], [], {}
    any_emulated = False
    for run_dir in run_dirs:
        cfg, distiller = _load(run_dir)
        name = _run_name(cfg, run_dir)
        emulation = _teacher_emulation(distiller)
        any_emulated |= emulation is not None
        images, _ = load_toy_images(int(cfg.DATASET.INPUT_SIZE), num_images)
        got = _run_features(distiller, images, batch_size, want_next=False)
        runs.append({"run": str(run_dir), "name": name, "distiller": cfg.DISTILLER.TYPE,
                     "teacher": cfg.DISTILLER.TEACHER, "student": cfg.DISTILLER.STUDENT,
                     "emulated_artifacts": emulation is not None, "image_size": int(images.shape[-1])})
        for t, s in distiller.plan.pairs():
            f = got["feats"][t]
            gd = gram_distance(f["t"], f["s"], normalize=True, per_entry=True)
            gd_raw = gram_distance(f["t"], f["s"])
            cka = linear_cka(f["t"], f["s"])
            row = {"run": name, "distiller": cfg.DISTILLER.TYPE, "teacher_layer": t, "student_layer": s,
                   "last": t == distiller.plan.teacher[-1], "gd": summary(gd)["mean"], "gd_std": summary(gd)["std"],
                   "gd_raw": summary(gd_raw)["mean"], "cka": summary(cka)["mean"], "cka_std": summary(cka)["std"],
                   "cos_teacher": summary(patch_cosine(f["s_proj"], f["t"]))["mean"],
                   "emulated_artifacts": emulation is not None}
            if "t_hat" in f:
                row["cos_target"] = summary(patch_cosine(f["s_proj"], f["t_hat"]))["mean"]
            row["teacher_max_median"] = _norm_stats(patch_norms(f["t"]))["max_median_ratio"]
            row["student_max_median"] = _norm_stats(patch_norms(f["s"]))["max_median_ratio"]
            mask = got["mask"]
            if mask is not None and mask.shape == f["t"].shape[:2]:
                row["teacher_implanted_over_median"] = _implanted_ratio(f["t"], mask)
                row["student_implanted_over_median"] = _implanted_ratio(f["s"], mask)
                row["projected_implanted_over_median"] = _implanted_ratio(f["s_proj"], mask)
            rows.append(row)
            grams[(name, t)] = {"t": f["t"][0], "s": f["s"][0], "image": images[0]}
    return {
        "command": "similarity",
        **_stamp(any_emulated, None),
        "num_images": num_images,
        "runs": runs,
        "table": rows,
        "_grams": grams,
    }


def _marked_patch(mask: torch.Tensor | None, grid: tuple[int, int], patch: tuple[int, int] | None) -> tuple[int, int]:
    """The ×-marked patch: ``patch`` if given, else the centre of the toy scene's objects, else the grid centre."""
    h, w = grid
    if patch is not None:
        r, c = patch
        if not (0 <= r < h and 0 <= c < w):
            raise ValueError(f"--patch {r},{c} lies outside the {h}x{w} patch grid.")
        return int(r), int(c)
    if mask is not None and (mask > 0).any():
        ys, xs = torch.nonzero(mask > 0, as_tuple=True)
        return (min(h - 1, int(ys.float().mean().item() * h / mask.shape[0])),
                min(w - 1, int(xs.float().mean().item() * w / mask.shape[1])))
    return h // 2, w // 2


def figures_report(
    run_dirs: Sequence[str | Path],
    image_indices: Sequence[int] = (0,),
    patch: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Per-image feature maps of one or more runs on held-out toy scenes (Figure 2, 9, 11, 12).

    For every run and image, per distilled layer: ``F^T``, ``F̂^T`` and ``ΔF^T = F̂^T − F^T`` (SiNGER) and the
    student ``F^S``, all patch tokens on the student grid (the maps are drawn by :mod:`viz`: norm, PCA and
    similarity to a marked patch). SiNGER runs also carry ``F_{l+1}``/``F̂_{l+1}`` (Figure 11).
    """
    if not run_dirs:
        raise ValueError("figures needs at least one RUN_DIR.")
    idx = [int(i) for i in image_indices]
    if min(idx) < 0:
        raise ValueError(f"--image-index must be >= 0, got {min(idx)}.")
    runs, any_emulated = [], False
    for run_dir in run_dirs:
        cfg, distiller = _load(run_dir)
        size = int(cfg.DATASET.INPUT_SIZE)
        images, _, masks = load_toy_images(size, max(idx) + 1, with_masks=True)  # type: ignore[misc]
        images, masks = images[idx], masks[idx]
        got = _run_features(distiller, images, batch_size=len(idx))
        grid = distiller.student_grid(images)
        emulation = _teacher_emulation(distiller)
        any_emulated |= emulation is not None
        runs.append({
            "run": str(run_dir), "name": _run_name(cfg, run_dir), "distiller": cfg.DISTILLER.TYPE,
            "emulated_artifacts": emulation is not None, "grid": list(grid), "layers": list(distiller.plan.teacher),
            "student_layers": list(distiller.plan.student),
            "marked": [list(_marked_patch(masks[j], grid, patch)) for j in range(len(idx))],
            "_feats": got["feats"], "_images": images, "_mask": got["mask"],
        })
    return {"command": "figures", **_stamp(any_emulated, None), "image_indices": idx, "runs": runs}


# ---------------------------------------------------------------------------------------------------- output
def to_jsonable(obj: Any) -> Any:
    """Drop ``_``-prefixed keys, turn tensors/numpy scalars into Python numbers and non-finite floats into None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if spec == "s" or not isinstance(v, int | float):
        return str(v)
    return format(v, spec)


def format_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[tuple[str, str, str]]) -> str:
    """Fixed-width text table; ``cols`` are ``(key, header, format spec)``."""
    cells = [[_fmt(row.get(k), spec) for k, _, spec in cols] for row in rows]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, (_, h, _) in enumerate(cols)]
    line = "  ".join(h.rjust(wd) for (_, h, _), wd in zip(cols, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(wd) for c, wd in zip(cell, widths)) for cell in cells]
    return "\n".join(out)


def _header(report: Mapping[str, Any], title: str) -> str:
    tag = f"[{EMULATED_LABEL}] " if report.get("emulated_artifacts") else ""
    where = report.get("model") or report.get("run_name") or ""
    return f"{tag}{title}" + (f" — {where}" if where else "")


def format_report(report: Mapping[str, Any]) -> str:
    """Human-readable tables of a report (the text ``tools/analyze.py`` prints)."""
    cmd = report["command"]
    lines: list[str] = []
    if cmd == "artifacts":
        lines.append(_header(report, "Patch-norm artifacts per layer (§3.1.1, §4.5)"))
        lines.append(f"{report['num_images']} {report['images']} images at {report['image_size']} px, grid "
                     f"{report['grid'][0]}x{report['grid'][1]}, prefix tokens {report['num_prefix_tokens']} "
                     f"(registers {report['num_registers']}, excluded from patch statistics)")
        cols = [("layer", "layer", "d"), ("median", "median‖F‖", ".2f"), ("max_median_ratio", "max/med", ".2f")]
        cols += [(f"share_above_{k:g}x", f">{k:g}x med", ".4f") for k in report["k"]]
        cols += [("cls_over_median", "CLS/med", ".2f")]
        if report["num_registers"]:
            cols += [("registers_over_median", "reg/med", ".2f")]
        lines.append(format_table(report["table"], cols))
        rec = report["recommendation"]
        lines.append(f"recommended layers: {rec['layers']} — {rec['reason']}")
        lines.append(f"rule: {LAYER_RULE}")
        if report.get("implant"):
            im = report["implant"]
            lines.append(f"{EMULATED_LABEL} at layer {im['layer']}: {im['found_by_rule']}/{im['implanted_patches']} "
                         f"implanted patches exceed {rec['thresholds']['share_k']:g}x the median "
                         f"(recall {im['recall']:.2f}, precision {im['precision']:.2f}); onset found at the implanted "
                         f"layer: {'yes' if im['onset_matches_implant'] else 'no'}")
    elif cmd == "nullspace":
        lines.append(_header(report, "Singular spectra of the linearised FFN W̃_l (App. A.2, Figure 8)"))
        lines.append(f"eps = {report['eps']:g} (absolute), rho = {report['rho']:g}, rank r = {report['rank']}")
        lines.append(format_table(report["spectrum_table"], [
            ("layer", "layer", "d"), ("d", "d", "d"), ("sigma_max", "σ_1", ".3g"), ("sigma_min", "σ_d", ".3g"),
            ("k_energy", "k_energy", "d"), ("tail_energy_dim", "d-k_energy", "d"), ("k_eps", "k_ε", "d"),
            ("r_eps", "r_ε", "d"), ("sigma_rank", "σ_{d-r+1}", ".3g"), ("rel_sigma_rank", "σ_{d-r+1}/σ_1", ".2e")]))
        if report["sublayer_table"]:
            lines.append("")
            lines.append(_header(report, f"Sub-layer changes, mean (std) over {report['num_images']} images "
                                         "(App. A.1, Figure 7)"))
            rows = [{"layer": r["layer"], **{k: f"{r[k]:.3f} ({r[k + '_std']:.3f})"
                                              for k in ("delta_sa", "delta_ffn", "g_ffn1", "g_ffn2")}}
                    for r in report["sublayer_table"]]
            lines.append(format_table(rows, [("layer", "layer", "d"), ("delta_sa", "Δ_SA", "s"),
                                             ("delta_ffn", "Δ_FFN", "s"), ("g_ffn1", "G_FFN1", "s"),
                                             ("g_ffn2", "G_FFN2", "s")]))
    elif cmd == "null-vs-reality":
        lines.append(_header(report, f"Null directions vs the real block {report['next_block']} (§5, Table 8 "
                                     "extended)"))
        lines.append(f"perturbing F_{report['layer']} (patch tokens) along rank-{report['rank']} bases, mode "
                     f"'{report['mode']}', ‖ΔF_i‖ = scale·‖F_i‖; {report['num_images']} images at "
                     f"{report['image_size']} px; Jacobian basis from {report['jacobian_samples']} tokens")
        lines.append(format_table(report["table"], [
            ("scale", "scale", "g"), ("basis", "basis", "s"), ("lin_response", "‖ΔFW̃‖/‖FW̃‖", ".4f"),
            ("act_response", "with GELU'", ".4f"),
            ("output_l2", "out L2", ".4f"), ("output_cos", "out cos", ".4f"), ("output_cka", "out CKA", ".4f"),
            ("residual_l2", "upd L2", ".4f"), ("residual_cos", "upd cos", ".4f"),
            ("residual_cka", "upd CKA", ".4f"), ("attn_l2", "attn L2", ".4f"), ("ffn_l2", "FFN L2", ".4f"),
            ("skip_floor", "‖ΔF‖/‖Y‖", ".4f")]))
        lines.append("out = block output Y; upd = the block's update Y − X (the skip connection passes ΔF unchanged); "
                     "attn / FFN = the attention and FFN parts of the update.")
        lines += report["verdict"]
    elif cmd == "subspace":
        lines.append(_header(report, "Subspace energy vs patch norm (App. I, Figure 13)"))
        lines.append(f"W̃ of block {'l+1' if report['basis_block'] == 'next' else 'l'}; outliers = patches above "
                     f"{report['outlier_k']:g}x the image median; random reference E = r/d")
        lines.append(format_table(report["table"], [
            ("layer", "layer", "d"), ("basis_block", "W̃ of", "d"), ("r", "r", "d"),
            ("corr_null", "corr(‖F‖,E_null)", "+.3f"), ("corr_prin", "corr(‖F‖,E_prin)", "+.3f"),
            ("E_null_outliers", "E_null out", ".4f"), ("E_null_rest", "E_null rest", ".4f"),
            ("E_prin_outliers", "E_prin out", ".4f"), ("E_prin_rest", "E_prin rest", ".4f"),
            ("random_reference", "r/d", ".4f"), ("num_outliers", "#out", "d")]))
    elif cmd == "adapter":
        lines.append(_header(report, f"SiNGER adapters of run {report['run_name']} ({report['num_images']} held-out "
                                     f"toy scenes at {report['image_size']} px)"))
        lines.append("Alignment (eq. 13, Table 5a):")
        lines.append(format_table(report["alignment_table"], [
            ("layer", "layer", "d"), ("matrix", "matrix", "s"), ("basis_block", "W̃ of", "d"),
            ("E_prob", "E_prob", ".4f"), ("E_safe", "E_safe", ".4f"), ("random_reference", "random≈", ".4f")]))
        lines.append("Patch cosine per image (Table 3):")
        lines.append(format_table(report["cosine_table"], [
            ("pair", "pair", "s"), ("mean", "μ", ".4f"), ("std", "σ", ".4f"), ("median", "median", ".4f")]))
        lines.append("Patch norms before/after (Figure 6):")
        cols = [("features", "features", "s"), ("median", "median‖F‖", ".2f"), ("max_median_ratio", "max/med", ".2f"),
                ("share_above_4x", ">4x med", ".4f")]
        if any("implanted_over_median" in r for r in report["norm_table"]):
            cols.append(("implanted_over_median", "implanted/med", ".2f"))
        lines.append(format_table(report["norm_table"], cols))
        lines.append("Gram distance per image (Table 5b): raw D_G and cosine-Gram RMS (gd_cos):")
        lines.append(format_table(report["gram_table"], [
            ("pair", "pair", "s"), ("gd", "D_G mean", ".4g"), ("gd_std", "std", ".3g"), ("gd_median", "median", ".4g"),
            ("gd_cos", "gd_cos", ".4f"), ("gd_cos_std", "std", ".4f")]))
    elif cmd == "similarity":
        lines.append(_header(report, f"Teacher–student similarity on {report['num_images']} held-out toy scenes "
                                     "(§4.3, Table 2)"))
        lines.append(format_table(report["table"], [
            ("run", "run", "s"), ("distiller", "method", "s"), ("teacher_layer", "T", "d"),
            ("student_layer", "S", "d"), ("gd", "GD(cos)", ".4f"), ("gd_raw", "D_G raw", ".4g"),
            ("cka", "CKA", ".4f"), ("cos_teacher", "cos P(S),T", ".4f"), ("cos_target", "cos P(S),F̂", ".4f"),
            ("teacher_max_median", "T max/med", ".2f"), ("student_max_median", "S max/med", ".2f"),
            ("teacher_implanted_over_median", "T impl/med", ".2f"),
            ("student_implanted_over_median", "S impl/med", ".2f"),
            ("projected_implanted_over_median", "P(S) impl/med", ".2f")]))
    elif cmd == "figures":
        lines.append(_header(report, "Feature-map figures (Figure 2, 9, 11, 12)"))
        for run in report["runs"]:
            lines.append(f"{run['name']} ({run['distiller']}): layers {run['layers']}, grid "
                         f"{run['grid'][0]}x{run['grid'][1]}, marked patches {run['marked']}")
    else:  # pragma: no cover - every command is listed above
        raise ValueError(f"unknown report '{cmd}'.")
    if report.get("figures"):
        lines.append("figures: " + ", ".join(report["figures"]))
    return "\n".join(lines)


def save_report(report: dict[str, Any], out_dir: str | Path, figures: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Write ``<command>.json`` and ``<command>.txt`` into ``out_dir`` (figures listed in both)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report["figures"] = [str(p) for p in figures]
    stem = report["command"].replace("-", "_")
    jpath, tpath = out_dir / f"{stem}.json", out_dir / f"{stem}.txt"
    jpath.write_text(json.dumps(to_jsonable(report), indent=2, ensure_ascii=False))
    tpath.write_text(format_report(report) + "\n")
    return {"json": jpath, "text": tpath}
