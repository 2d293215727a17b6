"""The dataset registry on its own, so that the dataset modules register into it without importing the package
(``mdistiller/dataset/__init__.py`` imports them, which would otherwise make an import circle)."""

from __future__ import annotations

from mdistiller.registry import Registry

__all__ = ["DATASETS"]

#: dataset name → class with ``build(split, *, root, input_size, train, **kwargs)`` (see :mod:`mdistiller.dataset`)
DATASETS = Registry("dataset")
