"""Analysis library: artifacts, similarity, subspace energy/alignment, sub-layer changes, emulated artifacts.

Pure functions over tensors (plus hooks for timm ViTs) backing the analysis commands and the paper's analyses:
Gram distance / CKA (§4.3, Table 2, Table 5b), patch cosine (Table 3), adapter alignment (eq. 13, Table 5a),
subspace energy (App. I), artifact statistics and the distillation-layer rule (§4.5, Table 7, App. C),
sub-layer changes (App. A.1). Emulated artifacts live with the teacher in :mod:`mdistiller.models.emulated`.

Each analysis command is a typed function, ``mdistiller.analysis.commands.<command>.run(...)`` (returns an
:class:`AnalysisResult`), and :mod:`mdistiller.analysis.cli` is their command line (``mdistiller-analyze``,
``tools/analyze.py``). Names are imported lazily, so ``import mdistiller.analysis.commands`` (the registry and
options behind ``--help``) stays light.
"""

from __future__ import annotations

from mdistiller.lazy import lazy_exports

_EXPORTS = {
    "artifacts": ("LAYER_RULE", "NO_ARTIFACTS_MESSAGE", "extract_patch_tokens", "layer_artifact_table",
                  "patch_norm_stats", "patch_norms", "recommend_layers"),
    "similarity": ("gram", "gram_distance", "linear_cka", "linear_cka_per_image", "patch_cosine", "summary"),
    "sublayer": ("instrument_block", "sublayer_changes", "sublayer_profile"),
    "subspace": ("adapter_alignment", "alignment", "norm_energy_correlation", "pearson", "subspace_energy"),
    "commands": ("COMMANDS", "AnalysisResult", "UsageError", "format_report", "save_report", "write_figures"),
    "commands.adapter": ("adapter_report",),
    "commands.artifacts": ("artifacts_report",),
    "commands.figures": ("figures_report",),
    "commands.null_vs_reality": ("null_vs_reality_report",),
    "commands.nullspace": ("nullspace_report",),
    "commands.similarity": ("similarity_report",),
    "commands.subspace": ("subspace_report",),
    "inputs": ("EMULATED_LABEL", "SKIMAGE_PHOTOS", "AnalysisModel", "load_analysis_model", "load_images"),
    "render": ("to_jsonable",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
