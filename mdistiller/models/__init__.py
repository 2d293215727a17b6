"""Models: ``build_model`` (short names → timm ViTs), ``ViTFeatures`` (per-block tokens), ``FrozenTeacher``,
emulated artifacts for artifact-free teachers, block-index normalisation and the ViT FLOP bricks."""

from .emulated import ArtifactImplant, artifact_direction, implant_artifacts, patch_pixel_std
from .features import TokenSplit, ViTFeatures, align_patch_grid, grid_of, split_tokens
from .indices import LayerIndexError, normalize_layers
from .teacher import FrozenTeacher
from .zoo import MODEL_NAMES, build_model, check_model_kwargs, check_model_name, model_mean_std, resolve_model_name

__all__ = [
    "MODEL_NAMES",
    "ArtifactImplant",
    "FrozenTeacher",
    "LayerIndexError",
    "TokenSplit",
    "ViTFeatures",
    "align_patch_grid",
    "artifact_direction",
    "build_model",
    "check_model_kwargs",
    "check_model_name",
    "grid_of",
    "implant_artifacts",
    "model_mean_std",
    "normalize_layers",
    "patch_pixel_std",
    "resolve_model_name",
    "split_tokens",
]
