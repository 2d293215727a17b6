"""SiNGER's nullspace machinery (App. A) and LoRA adapter (eq. 6-8)."""

from .adapter import SiNGERAdapter
from .nullspace import (
    jacobian_null_basis,
    k_energy,
    k_eps,
    linearize_ffn,
    null_basis,
    principal_basis,
    random_basis,
    singular_spectrum,
    threshold_basis,
)

__all__ = [
    "SiNGERAdapter",
    "jacobian_null_basis",
    "k_energy",
    "k_eps",
    "linearize_ffn",
    "null_basis",
    "principal_basis",
    "random_basis",
    "singular_spectrum",
    "threshold_basis",
]
