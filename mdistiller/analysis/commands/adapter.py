"""``adapter``: How the trained SiNGER adapters act: alignment (eq. 13, Table 5a), cosines (Table 3), norms (Figure 6),
Gram distances (Table 5b).

The command module (layout: :mod:`mdistiller.analysis.commands`) of ``mdistiller-analyze adapter``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Unpack

import matplotlib.colors
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import torch

from mdistiller.analysis import runs as run_io
from mdistiller.analysis.artifacts import patch_norms
from mdistiller.analysis.inputs import load_toy_images, stamp
from mdistiller.analysis.refinement import ACCEPT_MAX_RATIO, ACCEPT_MIN_COS, refinement_passes
from mdistiller.analysis.render import format_table, header
from mdistiller.analysis.similarity import gram_distance, patch_cosine, summary
from mdistiller.analysis.subspace import adapter_alignment
from mdistiller.analysis.viz import figure_title, finish_figure, save_figure

from .base import OutputOptions, check_positive
from .output import AnalysisResult, finish


def adapter_report(run_dir: str | Path, num_images: int = 64, batch_size: int = 16) -> dict[str, Any]:
    """How the trained SiNGER adapters act (§4.4–4.5) on held-out toy scenes at the run's input size.

    Per adapted teacher layer ``l``: ``E_prob``/``E_safe`` of ``φ_up`` and ``φ_downᵀ`` against ``W̃_{l+1}`` (eq. 13,
    Table 5a; a random matrix scores ``≈ sqrt(r/d)``, given as ``random_reference``); per-image patch cosine
    ``F_l`` vs ``F̂_l`` and ``F_{l+1}`` vs ``F̂_{l+1}`` (Table 3, μ/σ/median); patch-norm statistics before/after
    (Figure 6); Gram distances ``D_G(F, F̂)`` and ``D_G(F, F^S)`` per image (Table 5b), raw (the paper's
    ``‖G(F_i) − G(F_j)‖_F``) and on cosine Grams divided by the number of patches (``gd_cos``, scale-free).
    """
    cfg, distiller = run_io.load_run_seeded(run_dir)
    inits = distiller.adapter_inits()
    if not inits:
        raise ValueError(f"'{run_dir}' is a {cfg.DISTILLER.TYPE} run; the adapter analysis needs a SiNGER run.")
    images, _ = load_toy_images(int(cfg.DATASET.INPUT_SIZE), num_images)
    got = run_io.run_features(distiller, images, batch_size)
    feats, mask = got["feats"], got["mask"]
    final = distiller.plan.teacher[-1]
    align_rows, cos_rows, norm_rows, gd_rows = [], [], [], []
    norms: dict[str, torch.Tensor] = {}
    cosines: dict[str, torch.Tensor] = {}
    for t in distiller.plan.teacher:
        init = inits[t]
        a = adapter_alignment(init.adapter, init.weight)
        ref = math.sqrt(a["rank"] / init.adapter.dim)
        for m in ("up", "down_T"):
            align_rows.append({"layer": t, "matrix": m, "E_prob": a[m]["E_prob"], "E_safe": a[m]["E_safe"],
                               "rank": a["rank"], "random_reference": ref,
                               "basis_block": init.source_block})
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
                row = {"layer": t, "features": name, **run_io.norm_stats(n)}
                if mask is not None and mask.shape == n.shape:
                    row["implanted_over_median"] = run_io.implanted_ratio(fa if name == a_name else fb, mask)
                norm_rows.append(row)
        for pair, fa, fb in ((f"F_{t} vs F̂_{t}", f, fh), (f"F_{t} vs F^S", f, feats[t]["s"])):
            raw = gram_distance(fa, fb)
            cosd = gram_distance(fa, fb, normalize=True, per_entry=True)
            gd_rows.append({"layer": t, "pair": pair, "gd": summary(raw)["mean"], "gd_std": summary(raw)["std"],
                            "gd_median": summary(raw)["median"], "gd_cos": summary(cosd)["mean"],
                            "gd_cos_std": summary(cosd)["std"]})
    refine_rows = refinement_rows(distiller, images, run_dir)
    return {
        "command": "adapter",
        "run": str(run_dir),
        "run_name": run_io.run_name(cfg, run_dir),
        "model": f"{cfg.DISTILLER.TEACHER} → {cfg.DISTILLER.STUDENT}",
        **stamp(run_io.teacher_emulation(distiller) is not None, run_io.teacher_emulation(distiller)),
        "num_images": num_images,
        "image_size": int(images.shape[-1]),
        "layers": list(distiller.plan.teacher),
        "alignment_table": align_rows,
        "cosine_table": cos_rows,
        "norm_table": norm_rows,
        "gram_table": gd_rows,
        "refinement_table": refine_rows,
        "refinement_curve": refinement_curve(run_dir),
        "_norms": norms,
        "_cos": cosines,
        "_mask": mask,
    }


def plot(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """``adapter_norms.png`` (Figure 6: patch-norm box plots before/after, outliers coloured with inferno) and
    ``adapter_alignment.png`` (eq. 13 bars with the random reference, Table 3 per-image cosines)."""
    out_dir = Path(out_dir)
    emu = bool(report["emulated_artifacts"])
    norms: dict[str, torch.Tensor] = report["_norms"]
    names = list(norms)
    paths = []
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(names)), 3.8))
    data = [norms[k].flatten().numpy() for k in names]
    ax.boxplot(data, widths=0.5, showfliers=False)
    cmap = plt.get_cmap("inferno")
    ratio_norm = matplotlib.colors.Normalize(1.0, max(2.0, max(float(v.max() / np.median(v)) for v in data)))
    for i, vals in enumerate(data, start=1):
        q1, q3 = np.percentile(vals, [25, 75])
        out = vals[vals > q3 + 1.5 * (q3 - q1)]
        if out.size:
            jitter = np.random.default_rng(i).uniform(-0.12, 0.12, out.size)
            ax.scatter(i + jitter, out, s=9, c=out / np.median(vals), cmap=cmap, norm=ratio_norm, zorder=3)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=ratio_norm)
    cb = plt.colorbar(sm, ax=ax, pad=0.01)
    cb.set_label("outlier norm / median of its box")
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel("patch norm ‖F_i‖")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.tick_params(axis="y", which="minor", labelsize="small")
    ax.grid(alpha=0.3, axis="y", which="both")
    title = f"{report['run_name']}: patch norms before (F) / after (F̂) the adapter (Figure 6 style)"
    ax.set_title(figure_title(title, emu))
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir / "adapter_norms.png"))

    rows = report["alignment_table"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    ax = axes[0]
    labels = [f"{'φ_up' if r['matrix'] == 'up' else 'φ_downᵀ'} l={r['layer']}" for r in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["E_safe"] for r in rows], 0.4, label="E_safe (null basis)", color="tab:green")
    ax.bar(x + 0.2, [r["E_prob"] for r in rows], 0.4, label="E_prob (principal basis)", color="tab:red")
    ax.axhline(rows[0]["random_reference"], color="k", ls=":", label="random ≈ sqrt(r/d)")
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("alignment (eq. 13)")
    ax.legend(ncol=3, loc="upper center")
    ax.set_title("adapter alignment with W̃ of the next block (1 / 0 at init)")
    ax = axes[1]
    cos: dict[str, torch.Tensor] = report["_cos"]
    ax.boxplot([v.numpy() for v in cos.values()], widths=0.5)
    ax.set_xticks(range(1, len(cos) + 1), list(cos))
    ax.set_ylabel("per-image mean patch cosine")
    ax.set_title("information preservation (Table 3)")
    ax.grid(alpha=0.3, axis="y")
    title = f"{report['run_name']}: SiNGER adapters ({report['num_images']} held-out images)"
    paths.append(finish_figure(fig, title, emu, out_dir / "adapter_alignment.png"))
    curve = report.get("refinement_curve") or []
    if len(curve) > 1:
        paths.append(plot_refinement_curve(curve, report["run_name"], emu, out_dir / "adapter_refinement.png"))
    return paths


#: legend labels of the refinement curves (``agree/refine/L<l>/<stat>``), ``l`` the layer and ``n`` = l + 1
REFINEMENT_LABELS = {
    "ratio_after_max": "layer {l}: worst outlier ‖F̂‖ / α-quantile",
    "cos_inlier": "layer {l}: inlier cos(F̂, F)",
    "cos_next": "layer {l}: inlier cos after block {n}",
}


def plot_refinement_curve(curve: list[dict[str, Any]], run_name: str, emu: bool, path: Path) -> Path:
    """Outlier ratio after refinement (left) and inlier cosines (right) per layer over the logged training steps."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    layers = sorted({k.split("/")[0] for row in curve for k in row if k.startswith("L")}, key=lambda s: int(s[1:]))
    for layer in layers:
        steps = [r["step"] for r in curve if f"{layer}/cos_inlier" in r]
        block = int(layer[1:])
        for key, ax, style in (("ratio_after_max", axes[0], "-"), ("cos_inlier", axes[1], "-"),
                               ("cos_next", axes[1], "--")):
            vals = [r.get(f"{layer}/{key}") for r in curve if f"{layer}/cos_inlier" in r]
            if any(v is not None for v in vals):
                ax.plot(steps, vals, style, marker="o", ms=3, label=REFINEMENT_LABELS[key].format(l=block, n=block + 1))
    axes[0].axhline(ACCEPT_MAX_RATIO, color="k", ls=":", label=f"acceptance (≤ {ACCEPT_MAX_RATIO:g})")
    axes[0].set_ylabel("worst outlier ‖F̂‖ / α-quantile")
    axes[1].axhline(ACCEPT_MIN_COS, color="k", ls=":", label=f"acceptance (≥ {ACCEPT_MIN_COS:g})")
    axes[1].set_ylabel("inlier cosine to the teacher")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend()
    return finish_figure(fig, f"{run_name}: refinement over training (held-out batch)", emu, path)


def refinement_rows(distiller, images: torch.Tensor, run_dir: str | Path) -> list[dict[str, Any]]:
    """``SiNGER.refinement_stats`` (outliers before/after vs the α-quantile; inlier cosines at l, l+1, final) for every
    saved checkpoint of the run (``checkpoints/*.pth``, oldest step first; the weights loaded last stay loaded)."""
    from mdistiller.engine.checkpoint import load_checkpoint

    states = []
    for path in sorted(Path(run_dir, "checkpoints").glob("*.pth")):
        state = load_checkpoint(path)
        states.append((int(state.get("step", 0)), path.name, state["model"]))
    states.sort(key=lambda x: x[0])
    rows = []
    for step, name, model_state in states or [(None, "loaded", None)]:
        if model_state is not None:
            distiller.load_state_dict(model_state)
        for layer, stats in distiller.refinement_stats(images).items():
            rows.append({"checkpoint": name, "step": step, "layer": layer, **stats,
                         "pass": refinement_passes({layer: stats})})
    return rows


def refinement_curve(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``agree/refine/L<l>/<stat>`` records the trainer logged on its held-out batch, one row per step."""
    from mdistiller.engine.metrics_file import read_metrics

    rows = []
    for rec in read_metrics(run_dir):
        stats = {k.removeprefix("agree/refine/"): v for k, v in rec.items() if k.startswith("agree/refine/")}
        if stats:
            rows.append({"step": rec.get("step"), **stats})
    return rows


def format_text(report: Mapping[str, Any]) -> str:
    """The text tables of a ``adapter`` report (what the command line prints and ``adapter.txt`` holds)."""
    lines: list[str] = []
    lines.append(header(report, f"SiNGER adapters of run {report['run_name']} ({report['num_images']} held-out "
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
    lines.append(f"Refinement per saved checkpoint (outliers: emulated-artifact patches, else the patches above the "
                 f"α-quantile of F; pass = worst outlier ≤ {ACCEPT_MAX_RATIO}× the quantile of F̂ and inlier cosines "
                 f"≥ {ACCEPT_MIN_COS} at l and l+1):")
    lines.append(format_table(report["refinement_table"], [
        ("checkpoint", "ckpt", "s"), ("step", "step", "s"), ("layer", "layer", "d"),
        ("ratio_before", "‖F‖/q", ".2f"), ("ratio_after", "‖F̂‖/q", ".2f"), ("ratio_after_max", "max", ".2f"),
        ("cos_inlier", "cos@l", ".4f"), ("cos_next", "cos@l+1", ".4f"), ("cos_final", "cos@final", ".4f"),
        ("pass", "pass", "s")]))
    return "\n".join(lines)


def run(run_dir: str | Path, *, num_images: int = 64, batch_size: int = 8,
        **output: Unpack[OutputOptions]) -> AnalysisResult:
    """How the trained adapters of the SiNGER run ``run_dir`` act on ``num_images`` held-out toy scenes (eq. 13,
    Table 3, 5a, 5b, Figure 6), and the refinement per saved checkpoint: the ``adapter`` command
    (:func:`adapter_report`), written as ``output`` says (:class:`.base.OutputOptions`)."""
    check_positive(dict(num_images=num_images, batch_size=batch_size))
    return finish(lambda: adapter_report(run_dir, num_images=num_images, batch_size=batch_size), source=run_dir,
                  **output)
