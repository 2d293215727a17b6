"""``nullspace``: Singular spectra of the linearised FFN W̃_l (App. A.2, eq. 18-19, Figure 8) and sub-layer changes
(App. A.1, Figure 7).

The command module (layout: :mod:`mdistiller.analysis.commands`) of ``mdistiller-analyze nullspace``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Unpack

import matplotlib.pyplot as plt
import numpy as np
import torch

from mdistiller.analysis.inputs import AnalysisModel, representative_layers, stamp
from mdistiller.analysis.render import format_table, header
from mdistiller.analysis.similarity import summary
from mdistiller.analysis.sublayer import sublayer_profile
from mdistiller.analysis.viz import finish_figure
from mdistiller.singer.nullspace import k_energy, k_eps, linearize_ffn, singular_spectrum

from .base import ModelCommandOptions, ModelInputs
from .model_level import run_on_model
from .output import AnalysisResult


def nullspace_report(
    am: AnalysisModel,
    images: torch.Tensor | None = None,
    eps: float = 0.05,
    rho: float = 0.999,
    rank: int = 16,
    include_norm: bool = False, include_layerscale: bool = False,
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
        **stamp(am),
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


def plot(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """``nullspace_spectra.png`` (Figure 8: σ_k of ``W̃_l`` with ε, ``k_energy``, ``k_ε``) and
    ``nullspace_sublayer.png`` (Figure 7: Δ_SA, Δ_FFN, G_FFN1, G_FFN2 box plots per layer)."""
    out_dir = Path(out_dir)
    emu = bool(report["emulated_artifacts"])
    spectra: dict[int, torch.Tensor] = report["_spectra"]
    table = {r["layer"]: r for r in report["spectrum_table"]}
    eps = report["eps"]
    paths = []
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    flat = axes.flatten()
    for ax, layer in zip(flat[:4], report["representative_layers"]):
        s = spectra[layer].numpy()
        row = table[layer]
        k = np.arange(1, len(s) + 1)
        ax.semilogy(k, np.maximum(s, 1e-12), color="tab:blue", lw=1.5, label="σ_k")
        ax.axhline(eps, color="tab:green", lw=1.2, label=f"ε = {eps:g}")
        ax.axvline(row["k_energy"], color="tab:red", ls="--", lw=1.2, label=f"k_energy = {row['k_energy']}")
        if row["k_eps"] is not None:
            ax.axvline(row["k_eps"], color="tab:red", lw=1.2, label=f"k_ε = {row['k_eps']} (r_ε = {row['r_eps']})")
        else:
            ax.plot([], [], color="tab:red", lw=1.2, label="k_ε: no σ ≤ ε (r_ε = 0)")
        ax.set_title(f"W̃ of block {layer} (d = {row['d']})")
        ax.set_xlabel("index k")
        ax.set_ylabel("singular value σ_k")
        ax.legend(loc="lower left")
        ax.grid(alpha=0.3, which="both")
    for ax in flat[len(report["representative_layers"]) : 4]:
        ax.axis("off")
    ax = flat[4]
    cmap = plt.get_cmap("viridis")
    n_layers = len(spectra)
    for layer, s in spectra.items():
        ax.semilogy(np.arange(1, len(s) + 1), np.maximum(s.numpy(), 1e-12), color=cmap(layer / max(1, n_layers - 1)),
                    lw=1)
    ax.axhline(eps, color="tab:green", lw=1.2)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, max(1, n_layers - 1)))
    cb = plt.colorbar(sm, ax=ax, ticks=sorted(spectra))
    cb.set_label("block")
    ax.set_title("all blocks")
    ax.set_xlabel("index k")
    ax.set_ylabel("σ_k")
    ax.grid(alpha=0.3, which="both")
    ax = flat[5]
    layers = sorted(table)
    ax.plot(layers, [table[x]["k_energy"] for x in layers], "o-", label="k_energy(ρ)")
    ax.plot(layers, [table[x]["k_eps"] if table[x]["k_eps"] is not None else np.nan for x in layers], "s-",
            label="k_ε")
    ax.plot(layers, [table[x]["r_eps"] for x in layers], "^-", label="r_ε")
    ax.axhline(table[layers[0]]["d"], color="k", ls=":", label="d")
    ax.set_xlabel("block")
    ax.set_ylabel("index / dimension")
    ax.set_title(f"ρ = {report['rho']:g}, ε = {eps:g}")
    ax.legend()
    ax.grid(alpha=0.3)
    paths.append(finish_figure(fig, f"{report['model']}: singular spectra of the linearised FFN W̃ = W_FFN1 W_FFN2", emu,
                               out_dir / "nullspace_spectra.png"))

    sub: dict[int, dict[str, torch.Tensor]] = report["_sublayer"]
    if sub:
        keys = [("delta_sa", "Δ_SA = ‖x_SA − x_in‖ / ‖x_in‖"), ("delta_ffn", "Δ_FFN = ‖x_out − x_SA‖ / ‖x_SA‖"),
                ("g_ffn1", "G_FFN1 = ‖a_1‖ / ‖h_1‖"), ("g_ffn2", "G_FFN2 = ‖z_2‖ / ‖a_1‖")]
        layers = sorted(sub)
        fig, axes = plt.subplots(1, 4, figsize=(15, 3.3))
        for ax, (key, label) in zip(axes, keys):
            ax.boxplot([sub[x][key].numpy() for x in layers], positions=layers, widths=0.6, showfliers=True,
                       flierprops={"markersize": 2})
            ax.set_title(label)
            ax.set_xlabel("block")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("per-image mean over patches")
        paths.append(finish_figure(fig, f"{report['model']}: sub-layer changes on {report['num_images']} images", emu,
                                   out_dir / "nullspace_sublayer.png"))
    return paths


def format_text(report: Mapping[str, Any]) -> str:
    """The text tables of a ``nullspace`` report (what the command line prints and ``nullspace.txt`` holds)."""
    lines: list[str] = []
    lines.append(header(report, "Singular spectra of the linearised FFN W̃_l (App. A.2, Figure 8)"))
    lines.append(f"eps = {report['eps']:g} (absolute), rho = {report['rho']:g}, rank r = {report['rank']}")
    lines.append(format_table(report["spectrum_table"], [
        ("layer", "layer", "d"), ("d", "d", "d"), ("sigma_max", "σ_1", ".3g"), ("sigma_min", "σ_d", ".3g"),
        ("k_energy", "k_energy", "d"), ("tail_energy_dim", "d-k_energy", "d"), ("k_eps", "k_ε", "d"),
        ("r_eps", "r_ε", "d"), ("sigma_rank", "σ_{d-r+1}", ".3g"), ("rel_sigma_rank", "σ_{d-r+1}/σ_1", ".2e")]))
    if report["sublayer_table"]:
        lines.append("")
        lines.append(header(report, f"Sub-layer changes, mean (std) over {report['num_images']} images "
                                     "(App. A.1, Figure 7)"))
        rows = [{"layer": r["layer"], **{k: f"{r[k]:.3f} ({r[k + '_std']:.3f})"
                                          for k in ("delta_sa", "delta_ffn", "g_ffn1", "g_ffn2")}}
                for r in report["sublayer_table"]]
        lines.append(format_table(rows, [("layer", "layer", "d"), ("delta_sa", "Δ_SA", "s"),
                                         ("delta_ffn", "Δ_FFN", "s"), ("g_ffn1", "G_FFN1", "s"),
                                         ("g_ffn2", "G_FFN2", "s")]))
    return "\n".join(lines)


def run(
    model: str | Path,
    *,
    eps: float = 0.05,
    rho: float = 0.999,
    rank: int = 16,
    include_norm: bool = False,
    include_layerscale: bool = False,
    batch_size: int = 8,
    **options: Unpack[ModelCommandOptions],
) -> AnalysisResult:
    """Singular spectra of every block's ``W̃_l`` and the sub-layer changes (App. A, Figure 7-8, eq. 18-19):
    the ``nullspace`` command, :func:`nullspace_report` with ``eps``, ``rho``, ``rank``, ``include_norm``,
    ``include_layerscale`` on ``model`` and the images of ``options`` (the model-level keywords,
    :class:`.base.ModelCommandOptions`; run by :func:`.model_level.run_on_model`)."""

    def report(x: ModelInputs) -> dict[str, Any]:
        return nullspace_report(x.model, x.images, eps=eps, rho=rho, rank=rank, include_norm=include_norm,
                                include_layerscale=include_layerscale, batch_size=batch_size)

    return run_on_model(model, options, report, rank=rank, batch_size=batch_size)
