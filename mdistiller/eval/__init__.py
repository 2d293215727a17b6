"""Evaluation of frozen students with linear probes (DINOv2-style protocols).

* :mod:`~mdistiller.eval.metrics` — top-k accuracy, dataset-level confusion matrix (mIoU), depth errors;
* :mod:`~mdistiller.eval.heads` — linear classification grid, segmentation and depth heads;
* :mod:`~mdistiller.eval.features` — which blocks / tokens / norm a probe sees, and the frozen backbone;
* :mod:`~mdistiller.eval.cache` — one memory-mapped feature file per split;
* :mod:`~mdistiller.eval.protocols` — the three tasks behind one interface, online augmentations;
* :mod:`~mdistiller.eval.runner` — the single engine (cached and online protocols, LR grid, val selection);
* :mod:`~mdistiller.eval.probe_data` — each command's datasets, result names and folders, ``make_data``;
* :mod:`~mdistiller.eval.probing` — :func:`probe` (a ``tools/lineval`` command as a function), ``ProbeResult``,
  ``ProbeError`` and the process-pool job ``probe_job``;
* :mod:`~mdistiller.eval.cli` / :mod:`~mdistiller.eval.table` — the ``tools/lineval`` commands and Table 1.

Names are imported lazily, so ``import mdistiller.eval.cli`` (argument parsing, ``--help``) stays light.
"""

from __future__ import annotations

from mdistiller.lazy import lazy_exports

_EXPORTS = {
    "heads": ("DepthHead", "LinearHeadGrid", "SegHead", "select_best",
              "sliding_window_logits", "tokens_to_grid"),
    "metrics": ("ConfusionMatrix", "DepthMetrics", "accuracy", "all_reduce_", "eigen_crop_box", "eigen_crop_mask",
                "topk_correct"),
    "features": ("Backbone", "FeatureExtractor", "FeatureSpec", "load_backbone", "parse_layers"),
    "cache": ("CachedSplit", "build_cache", "open_cache"),
    "protocols": ("ClassificationTask", "DepthTask", "HeadBank", "SegmentationTask", "Task", "paired_random_crop",
                  "random_resized_crop"),
    "runner": ("ProbeData", "ProbeSettings", "carve_validation", "evaluate", "run_probe", "train_heads"),
    "probe_data": ("DataOptions", "make_data"),
    "probing": ("ProbeError", "ProbeResult", "probe", "probe_job"),
    "table": ("collect_results", "render_csv", "render_markdown"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
