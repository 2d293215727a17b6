"""Shared fixtures: tiny random-init ViTs and configs (CPU, a few ms per forward)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm is imported anywhere
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_TEACHER = {"depth": 4, "embed_dim": 96, "num_heads": 3}
TINY_STUDENT = {"depth": 3, "embed_dim": 48, "num_heads": 3}


def tiny_config(kind: str = "SiNGER", size: int = 32, **overrides):
    """A mutable config for a 4-block width-96 teacher and a 3-block width-48 student at ``size`` px."""
    from mdistiller.config import get_default_config

    cfg = get_default_config()
    cfg.DISTILLER.TYPE = kind
    cfg.DISTILLER.TEACHER = "vit_small"
    cfg.DISTILLER.STUDENT = "vit_tiny"
    cfg.DISTILLER.TEACHER_WEIGHTS = "random"
    for k, v in TINY_TEACHER.items():
        cfg.DISTILLER.TEACHER_KWARGS[k] = v
    for k, v in TINY_STUDENT.items():
        cfg.DISTILLER.STUDENT_KWARGS[k] = v
    cfg.DATASET.INPUT_SIZE = size
    cfg.SiNGER.M_LAYERS = [1]
    cfg.FITNET.LAYERS = [1]  # FitNet distils the same layers as SiNGER
    cfg.SiNGER.RANK = 8
    for key, value in overrides.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return cfg


@pytest.fixture
def make_cfg():
    return tiny_config


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
