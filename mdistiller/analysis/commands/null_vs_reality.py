"""``null-vs-reality``: Null directions against the real next block: the approximation gap of §5 (Table 8), with a
random control.

The command module (layout: :mod:`mdistiller.analysis.commands`) of ``mdistiller-analyze null-vs-reality``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Unpack

import matplotlib.colors
import matplotlib.pyplot as plt
import matplotlib.ticker
import torch
from torch import nn

from mdistiller.analysis.inputs import AnalysisModel, block_tokens, default_layer, stamp
from mdistiller.analysis.render import format_table, header
from mdistiller.analysis.similarity import linear_cka, patch_cosine, summary
from mdistiller.analysis.sublayer import instrument_block
from mdistiller.analysis.viz import BASIS_STYLE, finish_figure, minor_log_label
from mdistiller.models.indices import normalize_layers
from mdistiller.singer.nullspace import jacobian_null_basis, linearize_ffn, null_basis, principal_basis, random_basis

from .base import ModelCommandOptions, ModelInputs
from .model_level import run_on_model
from .output import AnalysisResult


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
    layer = default_layer(depth) if layer is None else normalize_layers(layer, depth, "model")[0]
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
        **stamp(am),
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


def plot(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """``null_vs_reality.png``: per basis, linearised response and real-block deviations vs perturbation size."""
    out_dir = Path(out_dir)
    emu = bool(report["emulated_artifacts"])
    rows = report["table"]
    bases = list(dict.fromkeys(r["basis"] for r in rows))
    metrics = [("lin_response", "‖ΔF W̃‖ / ‖F W̃‖ (linearised)", True),
               ("act_response", "same with GELU'(z) kept: W1 diag(GELU') W2", True),
               ("output_l2", "block output: relative L2", True),
               ("residual_l2", "block update Y − X: relative L2", True),
               ("residual_cka", "block update: 1 − linear CKA", True),
               ("attn_l2", "attention update: relative L2", True),
               ("ffn_l2", "FFN update: relative L2", True)]
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5))
    axes = axes.flatten()
    for ax, (key, label, logy) in zip(axes, metrics):
        for b in bases:
            sel = [r for r in rows if r["basis"] == b]
            xs = [r["scale"] for r in sel]
            ys = [1 - r[key] if key.endswith("cka") else r[key] for r in sel]
            name, color = BASIS_STYLE.get(b, (b, None))
            ax.plot(xs, ys, "o-", color=color, label=name)
        if key == "output_l2":
            sel = [r for r in rows if r["basis"] == bases[0]]
            ax.plot([r["scale"] for r in sel], [r["skip_floor"] for r in sel], "k:", label="skip only ‖ΔF‖/‖Y‖")
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xticks(report["scales"], [f"{v:g}" for v in report["scales"]])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(minor_log_label))
        ax.tick_params(axis="y", which="minor", labelsize="small")
        ax.set_xlabel("‖ΔF_i‖ / ‖F_i‖")
        ax.set_title(label)
        ax.grid(alpha=0.3, which="both")
    axes[-1].axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    h2, l2 = axes[2].get_legend_handles_labels()
    axes[-1].legend(handles + h2[-1:], labels + l2[-1:], loc="center", title="perturbation basis")
    return [finish_figure(fig, f"{report['model']}: perturbing F_{report['layer']} along rank-{report['rank']} bases, "
                          f"effect on block {report['next_block']} ({report['num_images']} images)", emu,
                          out_dir / "null_vs_reality.png")]


def format_text(report: Mapping[str, Any]) -> str:
    """The text tables of a ``null-vs-reality`` report (what the command line prints, ``null_vs_reality.txt``)."""
    lines: list[str] = []
    lines.append(header(report, f"Null directions vs the real block {report['next_block']} (§5, Table 8 "
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
    return "\n".join(lines)


def run(
    model: str | Path,
    *,
    layer: int | None = None,
    rank: int = 16,
    scales: Sequence[float] = (0.05, 0.1, 0.2),
    mode: Literal["random", "projection"] = "random",
    jacobian_samples: int = 16,
    principal: bool = True,
    seed: int = 0,
    batch_size: int = 8,
    **options: Unpack[ModelCommandOptions],
) -> AnalysisResult:
    """SiNGER, Jacobian and random bases perturbing ``F_l`` against the real next block (§5, Table 8,
    extended): the ``null-vs-reality`` command, :func:`null_vs_reality_report` with ``layer``, ``rank``,
    ``scales``, ``mode``, ``jacobian_samples``, ``seed`` (``principal=False`` leaves out the principal-basis
    reference row) on ``model`` and the images of ``options`` (the model-level keywords,
    :class:`.base.ModelCommandOptions`, here ``num_images`` 8 by default; run by
    :func:`.model_level.run_on_model`)."""

    def report(x: ModelInputs) -> dict[str, Any]:
        return null_vs_reality_report(x.model, x.images, layer=layer, rank=rank, scales=scales, mode=mode,
                                      jacobian_samples=jacobian_samples, seed=seed, include_principal=principal,
                                      batch_size=batch_size)

    return run_on_model(model, {"num_images": 8, **options}, report, rank=rank,
                        layers=() if layer is None else (layer,), batch_size=batch_size,
                        jacobian_samples=jacobian_samples)
