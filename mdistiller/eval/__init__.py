"""Evaluation of frozen students with linear probes: metrics and heads (DINOv2-style protocols)."""

from mdistiller.eval.heads import (
    DepthHead,
    LinearClsHead,
    LinearHeadGrid,
    MultiHead,
    SegHead,
    select_best,
    sliding_window_logits,
    tokens_to_grid,
)
from mdistiller.eval.metrics import (
    ConfusionMatrix,
    DepthMetrics,
    accuracy,
    all_reduce_,
    eigen_crop_box,
    eigen_crop_mask,
    topk_correct,
)

__all__ = [
    "ConfusionMatrix",
    "DepthHead",
    "DepthMetrics",
    "LinearClsHead",
    "LinearHeadGrid",
    "MultiHead",
    "SegHead",
    "accuracy",
    "all_reduce_",
    "eigen_crop_box",
    "eigen_crop_mask",
    "select_best",
    "sliding_window_logits",
    "tokens_to_grid",
    "topk_correct",
]
