"""A trained run rebuilt for analysis: :func:`load_run` (``config.yaml`` + ``checkpoints/last.pth``), and
:func:`checkpoint_meta`, what a checkpoint must match to be resumed or loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdistiller.config import CN
from mdistiller.distillers import Distiller, build_distiller

from . import checkpoint as ckpt

__all__ = ["checkpoint_meta", "load_run"]


def checkpoint_meta(cfg: CN, model: nn.Module) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: method, models, and every trainable parameter's shape."""
    d = cfg.DISTILLER
    return {"distiller": d.TYPE, "teacher": d.TEACHER, "student": d.STUDENT,
            "params": ckpt.param_shapes([(n, p) for n, p in model.named_parameters() if p.requires_grad])}


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[CN, Distiller]:
    """Rebuild the distiller of a run directory (``config.yaml`` + ``checkpoints/last.pth``) for analysis, in eval
    mode; a missing ``config.yaml`` is a ``FileNotFoundError`` and a missing or corrupt checkpoint a
    :class:`~mdistiller.engine.checkpoint.CheckpointError`, each one sentence."""
    from mdistiller.config import load_config

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"run directory '{run_dir}' has no config.yaml; pass a directory written by "
                                "tools/train.py.")
    cfg = load_config([cfg_path])
    ckpt.seed_everything(cfg.EXPERIMENT.SEED)  # as the Trainer does: a random-init teacher comes back identical
    distiller = build_distiller(cfg, device=device)
    path = run_dir / "checkpoints" / "last.pth"
    try:
        state = ckpt.load_checkpoint(path, map_location="cpu")
    except ckpt.CheckpointError as e:  # the training wording ("resume from ...") does not fit an analysis
        why = "does not exist" if not path.is_file() else "is corrupt or truncated"
        raise ckpt.CheckpointError(
            f"cannot analyse run {run_dir}: its checkpoint {path} {why}; rerun tools/train.py on that run directory "
            "(it resumes and rewrites the checkpoint), then analyse it again.") from e
    ckpt.check_compatible(state, checkpoint_meta(cfg, distiller), path=path)
    distiller.load_state_dict(state["model"])
    distiller.eval()
    return cfg, distiller
