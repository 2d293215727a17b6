"""A seeded comparison at CPU scale: FitNet, ViTKD and three SiNGER modes × clean / emulated-artifact teacher × seeds.

Every run is the demo setting (DINOv2-S/14 → ViT-Ti on toy scenes, 𝒟 = {8, 11}) with the same budget; only the
method, the teacher (clean, or with the persistent emulated artifacts of ``configs/demo/artifacts.yaml``) and the
seed (initialisation, data order, probe split) change. The SiNGER modes take every ``SiNGER.*`` key and the L_KD
reduction keys from their preset file, so the study measures exactly what those presets train:

* ``singer_paper``: ``configs/imagenet/vit/singer.yaml`` (eq. 9-12, cosine Gram, raw units, λ = 1);
* ``singer_released``: ``configs/imagenet/vit/singer_official.yaml`` (the released code's choices);
* ``singer_scaled``: ``configs/imagenet/vit/singer_scaled.yaml`` (the scale-aware mode).

Probes (cached protocol, frozen student): toy-scene classification / segmentation / depth and Fashion-MNIST
classification. :func:`summarize` gives mean ± std over seeds and, for each SiNGER mode, the paired difference to
FitNet (same seed, same teacher) with a two-sided 95 % Student-t interval. Everything is resumable: finished runs,
probes and refinement measurements are skipped when their files exist.

The named matrices (:data:`MATRICES`) are the experiments ``tools/study.py --matrix NAME`` runs: ``study`` (the
methods above), ``ladder`` (SiNGER's ablation ladder: FitNet → +units → +fixed clamp → +learned adapter with a random
basis → scale-aware SiNGER, each rung paired with the one below it) and ``long`` (FitNet, the clamp control and
scale-aware SiNGER on the artifact teacher at a budget where the classification probes leave the random-init level).

The package, one concept a module (the names below are exported here, imported on first use):

* :mod:`~mdistiller.study.matrix`: the methods, the named matrices and their runs (plain data and config overrides);
* :mod:`~mdistiller.study.settings`: what one invocation measures (:class:`StudySettings`);
* :mod:`~mdistiller.study.jobs`: the trainings and probes as jobs, in order; the probe settings the demo shares;
* :mod:`~mdistiller.study.results`: the finished probes' numbers and the refinement statistics;
* :mod:`~mdistiller.study.stats`: mean ± std and the paired Student-t intervals;
* :mod:`~mdistiller.study.render`: tables, figure and report from plain data (no torch, no matrix);
* :mod:`~mdistiller.study.run`: one invocation end to end (:func:`run_study`, behind ``tools/study.py``).

The precision choice (``--amp auto``: :func:`native_bf16`, :func:`resolve_amp`) lives in
:mod:`mdistiller.engine.precision` and is re-exported here.
"""

from __future__ import annotations

from typing import Any

from mdistiller.lazy import lazy_exports

_EXPORTS = {
    "matrix": ("ACCEPTANCE_ONLY", "LADDER", "MATRICES", "METHODS", "ROOT", "Matrix", "StudyRun", "mode_overrides",
               "plan_runs", "run_config", "target_changes"),
    "settings": ("StudySettings",),
    "jobs": ("CLS_LRS", "DEMO_DENSE_LRS", "DENSE_LRS", "PROBES", "budget_overrides", "demo_budget", "order_jobs",
             "probe_input_size", "probe_jobs", "probe_options", "progress", "train_jobs"),
    "results": ("read_values", "refinement_run", "refinements", "save_json"),
    "stats": ("T_95", "paired_interval", "summarize", "t_quantile_95"),
    "render": ("acceptance_table", "doc_section", "figure", "format_cell", "partial_note", "render_report",
               "render_tables", "write_doc_section", "write_section"),
    "run": ("run_study",),
}
_PRECISION = ("native_bf16", "resolve_amp")
__all__, _getattr, _dir = lazy_exports(__name__, _EXPORTS)
__all__ = sorted([*__all__, *_PRECISION])


def __getattr__(name: str) -> Any:
    """The package's names, each imported from its module on first access (the precision choice from the engine)."""
    if name in _PRECISION:
        from mdistiller.engine import precision

        return getattr(precision, name)
    return _getattr(name)


def __dir__() -> list[str]:
    """The package's namespace with every exported name."""
    return sorted(set(_dir()) | set(_PRECISION))
