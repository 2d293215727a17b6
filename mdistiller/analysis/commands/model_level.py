"""The body every model-level command's ``run`` shares (``artifacts``, ``nullspace``, ``null-vs-reality``,
``subspace``): check the option values, load the model and images, compute the command's report, write it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .base import ModelCommandOptions, ModelInputs, check_positive, load_model_inputs, split_options
from .output import AnalysisResult, finish

__all__ = ["run_on_model"]


def run_on_model(model: str | Path, options: ModelCommandOptions, report: Callable[[ModelInputs], dict[str, Any]],
                 *, rank: int | None = None, layers: Iterable[int] = (), **positive: Any) -> AnalysisResult:
    """A model-level command's run: ``options`` checked (:func:`.base.split_options`; ``size``, ``num_images``,
    ``rank`` and the values of ``positive`` must be positive: :class:`.base.UsageError`), then
    :func:`.output.finish` of ``report`` on the model ``model`` and the images of ``options``
    (:func:`.base.load_model_inputs`, checked against ``rank`` and ``layers``), written as ``options`` say."""
    inputs, output = split_options(options)
    check_positive({**inputs, "rank": rank, **positive})

    def compute() -> dict[str, Any]:
        return report(load_model_inputs(model, **inputs, rank=rank, layers=layers))

    return finish(compute, source=model, **output)
