"""Analysis library: artifacts, similarity, subspace energy/alignment, sub-layer changes, emulated artifacts.

Pure functions over tensors (plus hooks for timm ViTs) backing ``tools/analyze.py`` and the paper's analyses:
Gram distance / CKA (§4.3, Table 2, Table 5b), patch cosine (Table 3), adapter alignment (eq. 13, Table 5a),
subspace energy (App. I), artifact statistics and the distillation-layer rule (§4.5, Table 7, App. C),
sub-layer changes (App. A.1). Emulated artifacts live with the teacher in :mod:`mdistiller.models.emulated`.
"""

from .artifacts import (
    LAYER_RULE,
    NO_ARTIFACTS_MESSAGE,
    extract_patch_tokens,
    layer_artifact_table,
    patch_norm_stats,
    patch_norms,
    recommend_layers,
)
from .similarity import gram, gram_distance, linear_cka, linear_cka_per_image, patch_cosine, summary
from .sublayer import instrument_block, sublayer_changes, sublayer_profile
from .subspace import adapter_alignment, alignment, norm_energy_correlation, pearson, subspace_energy

__all__ = [
    "LAYER_RULE",
    "NO_ARTIFACTS_MESSAGE",
    "adapter_alignment",
    "alignment",
    "extract_patch_tokens",
    "gram",
    "gram_distance",
    "instrument_block",
    "layer_artifact_table",
    "linear_cka",
    "linear_cka_per_image",
    "norm_energy_correlation",
    "patch_cosine",
    "patch_norm_stats",
    "patch_norms",
    "pearson",
    "recommend_layers",
    "sublayer_changes",
    "sublayer_profile",
    "subspace_energy",
    "summary",
]

# Reports behind tools/analyze.py: shared inputs and rendering, one module per command (commands/).
from .commands import COMMANDS, format_report, save_report, write_figures  # noqa: E402
from .commands.adapter import adapter_report  # noqa: E402
from .commands.artifacts import artifacts_report  # noqa: E402
from .commands.figures import figures_report  # noqa: E402
from .commands.null_vs_reality import null_vs_reality_report  # noqa: E402
from .commands.nullspace import nullspace_report  # noqa: E402
from .commands.similarity import similarity_report  # noqa: E402
from .commands.subspace import subspace_report  # noqa: E402
from .inputs import EMULATED_LABEL, SKIMAGE_PHOTOS, AnalysisModel, load_analysis_model, load_images  # noqa: E402
from .render import to_jsonable  # noqa: E402

__all__ += [
    "COMMANDS",
    "EMULATED_LABEL",
    "SKIMAGE_PHOTOS",
    "AnalysisModel",
    "adapter_report",
    "artifacts_report",
    "figures_report",
    "format_report",
    "load_analysis_model",
    "load_images",
    "null_vs_reality_report",
    "nullspace_report",
    "save_report",
    "similarity_report",
    "subspace_report",
    "to_jsonable",
    "write_figures",
]
