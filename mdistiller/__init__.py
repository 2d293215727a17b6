"""mdistiller (SiNGER edition): distilling large Vision Transformers into small ones.

Methods: FitNet (eq. 1), ViTKD (Yang et al. 2024) and SiNGER (eq. 6-12) of
*SiNGER: A Clearer Voice Distills Vision Transformers Further* (ICLR 2026).

Two calls (imported lazily, so ``import mdistiller`` stays cheap)::

    run = mdistiller.train("configs/demo/singer.yaml", overrides={"SOLVER.MAX_STEPS": 20}, run_dir="out/singer")
    res = mdistiller.evaluate(run["run_dir"], task="transfer", dataset="toy_scenes")

The links one module makes to another by a ``"module:function"`` name (hooks, config checks, job targets) are
declared in :mod:`mdistiller.hooks`; ``python -m mdistiller COMMAND`` runs the command lines (``__main__.py``).
"""

from __future__ import annotations

from typing import Any

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

