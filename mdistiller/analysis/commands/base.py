"""What every analysis command is (:class:`Command`), the checks of its option values (:class:`UsageError`) and the
inputs the model-level commands share (a model name or run directory, an image set, optional emulated artifacts:
:class:`ModelOptions`, loaded by :func:`load_model_inputs`) and every command's output keywords
(:class:`OutputOptions`).

Nothing here imports torch at module level, so the command line's ``--help`` stays fast; nothing here imports the
other modules of this package (they import this one).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypedDict

if TYPE_CHECKING:
    import torch

    from mdistiller.analysis.inputs import AnalysisModel

__all__ = ["Command", "EmulateDirection", "ImageSet", "ModelCommandOptions", "ModelInputs", "ModelOptions",
           "OutputOptions", "UsageError", "check_against_model", "check_positive", "load_model_inputs",
           "split_options"]

#: the image sets of a model-level command (real photos or held-out toy scenes)
ImageSet = Literal["skimage", "toy"]
#: where emulated artifacts point (:func:`mdistiller.models.emulated.implant_artifacts`)
EmulateDirection = Literal["principal", "null", "random"]

#: option values that must be positive integers (as keyword names; the flag is ``--`` + name with ``-`` for ``_``)
POSITIVE = ("size", "batch_size", "num_images", "rank", "jacobian_samples")


class ModelOptions(TypedDict, total=False):
    """The model and images of a model-level command (keywords of its ``run``, defaults those of
    :func:`load_model_inputs`). Its ``model`` is a short/timm name — built with ``weights`` (``pretrained`` |
    ``random`` | a weights file) and ``model_kwargs`` (for :func:`mdistiller.models.build_model`) — or a run
    directory (its teacher, as trained); ``images``: ``skimage`` photos or held-out ``toy`` scenes, ``num_images``
    of them (default: all photos / 16 toy scenes) at ``size`` px snapped to the patch size; ``emulate``: implant
    emulated artifacts after that block (``emulate_share`` of the patches, ``emulate_scale`` × the image median,
    along ``emulate_direction``; :func:`mdistiller.models.emulated.implant_artifacts`)."""

    weights: str
    model_kwargs: Mapping[str, Any] | None
    images: ImageSet
    size: int
    num_images: int | None
    emulate: int | None
    emulate_share: float
    emulate_scale: float
    emulate_direction: EmulateDirection


class OutputOptions(TypedDict, total=False):
    """Where every command's ``run`` writes (keywords, defaults those of :func:`.output.finish`): ``<command>.json``,
    ``<command>.txt`` and (unless ``figures`` is false) the PNG figures into ``out`` (default ``RUN_DIR/analysis``
    of the model's or the first run directory, else ``output/analysis/<model>``); ``wandb``: also logged beside the
    training run."""

    out: str | Path | None
    figures: bool
    wandb: bool


class ModelCommandOptions(ModelOptions, OutputOptions, total=False):
    """The keywords every model-level command's ``run`` shares: :class:`ModelOptions` (``weights``, ``model_kwargs``,
    ``images``, ``size``, ``num_images``, ``emulate*``) and :class:`OutputOptions` (``out``, ``figures``,
    ``wandb``)."""


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` (:class:`ModelCommandOptions`) split into the :class:`ModelOptions` and the
    :class:`OutputOptions`; ``TypeError`` for a keyword of neither, before any compute."""
    model_keys, output_keys = set(ModelOptions.__annotations__), set(OutputOptions.__annotations__)
    if unknown := sorted(set(options) - model_keys - output_keys):
        raise TypeError(f"run() got an unexpected keyword argument '{unknown[0]}'.")
    return ({k: v for k, v in options.items() if k in model_keys},
            {k: v for k, v in options.items() if k in output_keys})


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

    @property
    def keywords(self) -> set[str]:
        """Every keyword argument ``run`` takes: its named parameters and the keys of its ``**options``
        (a :class:`typing.TypedDict` such as :class:`ModelCommandOptions`)."""
        names = set()
        for p in inspect.signature(self.function).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                (options,) = typing.get_args(typing.get_type_hints(self.function)[p.name])
                names |= set(options.__annotations__)
            else:
                names.add(p.name)
        return names

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


class ModelInputs(NamedTuple):
    """What :func:`load_model_inputs` loads: the model, the images ``[B, 3, H, W]``, their names and the image set
    they come from."""

    model: AnalysisModel
    images: torch.Tensor
    names: list[str]
    image_set: ImageSet


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
) -> ModelInputs:
    """The :class:`ModelInputs` of a model-level command (:class:`ModelOptions`): the model (a short/timm name
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
    return ModelInputs(am, batch, names, images)
