"""What every ``tools/analyze.py`` command is (:class:`Command`) and the inputs the model-level commands share
(a model name or run directory, an image set, optional emulated artifacts)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Command", "model_inputs"]


@dataclass(frozen=True)
class Command:
    """One analysis: its name and help line, its options (``add_arguments``, argparse only), ``run(args)`` → a
    report dict, and the module holding its computation, text tables (``format_text``) and figures
    (``plot(report, out_dir)`` → paths). The module is imported on first use, so ``--help`` stays fast."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]
    module: str

    @property
    def impl(self) -> Any:
        return importlib.import_module(f"mdistiller.analysis.commands.{self.module}")

    def format(self, report: Mapping[str, Any]) -> str:
        return self.impl.format_text(report)

    def plot(self, report: Mapping[str, Any], out_dir: Path) -> list[Path]:
        """The command's figures, drawn in the shared type sizes (:func:`mdistiller.analysis.viz.style`)."""
        from mdistiller.analysis.viz import style

        with style():
            return self.impl.plot(report, out_dir)


class UsageError(ValueError):
    """An option value that cannot work (exit code 2, before any compute)."""


def check_args(args: argparse.Namespace) -> None:
    """Option values that are wrong for any model."""
    for opt in ("size", "batch_size", "num_images", "rank", "jacobian_samples"):
        v = getattr(args, opt, None)
        if v is not None and v < 1:
            raise UsageError(f"--{opt.replace('_', '-')} is {v} but must be a positive integer.")
    if bad := [v for v in getattr(args, "ranks", None) or [] if v < 1]:
        raise UsageError(f"--ranks {bad} must be positive integers.")


def check_against_model(args: argparse.Namespace, am) -> None:
    """Option values that must fit the analysed model's depth and width."""
    depth, width = am.depth, int(am.net.width)
    rank = getattr(args, "rank", None)
    if rank is not None and rank > width:
        raise UsageError(f"--rank {rank} exceeds the width {width} of the model; use a rank of at most {width}.")
    layers = list(getattr(args, "layers", None) or []) + [v for v in (getattr(args, "layer", None),) if v is not None]
    if bad := [v for v in layers if not -depth <= v < depth]:
        raise UsageError(f"layer(s) {bad} fall outside the model's {depth} blocks; use 0…{depth - 1}.")
    if args.emulate is not None and not 0 <= args.emulate < depth - 1:
        raise UsageError(f"--emulate {args.emulate} must lie in 0…{depth - 2} for the {depth}-block model.")


def model_inputs(args: argparse.Namespace):
    """``(AnalysisModel, images, names)`` from the options of :func:`add_model_arguments`."""
    from mdistiller.analysis.inputs import load_analysis_model, load_images

    from .options import parse_kv

    emulate = None
    if args.emulate is not None:
        emulate = {"layer": args.emulate, "share": args.emulate_share, "scale": args.emulate_scale,
                   "direction": args.emulate_direction}
    am = load_analysis_model(args.model, args.weights, parse_kv(args.model_kwargs), emulate)
    check_against_model(args, am)
    images, names = load_images(args.images, am.snap(args.size), args.num_images)
    return am, images, names
