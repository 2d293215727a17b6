"""What every analysis command is (:class:`Command`), the checks of its option values (:class:`UsageError`) and the
inputs the model-level commands share (a model name or run directory, an image set, optional emulated artifacts).

Nothing here imports torch at module level, so the command line's ``--help`` stays fast; nothing here imports the
other modules of this package (they import this one).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

    from mdistiller.analysis.inputs import AnalysisModel

__all__ = ["Command", "EmulateDirection", "ImageSet", "UsageError", "check_against_model", "check_positive",
           "load_model_inputs"]

#: the image sets of a model-level command (real photos or held-out toy scenes)
ImageSet = Literal["skimage", "toy"]
#: where emulated artifacts point (:func:`mdistiller.models.emulated.implant_artifacts`)
EmulateDirection = Literal["principal", "null", "random"]

#: option values that must be positive integers (as keyword names; the flag is ``--`` + name with ``-`` for ``_``)
POSITIVE = ("size", "batch_size", "num_images", "rank", "jacobian_samples")


@dataclass(frozen=True)
class Command:
    """One analysis: its name and help line, its options (``add_arguments``, argparse only) and the module holding
    its typed entry point ``run(...)`` (→ :class:`~mdistiller.analysis.commands.output.AnalysisResult`), its
    computation, its text tables (``format_text``) and its figures (``plot(report, out_dir)`` → paths). The module
    is imported on first use, so ``--help`` stays fast."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    module: str

    @property
    def impl(self) -> Any:
        """The command's module (imported now)."""
        return importlib.import_module(f"mdistiller.analysis.commands.{self.module}")

    @property
    def function(self) -> Callable[..., Any]:
        """The command's typed entry point, ``<module>.run``."""
        return self.impl.run

    def format(self, report: Mapping[str, Any]) -> str:
        """The command's text tables of ``report``."""
        return self.impl.format_text(report)

    def plot(self, report: Mapping[str, Any], out_dir: Path) -> list[Path]:
        """The command's figures, drawn in the shared type sizes (:func:`mdistiller.analysis.viz.style`)."""
        from mdistiller.analysis.viz import style

        with style():
            return self.impl.plot(report, out_dir)


class UsageError(ValueError):
    """An option value that cannot work, raised before any compute (the command line exits with status 2)."""


def check_positive(values: Mapping[str, Any]) -> None:
    """Raise :class:`UsageError` for a value of :data:`POSITIVE` (or an entry of ``ranks``) in ``values`` below 1;
    ``None`` means "the default" and passes."""
    for opt in POSITIVE:
        v = values.get(opt)
        if v is not None and v < 1:
            raise UsageError(f"--{opt.replace('_', '-')} is {v} but must be a positive integer.")
    if bad := [v for v in values.get("ranks") or [] if v < 1]:
        raise UsageError(f"--ranks {bad} must be positive integers.")


def check_against_model(am: AnalysisModel, *, rank: int | None = None, layers: Iterable[int] = (),
                        emulate: int | None = None) -> None:
    """Raise :class:`UsageError` when ``rank``, ``layers`` or the ``emulate`` layer do not fit the depth and width
    of the analysed model ``am`` (an :class:`~mdistiller.analysis.inputs.AnalysisModel`)."""
    depth, width = am.depth, int(am.net.width)
    if rank is not None and rank > width:
        raise UsageError(f"--rank {rank} exceeds the width {width} of the model; use a rank of at most {width}.")
    if bad := [v for v in layers if not -depth <= v < depth]:
        raise UsageError(f"layer(s) {bad} fall outside the model's {depth} blocks; use 0…{depth - 1}.")
    if emulate is not None and not 0 <= emulate < depth - 1:
        raise UsageError(f"--emulate {emulate} must lie in 0…{depth - 2} for the {depth}-block model.")


def load_model_inputs(
    model: str | Path,
    *,
    weights: str = "pretrained",
    model_kwargs: Mapping[str, Any] | None = None,
    images: ImageSet = "skimage",
    size: int = 224,
    num_images: int | None = None,
    emulate: int | None = None,
    emulate_share: float = 0.03,
    emulate_scale: float = 10.0,
    emulate_direction: EmulateDirection = "principal",
    rank: int | None = None,
    layers: Iterable[int] = (),
) -> tuple[AnalysisModel, torch.Tensor, list[str]]:
    """``(AnalysisModel, images [B, 3, H, W], image names)`` of a model-level command: the model (a short/timm name
    with ``weights`` and ``model_kwargs``, or a run directory: its teacher), emulated artifacts after block
    ``emulate`` if given, checked against ``rank`` and ``layers`` (:func:`check_against_model`), and the image set
    ``images`` at ``size`` snapped to the patch size."""
    from mdistiller.analysis.inputs import load_analysis_model, load_images

    spec = None
    if emulate is not None:
        spec = {"layer": emulate, "share": emulate_share, "scale": emulate_scale, "direction": emulate_direction}
    am = load_analysis_model(str(model), weights, dict(model_kwargs or {}), spec)
    check_against_model(am, rank=rank, layers=layers, emulate=emulate)
    batch, names = load_images(images, am.snap(size), num_images)
    return am, batch, names
