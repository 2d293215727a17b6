"""Distillers (FitNet, ViTKD, SiNGER, the supervised baseline) over one ``Distiller`` base, selected by
``DISTILLER.TYPE`` through the ``DISTILLERS`` registry (see :mod:`.build`)."""

from __future__ import annotations

from .base import AdapterInit, Distiller, LayerPlan, RefinedFeatures
from .build import DISTILLERS, build_distiller, build_teacher, check_config_against_models, plan_layers, weights_arg
from .fitnet import FitNet
from .layers import map_layers, normalize_layers
from .losses import feature_kd_loss, gram, gram_mse, outlier_loss
from .singer import SiNGER
from .supervised import Supervised, dataset_num_classes
from .vitkd import ViTKD

__all__ = [
    "DISTILLERS",
    "AdapterInit",
    "Distiller",
    "FitNet",
    "LayerPlan",
    "RefinedFeatures",
    "SiNGER",
    "Supervised",
    "ViTKD",
    "build_distiller",
    "build_teacher",
    "check_config_against_models",
    "dataset_num_classes",
    "feature_kd_loss",
    "gram",
    "gram_mse",
    "map_layers",
    "normalize_layers",
    "outlier_loss",
    "plan_layers",
    "weights_arg",
]
