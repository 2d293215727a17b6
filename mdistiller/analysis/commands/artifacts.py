"""``artifacts``: Per-layer patch-norm artifacts and the distillation-layer rule (§3.1.1, §4.5, Table 7, App. C).

The command module (layout: :mod:`mdistiller.analysis.commands`) of ``mdistiller-analyze artifacts``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Unpack

import matplotlib.colors
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import torch

from mdistiller.analysis.artifacts import LAYER_RULE, layer_artifact_table, patch_norms, recommend_layers
from mdistiller.analysis.inputs import EMULATED_LABEL, AnalysisModel, block_tokens, representative_layers, stamp
from mdistiller.analysis.render import format_table, header
from mdistiller.analysis.viz import finish_figure, show_image, show_map

from .base import ModelCommandOptions, ModelInputs
from .model_level import run_on_model
from .output import AnalysisResult


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
        **stamp(am),
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


def plot(report: Mapping[str, Any], out_dir: str | Path, max_images: int = 4) -> list[Path]:
    """``artifacts_trend.png`` (statistics vs layer, recommended layers), ``artifacts_hist.png`` (patch-norm
    histograms relative to the image median) and ``artifacts_normmaps.png`` (input + norm maps)."""
    out_dir = Path(out_dir)
    emu = bool(report["emulated_artifacts"])
    rows = report["table"]
    layers = [r["layer"] for r in rows]
    rec = report["recommendation"]
    implant = (report.get("emulation") or {}).get("layer")
    paths = []

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(layers, [r["median"] for r in rows], "o-", label="median ‖F_i‖")
    axes[0].plot(layers, [r["mean"] for r in rows], "s--", label="mean ‖F_i‖")
    axes[0].set_ylabel("patch norm (log)")
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axes[0].yaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False))  # thins itself
    axes[0].set_title("patch-norm level")
    axes[1].plot(layers, [r["max_median_ratio"] for r in rows], "o-", color="tab:red")
    axes[1].axhline(rec["thresholds"]["ratio_threshold"], color="k", ls=":", label="rule threshold")
    axes[1].set_ylabel("max / median (mean over images)")
    axes[1].set_title("outlier strength")
    # shares are 0 or at least one patch in all of them: a log axis above that, linear (with 0 itself) below
    one_patch = 1.0 / max(1, report["num_images"] * report["grid"][0] * report["grid"][1])
    shares = {kk: [r[f"share_above_{kk:g}x"] for r in rows] for kk in report["k"]}
    for i, (kk, vals) in enumerate(shares.items()):  # shrinking markers: curves lying on each other stay visible
        axes[2].plot(layers, vals, marker="osD^v"[i % 5], ms=max(3.0, 8.0 - 2.0 * i), label=f"> {kk:g}x median")
    share_threshold = rec["thresholds"]["share_threshold"]
    axes[2].axhline(share_threshold, color="k", ls=":", label="rule threshold")
    axes[2].set_yscale("symlog", linthresh=one_patch, linscale=0.6)
    top = max([share_threshold, *(v for vals in shares.values() for v in vals)])
    axes[2].set_ylim(0, min(1.0, top * 3))
    axes[2].set_ylabel("share of patches (0 = none)")
    axes[2].set_title(f"share of high-norm patches (log above 1 patch in {round(1 / one_patch)})")
    for ax in axes:
        rec_label = "recommended" if rec["artifacts_found"] else "default layers (no artifacts)"
        for i, layer in enumerate(rec["layers"]):
            ax.axvline(layer, color="tab:green", alpha=0.5, lw=3, label=rec_label if i == 0 else None)
        if implant is not None:
            ax.axvline(implant, color="tab:purple", ls="--", label="implanted")
        ax.set_xlabel("block (0-based)")
        ax.set_xticks(layers)
        ax.grid(alpha=0.3)
        ax.legend()
    title = (f"{report['model']}: patch-norm artifacts on {report['num_images']} {report['images']} "
             f"images ({report['image_size']} px)")
    paths.append(finish_figure(fig, title, emu, out_dir / "artifacts_trend.png"))

    norms: dict[int, torch.Tensor] = report["_norms"]
    show = sorted(set(representative_layers(len(layers))) | set(rec["layers"])
                  | ({implant} if implant is not None else set()))[:6]
    fig, axes = plt.subplots(1, len(show), figsize=(2.6 * len(show), 2.8), squeeze=False)
    for ax, layer in zip(axes[0], show):
        n = norms[layer].double()
        rel = (n / torch.quantile(n, 0.5, dim=1, keepdim=True)).flatten().numpy()
        bins = np.logspace(np.log10(max(rel.min(), 1e-2)), np.log10(max(rel.max(), 1.01)), 40)
        ax.hist(rel, bins=bins, color="tab:blue", alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        right = max(bins[-1] * 1.1, rec["thresholds"]["share_k"] * 1.2)
        ax.set_xlim(bins[0] / 1.1, right)
        ticks = [t for t in (0.25, 0.5, 1, 2, 4, 10, 20, 50, 100) if bins[0] / 1.1 <= t <= right]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.axvline(rec["thresholds"]["share_k"], color="tab:red", ls=":", label=f"{rec['thresholds']['share_k']:g}x")
        ax.set_title(f"block {layer}")
        ax.set_xlabel("‖F_i‖ / image median")
    axes[0][0].set_ylabel("patches")
    axes[0][0].legend()
    paths.append(finish_figure(fig, f"{report['model']}: patch-norm distributions", emu,
                               out_dir / "artifacts_hist.png"))

    images: torch.Tensor = report["_images"]
    grid = report["grid"]
    probe = rec["onset"] if rec["onset"] is not None else layers[-1]
    n = norms[probe].double()
    order = torch.argsort(n.max(dim=1).values / torch.quantile(n, 0.5, dim=1), descending=True)
    picks = order[: min(max_images, len(order))].tolist()
    map_layers = sorted(set(representative_layers(len(layers))) | set(rec["layers"]))[:5]
    fig, axes = plt.subplots(len(picks), 1 + len(map_layers), figsize=(2.3 * (1 + len(map_layers)), 2.1 * len(picks)),
                             squeeze=False)
    names = report.get("image_names") or []
    for row, i in enumerate(picks):
        show_image(axes[row][0], images[i], names[i] if i < len(names) else f"image {i}")
        for col, layer in enumerate(map_layers, start=1):
            m = norms[layer][i].reshape(grid[0], grid[1]).numpy()
            show_map(axes[row][col], m, f"‖F_{layer}‖ max/med {m.max() / np.median(m):.1f}", cmap="inferno")
    paths.append(finish_figure(fig, f"{report['model']}: patch-norm maps (images with the strongest outliers at block "
                               f"{probe})", emu, out_dir / "artifacts_normmaps.png"))
    return paths


def format_text(report: Mapping[str, Any]) -> str:
    """The text tables of a ``artifacts`` report (what the command line prints and ``artifacts.txt`` holds)."""
    lines: list[str] = []
    lines.append(header(report, "Patch-norm artifacts per layer (§3.1.1, §4.5)"))
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
    return "\n".join(lines)


def run(
    model: str | Path,
    *,
    k: Sequence[float] = (2, 4, 10),
    ratio_threshold: float = 4.0,
    share_threshold: float = 0.01,
    share_k: float = 4.0,
    batch_size: int = 8,
    **options: Unpack[ModelCommandOptions],
) -> AnalysisResult:
    """Patch-norm artifacts of every block and the distillation-layer recommendation (§3.1.1, §4.5, Table 7,
    App. C): the ``artifacts`` command, :func:`artifacts_report` with ``k``, ``ratio_threshold``,
    ``share_threshold``, ``share_k`` on ``model`` and the images of ``options`` (the model-level keywords,
    :class:`.base.ModelCommandOptions`; run by :func:`.model_level.run_on_model`)."""

    def report(x: ModelInputs) -> dict[str, Any]:
        return artifacts_report(x.model, x.images, x.names, x.image_set, k=k, ratio_threshold=ratio_threshold,
                                share_threshold=share_threshold, share_k=share_k, batch_size=batch_size)

    return run_on_model(model, options, report, batch_size=batch_size)
