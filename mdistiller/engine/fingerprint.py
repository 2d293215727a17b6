"""The fingerprint of a student's weights, so a derived result (probe, analysis) can say which weights it measured.

One definition for every source: the BLAKE2b content checksum of :func:`~mdistiller.engine.checkpoint.state_checksum`
over the student's ``state_dict`` (every tensor's name, dtype, shape and bytes). The exported
``student.safetensors``, the student rebuilt from ``checkpoints/last.pth`` and the student in memory at the end of
training give the same fingerprint exactly when they hold the same weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .checkpoint import state_checksum

__all__ = ["STUDENT_FILE", "student_fingerprint", "weights_fingerprint"]

STUDENT_FILE = "student.safetensors"


def weights_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """The fingerprint of a ``state_dict`` (32 hex digits; independent of device, key order and memory layout)."""
    return state_checksum(dict(state))


def student_fingerprint(path: str | os.PathLike[str]) -> str | None:
    """The fingerprint of the student in ``path``: a run directory (its ``student.safetensors``) or the file itself;
    ``None`` when there is no such file."""
    path = Path(path)
    if path.is_dir():
        path = path / STUDENT_FILE
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    return weights_fingerprint(load_file(str(path)))
