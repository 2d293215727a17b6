"""Shared loading of trained runs for the run-level analyses: the run rebuilt under its own seed, and the
per-layer features of teacher, refined teacher (methods that refine it), student and projection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mdistiller.analysis.artifacts import patch_norms

#: run directory → fingerprint of the student weights :func:`load_run_seeded` loaded from it
#: (:mod:`mdistiller.engine.fingerprint`); :func:`mdistiller.analysis.commands.output.measured` puts them in the report,
#: so every analysis result says which weights it measured
MEASURED: dict[str, str] = {}


def is_run_dir(spec: str | Path) -> bool:
    """Whether ``spec`` is a run directory written by ``tools/train.py`` (it holds ``config.yaml``)."""
    return (Path(spec) / "config.yaml").is_file()


def load_run_seeded(run_dir: str | Path):
    """``load_run``, which seeds every RNG with the run's ``EXPERIMENT.SEED`` as ``Trainer`` does before building (a
    random-init teacher comes back identical), with the caller's RNG states (python, numpy, torch, CUDA) restored
    afterwards. The student's fingerprint is recorded in :data:`MEASURED`."""
    from mdistiller.engine.checkpoint import rng_state, set_rng_state
    from mdistiller.engine.fingerprint import weights_fingerprint
    from mdistiller.engine.load import load_run

    if not is_run_dir(run_dir):
        raise FileNotFoundError(f"'{run_dir}' is not a run directory (no config.yaml); pass one written by "
                                "tools/train.py.")
    saved = rng_state()
    try:
        cfg, distiller = load_run(run_dir)
    finally:
        set_rng_state(saved)
    MEASURED[str(Path(run_dir).resolve())] = weights_fingerprint(distiller.student.model.state_dict())
    return cfg, distiller


def checkpoint_step(run_dir: str | Path) -> int | None:
    """The optimizer step of ``RUN_DIR/checkpoints/last.pth`` (the weights :func:`load_run_seeded` loads), read
    memory-mapped so no tensor data is loaded; None when the file or its step cannot be read."""
    try:
        state = torch.load(Path(run_dir) / "checkpoints" / "last.pth", map_location="cpu", mmap=True,
                           weights_only=True)
        return int(state["step"])
    except Exception:  # noqa: BLE001 - a label only; load_run_seeded reports a bad checkpoint itself
        return None


def run_name(cfg, run_dir: str | Path) -> str:
    """The run's ``EXPERIMENT.NAME``, else its directory's name."""
    return str(cfg.EXPERIMENT.NAME or Path(run_dir).name)


def teacher_emulation(distiller) -> dict[str, Any] | None:
    """The emulated-artifact settings of the run's teacher (None without an implant)."""
    implant = distiller.teacher.implant if distiller.teacher is not None else None
    return dict(implant.config) if implant is not None else None


@torch.no_grad()
def run_features(distiller, images: torch.Tensor, batch_size: int = 16, want_next: bool = True) -> dict[str, Any]:
    """Teacher ``F``, refined ``F̂`` and next-block ``F_{l+1}``/``F̂_{l+1}`` (intermediate layers) of a distiller that
    refines its teacher (``Distiller.refined_teacher``: SiNGER), student ``F^S`` and its projection ``P(F^S)``, all
    patch tokens on the student grid, per distilled layer."""
    plan = distiller.plan
    keys = ("t", "t_hat", "t_next", "t_next_hat", "s", "s_proj")
    out: dict[int, dict[str, list[torch.Tensor]]] = {t: {k: [] for k in keys} for t in plan.teacher}
    masks, refines = [], False
    split = distiller.teacher.net.split
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        sgrid = distiller.student_grid(x)
        refined = distiller.refined_teacher(x, next_block=want_next)
        refines = refines or bool(refined)
        if refined:
            tgrid = next(iter(refined.values())).grid
            originals = {t: r.original for t, r in refined.items()}
        else:
            t_feats, tgrid = distiller.teacher(x, plan.teacher, student_grid=sgrid)
            originals = {t: split(t_feats[t], tgrid) for t in plan.teacher}
        implant = distiller.teacher.implant
        if implant is not None and implant.last_mask is not None:
            masks.append(implant.last_mask.cpu())
        s_feats = distiller.student(x, plan.student)

        def to_s(tokens: torch.Tensor, tgrid: tuple[int, int] = tgrid, sgrid: tuple[int, int] = sgrid) -> torch.Tensor:
            return distiller.teacher.to_student_grid(tokens, tgrid, sgrid).float()

        for t, s in plan.pairs():
            o = out[t]
            o["t"].append(to_s(originals[t].patches))
            s_patches = distiller.student.split(s_feats[s], sgrid).patches
            o["s"].append(s_patches.float())
            o["s_proj"].append(distiller.proj[str(t)](s_patches).float())
            r = refined.get(t)
            if r is not None:
                o["t_hat"].append(to_s(r.refined))
                if r.next is not None and r.next_refined is not None:
                    o["t_next"].append(to_s(split(r.next, tgrid).patches))
                    o["t_next_hat"].append(to_s(split(r.next_refined, tgrid).patches))
    feats = {t: {k: torch.cat(v) for k, v in o.items() if v} for t, o in out.items()}
    return {"feats": feats, "mask": torch.cat(masks) if masks else None, "singer": refines}


def norm_stats(n: torch.Tensor, k: float = 4.0) -> dict[str, float]:
    """Mean per-image median, max/median and share above ``k×`` median of patch norms ``[B, P]``."""
    med = torch.quantile(n.double(), 0.5, dim=1)
    return {"median": med.mean().item(), "max_median_ratio": (n.max(dim=1).values / med).mean().item(),
            f"share_above_{k:g}x": (n > k * med[:, None]).double().mean().item()}


def implanted_ratio(tokens: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean ``‖F_i‖ / median_image ‖F‖`` over the implanted patches (emulated artifacts; ``mask [B, P]``)."""
    n = patch_norms(tokens)
    return (n / torch.quantile(n, 0.5, dim=1, keepdim=True))[mask].mean().item()
