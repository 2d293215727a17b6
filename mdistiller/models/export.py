"""The student file format: a timm-loadable ``.safetensors`` plus a ``<file>.json`` sidecar with its create kwargs.

Written by the trainer at the end of a run (:meth:`~mdistiller.distillers.base.Distiller.export_student`) and by
``mdistiller-export`` from any checkpoint (:mod:`mdistiller.engine.export`). Load it with::

    meta = json.load(open("student.safetensors.json"))
    timm.create_model(meta["timm_name"], pretrained=True, num_classes=0,
                      pretrained_cfg_overlay=dict(file="student.safetensors"), **meta["create_kwargs"])
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mdistiller.fileio import atomic_write

from .zoo import resolve_model_name

__all__ = ["sidecar_path", "write_student_file"]


def sidecar_path(path: str | Path) -> Path:
    """``student.safetensors`` → ``student.safetensors.json``."""
    path = Path(path)
    return path.with_suffix(path.suffix + ".json")


def write_student_file(path: str | Path, state: Mapping[str, torch.Tensor], model_name: str,
                       create_kwargs: Mapping[str, Any] | None = None,
                       provenance: Mapping[str, Any] | None = None) -> Path:
    """Write ``state`` (a timm model's ``state_dict``) to ``path`` and its sidecar, each atomically.

    ``provenance`` (e.g. the source checkpoint and its step) is stored in the sidecar under ``"source"``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
    meta: dict[str, Any] = {"model": model_name, "timm_name": resolve_model_name(model_name).split(".")[0],
                            "create_kwargs": dict(create_kwargs or {}), "num_classes": 0}
    if provenance:
        meta["source"] = dict(provenance)
    atomic_write(sidecar_path(path), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return path
