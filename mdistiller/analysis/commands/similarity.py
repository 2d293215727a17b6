"""``similarity``: Teacher-student Gram distance and CKA of several runs (§4.3, Table 2).

The command module (layout: :mod:`mdistiller.analysis.commands`) of ``mdistiller-analyze similarity``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Unpack

import matplotlib.pyplot as plt
import numpy as np
import torch

from mdistiller.analysis import runs as run_io
from mdistiller.analysis.artifacts import patch_norms
from mdistiller.analysis.inputs import load_toy_images, stamp
from mdistiller.analysis.render import format_table, header
from mdistiller.analysis.similarity import gram_distance, linear_cka, patch_cosine, summary
from mdistiller.analysis.viz import finish_figure, show_image, show_map

from .base import OutputOptions, check_positive
from .output import AnalysisResult, finish


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
        cfg, distiller = run_io.load_run_seeded(run_dir)
        name = run_io.run_name(cfg, run_dir)
        emulation = run_io.teacher_emulation(distiller)
        any_emulated |= emulation is not None
        images, _ = load_toy_images(int(cfg.DATASET.INPUT_SIZE), num_images)
        got = run_io.run_features(distiller, images, batch_size, want_next=False)
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
            row["teacher_max_median"] = run_io.norm_stats(patch_norms(f["t"]))["max_median_ratio"]
            row["student_max_median"] = run_io.norm_stats(patch_norms(f["s"]))["max_median_ratio"]
            mask = got["mask"]
            if mask is not None and mask.shape == f["t"].shape[:2]:
                row["teacher_implanted_over_median"] = run_io.implanted_ratio(f["t"], mask)
                row["student_implanted_over_median"] = run_io.implanted_ratio(f["s"], mask)
                row["projected_implanted_over_median"] = run_io.implanted_ratio(f["s_proj"], mask)
            rows.append(row)
            grams[(name, t)] = {"t": f["t"][0], "s": f["s"][0], "image": images[0]}
    return {
        "command": "similarity",
        **stamp(any_emulated, None),
        "num_images": num_images,
        "runs": runs,
        "table": rows,
        "_grams": grams,
    }


def plot(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
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
    for ax, key, label, ylabel in ((axes[0], "gd", "Gram distance (cosine Grams, RMS) ↓", "Gram distance (RMS)"),
                                   (axes[1], "cka", "linear CKA ↑", "linear CKA")):
        for j, run in enumerate(runs):
            vals = []
            for p in pairs:
                hit = [r[key] for r in rows if r["run"] == run and (r["teacher_layer"], r["student_layer"]) == p]
                vals.append(hit[0] if hit else np.nan)
            ax.bar(np.arange(len(pairs)) + (j - (len(runs) - 1) / 2) * width, vals, width, label=run)
        ax.set_xticks(range(len(pairs)), [f"T{t} ↔ S{s}" for t, s in pairs])
        ax.set_xlabel("teacher block ↔ student block")
        ax.set_ylabel(ylabel)
        ax.set_title(label)
        ax.grid(alpha=0.3, axis="y")
    axes[1].legend()
    paths.append(finish_figure(fig, f"teacher–student similarity on {report['num_images']} held-out toy scenes", emu,
                               out_dir / "similarity.png"))

    grams = report["_grams"]
    last = {}
    for (run, t), g in grams.items():
        if run not in last or t > last[run][0]:
            last[run] = (t, g)
    first = next(iter(last.values()))[1]
    fig, axes = plt.subplots(1, 2 + len(last), figsize=(2.8 * (2 + len(last)), 2.9))
    show_image(axes[0], first["image"], "input")

    def cg(x: torch.Tensor) -> np.ndarray:
        x = torch.nn.functional.normalize(x.double(), dim=-1)
        return (x @ x.T).numpy()

    t_last, g0 = next(iter(last.values()))
    show_map(axes[1], cg(g0["t"]), f"teacher block {t_last}", cmap="RdBu_r", vmin=-1, vmax=1)
    for ax, (run, (_t, g)) in zip(axes[2:], last.items()):
        show_map(ax, cg(g["s"]), f"{run} student", cmap="RdBu_r", vmin=-1, vmax=1)
    paths.append(finish_figure(fig, "cosine Gram matrices of the patches (Figure 5 style), first held-out image", emu,
                               out_dir / "similarity_gram.png"))
    return paths


def format_text(report: Mapping[str, Any]) -> str:
    """The text tables of a ``similarity`` report (what the command line prints and ``similarity.txt`` holds)."""
    lines: list[str] = []
    lines.append(header(report, f"Teacher–student similarity on {report['num_images']} held-out toy scenes "
                                 "(§4.3, Table 2)"))
    lines.append(format_table(report["table"], [
        ("run", "run", "s"), ("distiller", "method", "s"), ("teacher_layer", "T", "d"),
        ("student_layer", "S", "d"), ("gd", "GD(cos)", ".4f"), ("gd_raw", "D_G raw", ".4g"),
        ("cka", "CKA", ".4f"), ("cos_teacher", "cos P(S),T", ".4f"), ("cos_target", "cos P(S),F̂", ".4f"),
        ("teacher_max_median", "T max/med", ".2f"), ("student_max_median", "S max/med", ".2f"),
        ("teacher_implanted_over_median", "T impl/med", ".2f"),
        ("student_implanted_over_median", "S impl/med", ".2f"),
        ("projected_implanted_over_median", "P(S) impl/med", ".2f")]))
    return "\n".join(lines)


def run(run_dirs: str | Path | Sequence[str | Path], *, num_images: int = 64, batch_size: int = 8,
        **output: Unpack[OutputOptions]) -> AnalysisResult:
    """Teacher–student Gram distance and linear CKA of one run directory or several side by side, on
    ``num_images`` held-out toy scenes (§4.3, Table 2): the ``similarity`` command (:func:`similarity_report`),
    written as ``output`` says (:class:`.base.OutputOptions`)."""
    check_positive(dict(num_images=num_images, batch_size=batch_size))
    run_dirs = [run_dirs] if isinstance(run_dirs, str | Path) else list(run_dirs)
    return finish(lambda: similarity_report(run_dirs, num_images=num_images, batch_size=batch_size),
                  source=run_dirs[0] if run_dirs else "", **output)
