"""``subspace``: Subspace energy of patch tokens against their norm (App. I, Figure 13).

The command module (layout: :mod:`mdistiller.analysis.commands`) of ``mdistiller-analyze subspace``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Unpack

import matplotlib.colors
import matplotlib.pyplot as plt
import matplotlib.ticker
import torch

from mdistiller.analysis.artifacts import patch_norms
from mdistiller.analysis.inputs import AnalysisModel, block_tokens, default_layer, mean_of, stamp
from mdistiller.analysis.render import format_table, header
from mdistiller.analysis.subspace import pearson, subspace_energy
from mdistiller.analysis.viz import finish_figure
from mdistiller.models.indices import normalize_layers
from mdistiller.singer.nullspace import linearize_ffn, singular_spectrum

from .base import ModelCommandOptions, ModelInputs
from .model_level import run_on_model
from .output import AnalysisResult


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
        layers = [default_layer(depth), depth - 1]
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
                "E_null_outliers": mean_of(e_null, outlier), "E_null_rest": mean_of(e_null, ~outlier),
                "E_prin_outliers": mean_of(e_prin, outlier), "E_prin_rest": mean_of(e_prin, ~outlier),
                "num_outliers": int(outlier.sum().item()), "random_reference": r / d,
            })
    if not rows:
        raise ValueError(f"no rank in {list(ranks)} fits the model width (1 <= r <= d/2); pass smaller --ranks.")
    return {
        "command": "subspace",
        "model": am.label,
        **stamp(am),
        "layers": layers,
        "ranks": [r for r in ranks if any(row["r"] == r for row in rows)],
        "basis_block": basis_block,
        "outlier_k": outlier_k,
        "num_images": int(images.shape[0]),
        "image_size": int(images.shape[-1]),
        "table": rows,
        "_data": data,
    }


def plot(report: Mapping[str, Any], out_dir: str | Path, max_points: int = 2000) -> list[Path]:
    """``subspace.png`` (Figure 13): ``E_null`` and ``E_prin`` of every patch vs its norm for each ``r``, and the
    correlations ``corr(‖F‖, E_U)`` vs ``r``."""
    out_dir = Path(out_dir)
    emu = bool(report["emulated_artifacts"])
    data = report["_data"]
    layers = report["layers"]
    ranks = report["ranks"]
    cmap = plt.get_cmap("plasma")
    fig, axes = plt.subplots(len(layers), 3, figsize=(13, 3.2 * len(layers)), squeeze=False)
    gen = torch.Generator().manual_seed(0)
    for row, layer in enumerate(layers):
        dat = data[layer]
        n = dat["norms"]
        keep = torch.randperm(n.numel(), generator=gen)[:max_points]
        for col, kind in enumerate(("null", "prin")):
            ax = axes[row][col]
            for j, r in enumerate(ranks):
                if r not in dat["energy"]:
                    continue
                e = dat["energy"][r][kind]
                ax.scatter(n[keep].numpy(), e[keep].numpy(), s=3, alpha=0.5, color=cmap(j / max(1, len(ranks) - 1)),
                           label=f"r = {r}")
            ax.set_yscale("log")
            ax.set_xlabel("patch norm ‖F_i‖")
            ax.set_ylabel(f"E_{kind} (energy share)")
            ax.set_title(f"block {layer}: {'null' if kind == 'null' else 'principal'} basis")
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(markerscale=3)
        ax = axes[row][2]
        sel = [r for r in report["table"] if r["layer"] == layer]
        ax.plot([r["r"] for r in sel], [r["corr_null"] for r in sel], "o-", color="tab:green",
                label="corr(‖F‖, E_null)")
        ax.plot([r["r"] for r in sel], [r["corr_prin"] for r in sel], "s-", color="tab:red",
                label="corr(‖F‖, E_prin)")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("rank r")
        ax.set_ylabel("Pearson correlation")
        ax.set_title(f"block {layer}: correlations (W̃ of block {sel[0]['basis_block']})")
        ax.legend()
        ax.grid(alpha=0.3)
    return [finish_figure(fig, f"{report['model']}: subspace energy vs patch norm ({report['num_images']} images)", emu,
                          out_dir / "subspace.png")]


def format_text(report: Mapping[str, Any]) -> str:
    """The text tables of a ``subspace`` report (what the command line prints and ``subspace.txt`` holds)."""
    lines: list[str] = []
    lines.append(header(report, "Subspace energy vs patch norm (App. I, Figure 13)"))
    lines.append(f"W̃ of block {'l+1' if report['basis_block'] == 'next' else 'l'}; outliers = patches above "
                 f"{report['outlier_k']:g}x the image median; random reference E = r/d")
    lines.append(format_table(report["table"], [
        ("layer", "layer", "d"), ("basis_block", "W̃ of", "d"), ("r", "r", "d"),
        ("corr_null", "corr(‖F‖,E_null)", "+.3f"), ("corr_prin", "corr(‖F‖,E_prin)", "+.3f"),
        ("E_null_outliers", "E_null out", ".4f"), ("E_null_rest", "E_null rest", ".4f"),
        ("E_prin_outliers", "E_prin out", ".4f"), ("E_prin_rest", "E_prin rest", ".4f"),
        ("random_reference", "r/d", ".4f"), ("num_outliers", "#out", "d")]))
    return "\n".join(lines)


def run(
    model: str | Path,
    *,
    layers: Sequence[int] | None = None,
    ranks: Sequence[int] = (4, 8, 16, 32, 64),
    basis_block: Literal["next", "same"] = "next",
    outlier_k: float = 4.0,
    batch_size: int = 8,
    **options: Unpack[ModelCommandOptions],
) -> AnalysisResult:
    """Subspace energy of patch tokens in ``W̃``'s principal and null bases against their norm (App. I,
    Figure 13): the ``subspace`` command, :func:`subspace_report` with ``layers``, ``ranks``, ``basis_block``,
    ``outlier_k`` on ``model`` and the images of ``options`` (the model-level keywords,
    :class:`.base.ModelCommandOptions`; run by :func:`.model_level.run_on_model`)."""

    def report(x: ModelInputs) -> dict[str, Any]:
        return subspace_report(x.model, x.images, layers=layers, ranks=ranks, basis_block=basis_block,
                               outlier_k=outlier_k, batch_size=batch_size)

    return run_on_model(model, options, report, layers=layers or (), batch_size=batch_size, ranks=ranks)
