"""mdistiller (SiNGER edition): distilling large Vision Transformers into small ones.

Methods: FitNet (eq. 1), ViTKD (Yang et al. 2024) and SiNGER (eq. 6-12) of
*SiNGER: A Clearer Voice Distills Vision Transformers Further* (ICLR 2026).

Two calls (imported lazily, so ``import mdistiller`` stays cheap)::

    run = mdistiller.train("configs/demo/singer.yaml", overrides={"SOLVER.MAX_STEPS": 20}, run_dir="out/singer")
    res = mdistiller.evaluate(run["run_dir"], task="transfer", dataset="toy_scenes")
"""

from __future__ import annotations

from typing import Any

from .hooks import register_check, register_hook  # hooks imports nothing: `import mdistiller` stays instant

__version__ = "0.1.0"
__all__ = ["train", "evaluate", "configs_dir", "__version__"]


def train(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`mdistiller.api.train`."""
    from mdistiller.api import train as _train

    return _train(*args, **kwargs)


def evaluate(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`mdistiller.api.evaluate`."""
    from mdistiller.api import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def configs_dir():
    """See :func:`mdistiller.config.configs_dir`."""
    from mdistiller.config import configs_dir as _configs_dir

    return _configs_dir()


# Config checks that need the layers above mdistiller.config, imported only when a config is validated.
register_check("mdistiller.distillers.build:check_config_against_models")
register_check("mdistiller.dataset:check_dataset_config")
register_check("mdistiller.dataset.device_decode:check_decode_config")
# What the training engine calls into the analysis package for (imported on first use).
register_hook("run_figures", "mdistiller.analysis.commands.figures:run_figures")
