"""Figures of the analysis reports (matplotlib, Agg backend): one function per report of
:mod:`mdistiller.analysis.reports`, plus the map helpers they share (patch-norm maps, 3-component PCA maps,
similarity to a marked patch).

Every figure made from emulated artifacts says "emulated artifacts" in its title. Figures are written
at a modest resolution (PNG, ``dpi=90``) so each stays small enough to commit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .reports import EMULATED_LABEL, representative_layers  # noqa: E402

__all__ = [
    "norm_map",
    "pca_map",
    "similarity_map",
    "plot_artifacts",
    "plot_nullspace",
    "plot_null_vs_reality",
    "plot_subspace",
    "plot_adapter",
    "plot_similarity",
    "plot_feature_maps",
    "write_figures",
]

DPI = 90
MAX_BYTES = 150_000
BASIS_STYLE = {
    "singer_null": ("SiNGER null (W̃)", "tab:green"),
    "singer_null_ln": ("SiNGER null (W̃ with LN γ, LayerScale)", "tab:olive"),
    "jacobian": ("Jacobian null", "tab:blue"),
    "random": ("random", "tab:gray"),
    "principal": ("principal (W̃)", "tab:red"),
}


# ---------------------------------------------------------------------------------------------------- helpers
def _title(text: str, emulated: bool) -> str:
    return f"{text} ({EMULATED_LABEL})" if emulated else text


def _save(fig: plt.Figure, path: Path) -> Path:
    """Save at :data:`DPI`; a PNG above :data:`MAX_BYTES` is re-encoded with a 256-colour palette (plots need no
    more), which keeps every figure small enough to commit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    if path.stat().st_size > MAX_BYTES:
        from PIL import Image

        with Image.open(path) as im:
            small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        small.save(path, optimize=True)
    return path


def _finish(fig: plt.Figure, title: str, emulated: bool, path: Path) -> Path:
    """Give ``fig`` its suptitle (:func:`_title`, fontsize 10), lay it out and :func:`_save` it to ``path``."""
    fig.suptitle(_title(title, emulated), fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _grid_of(n: int) -> tuple[int, int]:
    h = int(math.isqrt(n))
    if h * h != n:
        raise ValueError(f"{n} patches do not form a square grid; pass the grid explicitly.")
    return h, h


def _as_grid(values: torch.Tensor, grid: Sequence[int] | None) -> np.ndarray:
    h, w = grid if grid is not None else _grid_of(values.shape[0])
    return values.detach().double().reshape(h, w, *values.shape[1:]).cpu().numpy()


def norm_map(patches: torch.Tensor, grid: Sequence[int] | None = None) -> np.ndarray:
    """Per-patch ℓ2 norm of ``[P, d]`` tokens as an ``[h, w]`` map (Figure 2, 9, 10)."""
    return _as_grid(patches.double().norm(dim=-1), grid)


def signed_norm_map(delta: torch.Tensor, ref: torch.Tensor, grid: Sequence[int] | None = None) -> np.ndarray:
    """``‖ΔF_i‖`` signed by ``cos(ΔF_i, F_i)`` (Figure 4a): negative where the adapter shrinks the token."""
    cos = torch.nn.functional.cosine_similarity(delta.double(), ref.double(), dim=-1)
    return _as_grid(delta.double().norm(dim=-1) * torch.sign(cos), grid)


def pca_map(patches: torch.Tensor, grid: Sequence[int] | None = None) -> np.ndarray:
    """First three principal components of ``[P, d]`` tokens as an RGB ``[h, w, 3]`` map in ``[0, 1]`` (Figure 9).

    Components are min–max scaled independently; each sign is fixed so its largest-magnitude score is positive.
    """
    x = patches.detach().double()
    x = x - x.mean(dim=0, keepdim=True)
    k = min(3, *x.shape)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    scores = x @ vh[:k].T
    signs = torch.sign(scores.gather(0, scores.abs().argmax(dim=0, keepdim=True)))
    scores = scores * torch.where(signs == 0, torch.ones_like(signs), signs)
    lo, hi = scores.min(dim=0).values, scores.max(dim=0).values
    rgb = (scores - lo) / (hi - lo).clamp_min(1e-12)
    if k < 3:
        rgb = torch.cat([rgb, rgb.new_zeros(rgb.shape[0], 3 - k)], dim=1)
    return _as_grid(rgb, grid)


def similarity_map(patches: torch.Tensor, index: int, grid: Sequence[int] | None = None,
                   other: torch.Tensor | None = None) -> np.ndarray:
    """Cosine similarity of patch ``index`` to every patch (of ``other`` if given, Figure 11) as an ``[h, w]`` map."""
    src = patches[index].double()
    dst = (other if other is not None else patches).double()
    return _as_grid(torch.nn.functional.cosine_similarity(dst, src[None], dim=-1), grid)


def _minor_log_label(value: float, _pos: int) -> str:
    """Label the 2× and 5× minor ticks of a log axis with plain numbers (readable narrow log ranges)."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:.3g}" if round(mantissa) in (2, 5) and abs(mantissa - round(mantissa)) < 1e-6 else ""


def _show(ax: plt.Axes, img: np.ndarray, title: str, cmap: str = "viridis", vmin: float | None = None,
          vmax: float | None = None, colorbar: bool = True, mark: Sequence[int] | None = None) -> None:
    im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    if mark is not None:
        ax.plot([mark[1]], [mark[0]], marker="x", color="red", markersize=8, markeredgewidth=2)
    if colorbar and img.ndim == 2:
        cb = plt.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        cb.ax.tick_params(labelsize=6)


def _show_image(ax: plt.Axes, image: torch.Tensor, title: str, mark: Sequence[int] | None = None,
                grid: Sequence[int] | None = None) -> None:
    arr = image.detach().permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    ax.imshow(arr)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    if mark is not None and grid is not None:
        h, w = arr.shape[:2]
        ax.plot([(mark[1] + 0.5) * w / grid[1]], [(mark[0] + 0.5) * h / grid[0]], marker="x", color="red",
                markersize=9, markeredgewidth=2.5)


# ---------------------------------------------------------------------------------------------------- artifacts
def plot_artifacts(report: Mapping[str, Any], out_dir: str | Path, max_images: int = 4) -> list[Path]:
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
    axes[0].set_title("patch-norm level", fontsize=9)
    axes[1].plot(layers, [r["max_median_ratio"] for r in rows], "o-", color="tab:red")
    axes[1].axhline(rec["thresholds"]["ratio_threshold"], color="k", ls=":", label="rule threshold")
    axes[1].set_ylabel("max / median (mean over images)")
    axes[1].set_title("outlier strength", fontsize=9)
    for kk in report["k"]:
        key = f"share_above_{kk:g}x"
        axes[2].plot(layers, [max(r[key], 1e-5) for r in rows], "o-", label=f"> {kk:g}x median")
    axes[2].axhline(rec["thresholds"]["share_threshold"], color="k", ls=":", label="rule threshold")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("share of patches")
    axes[2].set_title("share of high-norm patches (floor 1e-5)", fontsize=9)
    for ax in axes:
        rec_label = "recommended" if rec["artifacts_found"] else "default layers (no artifacts)"
        for i, layer in enumerate(rec["layers"]):
            ax.axvline(layer, color="tab:green", alpha=0.5, lw=3, label=rec_label if i == 0 else None)
        if implant is not None:
            ax.axvline(implant, color="tab:purple", ls="--", label="implanted")
        ax.set_xlabel("block (0-based)")
        ax.set_xticks(layers)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    paths.append(_finish(fig, f"{report['model']}: patch-norm artifacts on {report['num_images']} {report['images']} "
                              f"images ({report['image_size']} px)", emu, out_dir / "artifacts_trend.png"))

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
        ax.set_title(f"block {layer}", fontsize=9)
        ax.set_xlabel("‖F_i‖ / image median", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("patches")
    axes[0][0].legend(fontsize=7)
    paths.append(_finish(fig, f"{report['model']}: patch-norm distributions", emu, out_dir / "artifacts_hist.png"))

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
        _show_image(axes[row][0], images[i], names[i] if i < len(names) else f"image {i}")
        for col, layer in enumerate(map_layers, start=1):
            m = norms[layer][i].reshape(grid[0], grid[1]).numpy()
            _show(axes[row][col], m, f"‖F_{layer}‖ max/med {m.max() / np.median(m):.1f}", cmap="inferno")
    paths.append(_finish(fig, f"{report['model']}: patch-norm maps (images with the strongest outliers at block "
                              f"{probe})", emu, out_dir / "artifacts_normmaps.png"))
    return paths


# ---------------------------------------------------------------------------------------------------- nullspace
def plot_nullspace(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
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
        ax.set_title(f"W̃ of block {layer} (d = {row['d']})", fontsize=9)
        ax.set_xlabel("index k", fontsize=8)
        ax.set_ylabel("singular value σ_k", fontsize=8)
        ax.legend(fontsize=7, loc="lower left")
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=7)
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
    cb.set_label("block", fontsize=8)
    ax.set_title("all blocks", fontsize=9)
    ax.set_xlabel("index k", fontsize=8)
    ax.set_ylabel("σ_k", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax = flat[5]
    layers = sorted(table)
    ax.plot(layers, [table[x]["k_energy"] for x in layers], "o-", label="k_energy(ρ)")
    ax.plot(layers, [table[x]["k_eps"] if table[x]["k_eps"] is not None else np.nan for x in layers], "s-",
            label="k_ε")
    ax.plot(layers, [table[x]["r_eps"] for x in layers], "^-", label="r_ε")
    ax.axhline(table[layers[0]]["d"], color="k", ls=":", label="d")
    ax.set_xlabel("block", fontsize=8)
    ax.set_ylabel("index / dimension", fontsize=8)
    ax.set_title(f"ρ = {report['rho']:g}, ε = {eps:g}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    paths.append(_finish(fig, f"{report['model']}: singular spectra of the linearised FFN W̃ = W_FFN1 W_FFN2", emu,
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
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("block", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("per-image mean over patches", fontsize=8)
        paths.append(_finish(fig, f"{report['model']}: sub-layer changes on {report['num_images']} images", emu,
                             out_dir / "nullspace_sublayer.png"))
    return paths


# ---------------------------------------------------------------------------------------------------- Table 8
def plot_null_vs_reality(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
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
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(_minor_log_label))
        ax.tick_params(axis="y", which="minor", labelsize=6)
        ax.set_xlabel("‖ΔF_i‖ / ‖F_i‖", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=7)
    axes[-1].axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    h2, l2 = axes[2].get_legend_handles_labels()
    axes[-1].legend(handles + h2[-1:], labels + l2[-1:], loc="center", fontsize=9, title="perturbation basis")
    return [_finish(fig, f"{report['model']}: perturbing F_{report['layer']} along rank-{report['rank']} bases, "
                     f"effect on block {report['next_block']} ({report['num_images']} images)", emu,
                    out_dir / "null_vs_reality.png")]


# ---------------------------------------------------------------------------------------------------- App. I
def plot_subspace(report: Mapping[str, Any], out_dir: str | Path, max_points: int = 2000) -> list[Path]:
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
            ax.set_xlabel("patch norm ‖F_i‖", fontsize=8)
            ax.set_ylabel(f"E_{kind} (energy share)", fontsize=8)
            ax.set_title(f"block {layer}: {'null' if kind == 'null' else 'principal'} basis", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=7, markerscale=3)
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
        ax.set_xlabel("rank r", fontsize=8)
        ax.set_ylabel("Pearson correlation", fontsize=8)
        ax.set_title(f"block {layer}: correlations (W̃ of block {sel[0]['basis_block']})", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    return [_finish(fig, f"{report['model']}: subspace energy vs patch norm ({report['num_images']} images)", emu,
                    out_dir / "subspace.png")]


# ---------------------------------------------------------------------------------------------------- adapter
def plot_adapter(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
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
    cb.set_label("outlier norm / median of its box", fontsize=8)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel("patch norm ‖F_i‖")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.set_title(_title(f"{report['run_name']}: patch norms before (F) / after (F̂) the adapter (Figure 6 style)", emu),
                 fontsize=9)
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "adapter_norms.png"))

    rows = report["alignment_table"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    ax = axes[0]
    labels = [f"{'φ_up' if r['matrix'] == 'up' else 'φ_downᵀ'} l={r['layer']}" for r in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["E_safe"] for r in rows], 0.4, label="E_safe (null basis)", color="tab:green")
    ax.bar(x + 0.2, [r["E_prob"] for r in rows], 0.4, label="E_prob (principal basis)", color="tab:red")
    ax.axhline(rows[0]["random_reference"], color="k", ls=":", label="random ≈ sqrt(r/d)")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("alignment (eq. 13)")
    ax.legend(fontsize=7, ncol=3, loc="upper center")
    ax.set_title("adapter alignment with W̃ of the next block (1 / 0 at init)", fontsize=9)
    ax = axes[1]
    cos: dict[str, torch.Tensor] = report["_cos"]
    ax.boxplot([v.numpy() for v in cos.values()], widths=0.5)
    ax.set_xticks(range(1, len(cos) + 1), list(cos), fontsize=8)
    ax.set_ylabel("per-image mean patch cosine")
    ax.set_title("information preservation (Table 3)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    paths.append(_finish(fig, f"{report['run_name']}: SiNGER adapters ({report['num_images']} held-out images)", emu,
                         out_dir / "adapter_alignment.png"))
    return paths


# ---------------------------------------------------------------------------------------------------- similarity
def plot_similarity(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """``similarity.png`` (Table 2 as bars: GD and CKA per distilled pair and run) and ``similarity_gram.png``
    (Figure 5: cosine Gram matrices of one image at the last layer)."""
    out_dir = Path(out_dir)
    emu = bool(report["emulated_artifacts"])
    rows = report["table"]
    runs = list(dict.fromkeys(r["run"] for r in rows))
    pairs = list(dict.fromkeys((r["teacher_layer"], r["student_layer"]) for r in rows))
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    width = 0.8 / max(1, len(runs))
    for ax, key, label in ((axes[0], "gd", "Gram distance (cosine Grams, RMS) ↓"), (axes[1], "cka", "linear CKA ↑")):
        for j, run in enumerate(runs):
            vals = []
            for p in pairs:
                hit = [r[key] for r in rows if r["run"] == run and (r["teacher_layer"], r["student_layer"]) == p]
                vals.append(hit[0] if hit else np.nan)
            ax.bar(np.arange(len(pairs)) + (j - (len(runs) - 1) / 2) * width, vals, width, label=run)
        ax.set_xticks(range(len(pairs)), [f"T{t} ↔ S{s}" for t, s in pairs], fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[1].legend(fontsize=7)
    paths.append(_finish(fig, f"teacher–student similarity on {report['num_images']} held-out toy scenes", emu,
                         out_dir / "similarity.png"))

    grams = report["_grams"]
    last = {}
    for (run, t), g in grams.items():
        if run not in last or t > last[run][0]:
            last[run] = (t, g)
    first = next(iter(last.values()))[1]
    fig, axes = plt.subplots(1, 2 + len(last), figsize=(2.8 * (2 + len(last)), 2.9))
    _show_image(axes[0], first["image"], "input")

    def cg(x: torch.Tensor) -> np.ndarray:
        x = torch.nn.functional.normalize(x.double(), dim=-1)
        return (x @ x.T).numpy()

    t_last, g0 = next(iter(last.values()))
    _show(axes[1], cg(g0["t"]), f"teacher block {t_last}", cmap="RdBu_r", vmin=-1, vmax=1)
    for ax, (run, (_t, g)) in zip(axes[2:], last.items()):
        _show(ax, cg(g["s"]), f"{run} student", cmap="RdBu_r", vmin=-1, vmax=1)
    paths.append(_finish(fig, "cosine Gram matrices of the patches (Figure 5 style), first held-out image", emu,
                         out_dir / "similarity_gram.png"))
    return paths


# ---------------------------------------------------------------------------------------------------- figures
def plot_feature_maps(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Per run and image: ``maps_<run>_img<i>.png`` (Figure 9: norm + PCA of F^T, F̂^T, ΔF^T, F^S per distilled
    layer), ``crosssim_<run>_img<i>.png`` for SiNGER runs (Figure 11), and across runs ``similarity_img<i>.png``
    (Figure 2/12: norm map and similarity to the ×-marked patch for teacher, refined teacher and student)."""
    out_dir = Path(out_dir)
    emu = bool(report["emulated_artifacts"])
    paths = []
    for j, img_idx in enumerate(report["image_indices"]):
        for run in report["runs"]:
            feats, grid, mark = run["_feats"], run["grid"], run["marked"][j]
            rows = [("t", "$F^T$"), ("t_hat", r"$\hat{F}^T$"), ("delta", r"$\Delta F^T = \hat{F}^T - F^T$"),
                    ("s", "$F^S$")]
            singer = "t_hat" in feats[run["layers"][0]]
            if not singer:
                rows = [rows[0], rows[3]]
            cols = len(run["layers"]) * 2 + 1
            fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.1 * len(rows)), squeeze=False)
            for r_i, (key, label) in enumerate(rows):
                ax0 = axes[r_i][0]
                if r_i == 0:
                    _show_image(ax0, run["_images"][j], f"input (toy val {img_idx})")
                else:
                    ax0.axis("off")
                    ax0.text(0.5, 0.5, label, ha="center", va="center", fontsize=10)
                for c_i, (t, s) in enumerate(zip(run["layers"], run["student_layers"])):
                    f = feats[t]
                    name = f"S{s}" if key == "s" else f"T{t}"
                    if key == "delta":
                        x = f["t_hat"][j] - f["t"][j]
                        m = signed_norm_map(x, f["t"][j], grid)
                        v = float(np.abs(m).max()) or 1.0
                        _show(axes[r_i][1 + 2 * c_i], m, f"{name} " + r"$\pm\|\Delta F\|$ (sign of cos)",
                              cmap="RdBu_r", vmin=-v, vmax=v)
                    else:
                        x = f[key][j]
                        _show(axes[r_i][1 + 2 * c_i], norm_map(x, grid), f"{name} {label} norm", cmap="inferno")
                    _show(axes[r_i][2 + 2 * c_i], pca_map(x, grid), f"{name} PCA", colorbar=False)
            paths.append(_finish(fig, f"{run['name']} ({run['distiller']}): feature maps (Figure 9 style)",
                                 run["emulated_artifacts"], out_dir / f"maps_{run['name']}_img{img_idx}.png"))

            if singer and any("t_next" in feats[t] for t in run["layers"]):
                inter = [t for t in run["layers"] if "t_next" in feats[t]]
                fig, axes = plt.subplots(len(inter), 3, figsize=(8, 2.6 * len(inter)), squeeze=False)
                idx = mark[0] * grid[1] + mark[1]
                for r_i, t in enumerate(inter):
                    a, b = feats[t]["t_next"][j], feats[t]["t_next_hat"][j]
                    _show_image(axes[r_i][0], run["_images"][j], "input", mark=mark, grid=grid)
                    _show(axes[r_i][1], similarity_map(a, idx, grid, other=b),
                          f"$F_{{{t + 1}}}$ × → $\\hat{{F}}_{{{t + 1}}}$", cmap="RdBu_r", vmin=-1, vmax=1, mark=mark)
                    _show(axes[r_i][2], similarity_map(b, idx, grid, other=a),
                          f"$\\hat{{F}}_{{{t + 1}}}$ × → $F_{{{t + 1}}}$", cmap="RdBu_r", vmin=-1, vmax=1, mark=mark)
                paths.append(_finish(fig, f"{run['name']}: cross-similarity after the next block (Figure 11 style)",
                                     run["emulated_artifacts"], out_dir / f"crosssim_{run['name']}_img{img_idx}.png"))

        # Figure 2 / 12: for each run and distilled layer, norm + similarity of teacher, refined teacher, student
        entries = []
        for run in report["runs"]:
            for t, s in zip(run["layers"], run["student_layers"]):
                entries.append((run, t, s))
        has_hat = any("t_hat" in run["_feats"][t] for run, t, _ in entries)
        groups = [("t", "teacher $F^T$"), ("t_hat", r"refined $\hat{F}^T$"), ("s", "student $F^S$")]
        if not has_hat:
            groups = [groups[0], groups[2]]
        cols = 1 + 2 * len(groups)
        fig, axes = plt.subplots(len(entries), cols, figsize=(2.2 * cols, 2.2 * len(entries)), squeeze=False)
        for r_i, (run, t, s) in enumerate(entries):
            grid, mark = run["grid"], run["marked"][j]
            idx = mark[0] * grid[1] + mark[1]
            f = run["_feats"][t]
            _show_image(axes[r_i][0], run["_images"][j], f"{run['name']} T{t}/S{s}", mark=mark, grid=grid)
            for g_i, (key, label) in enumerate(groups):
                a1, a2 = axes[r_i][1 + 2 * g_i], axes[r_i][2 + 2 * g_i]
                if key not in f:
                    for ax in (a1, a2):
                        ax.axis("off")
                        ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=9)
                    continue
                x = f[key][j]
                _show(a1, norm_map(x, grid), f"{label} norm", cmap="inferno", mark=mark)
                _show(a2, similarity_map(x, idx, grid), f"{label} sim to ×", cmap="RdBu_r", vmin=-1, vmax=1,
                      mark=mark)
        paths.append(_finish(fig, f"norm maps and similarity to the ×-marked patch, toy val image {img_idx} "
                                  "(Figure 2 / 12 style)", emu, out_dir / f"similarity_img{img_idx}.png"))
    return paths


# ---------------------------------------------------------------------------------------------------- dispatch
_PLOTTERS = {
    "artifacts": plot_artifacts,
    "nullspace": plot_nullspace,
    "null-vs-reality": plot_null_vs_reality,
    "subspace": plot_subspace,
    "adapter": plot_adapter,
    "similarity": plot_similarity,
    "figures": plot_feature_maps,
}


def write_figures(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write every figure of ``report`` (by its ``command``) into ``out_dir``; returns the PNG paths."""
    cmd = report["command"]
    if cmd not in _PLOTTERS:
        raise ValueError(f"no figures for report '{cmd}'; expected one of {', '.join(_PLOTTERS)}.")
    return _PLOTTERS[cmd](report, out_dir)
