"""``figures``: Per-image feature maps of one or more runs: norm, PCA and similarity to a marked patch (Figure 2, 9,
11, 12).

The command module (layout: :mod:`mdistiller.analysis.commands`) of ``mdistiller-analyze figures``, also the
trainer's ``run_figures`` hook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Unpack

import matplotlib.pyplot as plt
import numpy as np
import torch

from mdistiller.analysis import viz
from mdistiller.analysis.inputs import load_toy_images, stamp
from mdistiller.analysis.render import header
from mdistiller.analysis.runs import checkpoint_step, load_run_seeded, run_features, run_name, teacher_emulation

from .base import OutputOptions
from .output import AnalysisResult, finish, write_figures


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
    loaded: Mapping[str, tuple[Any, Any]] | None = None,
    loaded_step: int | None = None,
) -> dict[str, Any]:
    """Per-image feature maps of one or more runs on held-out toy scenes (Figure 2, 9, 11, 12).

    For every run and image, per distilled layer: ``F^T``, ``F̂^T`` and ``ΔF^T = F̂^T − F^T`` (SiNGER) and the
    student ``F^S``, all patch tokens on the student grid (the maps are drawn by :mod:`viz`: norm, PCA and
    similarity to a marked patch). SiNGER runs also carry ``F_{l+1}``/``F̂_{l+1}`` (Figure 11). ``loaded`` maps a run
    directory to its ``(cfg, distiller)`` already in memory (the trainer's, at training step ``loaded_step``),
    which is then used instead of loading it. Each run records which weights it shows (``"weights"``: the step and
    ``checkpoints/last.pth`` or "in training"), and every figure says it.
    """
    if not run_dirs:
        raise ValueError("figures needs at least one RUN_DIR.")
    idx = [int(i) for i in image_indices]
    if min(idx) < 0:
        raise ValueError(f"--image-index must be >= 0, got {min(idx)}.")
    runs, any_emulated = [], False
    for run_dir in run_dirs:
        in_memory = (loaded or {}).get(str(run_dir))
        cfg, distiller = in_memory or load_run_seeded(run_dir)
        step = loaded_step if in_memory else checkpoint_step(run_dir)
        weights = (f"step {step if step is not None else '?'} "
                   + ("(in training)" if in_memory else "(checkpoints/last.pth)"))
        size = int(cfg.DATASET.INPUT_SIZE)
        images, _, masks = load_toy_images(size, max(idx) + 1, with_masks=True)  # type: ignore[misc]
        images, masks = images[idx], masks[idx]
        got = run_features(distiller, images, batch_size=len(idx))
        grid = distiller.student_grid(images)
        emulation = teacher_emulation(distiller)
        any_emulated |= emulation is not None
        runs.append({
            "run": str(run_dir), "name": run_name(cfg, run_dir), "distiller": cfg.DISTILLER.TYPE,
            "step": step, "weights": weights,
            "emulated_artifacts": emulation is not None, "grid": list(grid), "layers": list(distiller.plan.teacher),
            "student_layers": list(distiller.plan.student),
            "marked": [list(_marked_patch(masks[j], grid, patch)) for j in range(len(idx))],
            "_feats": got["feats"], "_images": images, "_mask": got["mask"],
        })
    return {"command": "figures", **stamp(any_emulated, None), "image_indices": idx, "runs": runs}


def run_figures(run_dir: str | Path, cfg: Any, distiller: Any, step: int | None = None) -> list[Path]:
    """The feature-map figures of the training run's ``distiller`` in memory at training step ``step``
    (``figures`` on its first held-out scene) written to ``RUN_DIR/analysis/wandb_figures``: the trainer's
    ``"run_figures"`` hook (``LOG.WANDB_FIGURES``)."""
    report = figures_report([run_dir], loaded={str(run_dir): (cfg, distiller)}, loaded_step=step)
    return write_figures(report, Path(run_dir) / "analysis" / "wandb_figures")


def plot(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
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
                    viz.show_image(ax0, run["_images"][j], f"input (toy val {img_idx})")
                else:
                    ax0.axis("off")
                    ax0.text(0.5, 0.5, label, ha="center", va="center")
                for c_i, (t, s) in enumerate(zip(run["layers"], run["student_layers"])):
                    f = feats[t]
                    name = f"S{s}" if key == "s" else f"T{t}"
                    if key == "delta":
                        x = f["t_hat"][j] - f["t"][j]
                        m = viz.signed_norm_map(x, f["t"][j], grid)
                        v = float(np.abs(m).max()) or 1.0
                        viz.show_map(axes[r_i][1 + 2 * c_i], m, f"{name} " + r"$\pm\|\Delta F\|$ (sign of cos)",
                                     cmap="RdBu_r", vmin=-v, vmax=v)
                    else:
                        x = f[key][j]
                        viz.show_map(axes[r_i][1 + 2 * c_i], viz.norm_map(x, grid), f"{name} {label} norm",
                                     cmap="inferno")
                    viz.show_map(axes[r_i][2 + 2 * c_i], viz.pca_map(x, grid), f"{name} PCA", colorbar=False)
            paths.append(viz.finish_figure(
                fig, f"{run['name']} ({run['distiller']}) at {run['weights']}: feature maps (Figure 9 style)",
                run["emulated_artifacts"], out_dir / f"maps_{run['name']}_img{img_idx}.png"))

            if singer and any("t_next" in feats[t] for t in run["layers"]):
                inter = [t for t in run["layers"] if "t_next" in feats[t]]
                fig, axes = plt.subplots(len(inter), 3, figsize=(8, 2.6 * len(inter)), squeeze=False)
                idx = mark[0] * grid[1] + mark[1]
                for r_i, t in enumerate(inter):
                    a, b = feats[t]["t_next"][j], feats[t]["t_next_hat"][j]
                    viz.show_image(axes[r_i][0], run["_images"][j], "input", mark=mark, grid=grid)
                    viz.show_map(axes[r_i][1], viz.similarity_map(a, idx, grid, other=b),
                                 f"$F_{{{t + 1}}}$ × → $\\hat{{F}}_{{{t + 1}}}$", cmap="RdBu_r", vmin=-1, vmax=1,
                                 mark=mark)
                    viz.show_map(axes[r_i][2], viz.similarity_map(b, idx, grid, other=a),
                                 f"$\\hat{{F}}_{{{t + 1}}}$ × → $F_{{{t + 1}}}$", cmap="RdBu_r", vmin=-1, vmax=1,
                                 mark=mark)
                title = f"{run['name']} at {run['weights']}: cross-similarity after the next block (Figure 11 style)"
                paths.append(viz.finish_figure(fig, title, run["emulated_artifacts"],
                                               out_dir / f"crosssim_{run['name']}_img{img_idx}.png"))

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
            viz.show_image(axes[r_i][0], run["_images"][j], f"{run['name']} T{t}/S{s}\nstep {run['step']}", mark=mark,
                           grid=grid)
            for g_i, (key, label) in enumerate(groups):
                a1, a2 = axes[r_i][1 + 2 * g_i], axes[r_i][2 + 2 * g_i]
                if key not in f:
                    for ax in (a1, a2):
                        ax.axis("off")
                        ax.text(0.5, 0.5, "n/a", ha="center", va="center")
                    continue
                x = f[key][j]
                viz.show_map(a1, viz.norm_map(x, grid), f"{label} norm", cmap="inferno", mark=mark)
                viz.show_map(a2, viz.similarity_map(x, idx, grid), f"{label} sim to ×", cmap="RdBu_r", vmin=-1, vmax=1,
                             mark=mark)
        shown = ", ".join(f"{run['name']} at {run['weights']}" for run in report["runs"])
        paths.append(viz.finish_figure(fig, f"norm maps and similarity to the ×-marked patch, toy val image {img_idx} "
                                       f"(Figure 2 / 12 style)\n{shown}", emu,
                                       out_dir / f"similarity_img{img_idx}.png"))
    return paths


def format_text(report: Mapping[str, Any]) -> str:
    """The text tables of a ``figures`` report (what the command line prints and ``figures.txt`` holds)."""
    lines: list[str] = []
    lines.append(header(report, "Feature-map figures (Figure 2, 9, 11, 12)"))
    for run in report["runs"]:
        lines.append(f"{run['name']} ({run['distiller']}) at {run['weights']}: layers {run['layers']}, grid "
                     f"{run['grid'][0]}x{run['grid'][1]}, marked patches {run['marked']}")
    return "\n".join(lines)


def run(run_dirs: str | Path | Sequence[str | Path], *, image_indices: Sequence[int] = (0,),
        patch: tuple[int, int] | None = None, **output: Unpack[OutputOptions]) -> AnalysisResult:
    """Norm, PCA and similarity maps of one run directory or several on the held-out toy scenes
    ``image_indices``, similarity to the patch ``(row, col)`` (default: the object centre) (Figure 2, 9, 11,
    12): the ``figures`` command (:func:`figures_report`), written as ``output`` says
    (:class:`.base.OutputOptions`)."""
    run_dirs = [run_dirs] if isinstance(run_dirs, str | Path) else list(run_dirs)
    return finish(lambda: figures_report(run_dirs, image_indices, patch), source=run_dirs[0] if run_dirs else "",
                  **output)
