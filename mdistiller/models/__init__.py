"""Models: ``build_model`` (short names → timm ViTs), ``ViTFeatures`` (per-block tokens), ``FrozenTeacher``."""

from .features import TokenSplit, ViTFeatures, align_patch_grid, grid_of, split_tokens
from .teacher import FrozenTeacher
from .zoo import MODEL_NAMES, build_model, check_model_kwargs, check_model_name, model_mean_std, resolve_model_name

__all__ = [
    "MODEL_NAMES",
    "FrozenTeacher",
    "TokenSplit",
    "ViTFeatures",
    "align_patch_grid",
    "build_model",
    "check_model_kwargs",
    "check_model_name",
    "grid_of",
    "model_mean_std",
    "resolve_model_name",
    "split_tokens",
]
