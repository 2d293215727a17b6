"""What every ``tools/analyze.py`` command is (:class:`Command`) and the options and inputs the model-level
commands share (a model name or run directory, an image set, optional emulated artifacts)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Command", "add_model_arguments", "model_inputs", "parse_kv"]


@dataclass(frozen=True)
class Command:
    """One analysis: its name and help line, its options (``add_arguments``), its computation from parsed options
    (``run`` → a report dict), its text tables (``format``) and its figures (``plot(report, out_dir)`` → paths)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]
    format: Callable[[Mapping[str, Any]], str]
    plot: Callable[[Mapping[str, Any], Path], list[Path]]


def parse_kv(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` strings → a dict; values are JSON when they parse (``4``, ``true``), else strings."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--model-kwargs expects KEY=VALUE pairs, got '{item}'.")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def add_model_arguments(p: argparse.ArgumentParser, images: str = "skimage", size: int = 224,
                        num: int | None = None) -> None:
    """The options of a model-level command: model or run directory, weights, images, emulated artifacts."""
    p.add_argument("--model", required=True, help="short/timm model name or a run directory (its teacher)")
    p.add_argument("--weights", default="pretrained", help="pretrained | random | weights file (model names only)")
    p.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra build_model arguments, e.g. depth=4 embed_dim=96 num_heads=3")
    p.add_argument("--images", default=images, choices=("skimage", "toy"),
                   help=f"scikit-image photos or held-out toy scenes (default {images})")
    p.add_argument("--size", type=int, default=size, help=f"image side in px, snapped to the patch size ({size})")
    p.add_argument("--num-images", type=int, default=num, help="number of images (default: all photos / 16 toy)")
    p.add_argument("--emulate", type=int, default=None, metavar="LAYER",
                   help="implant emulated artifacts after this block (labelled 'emulated artifacts')")
    p.add_argument("--emulate-share", type=float, default=0.03, help="share of patches to implant (0.03)")
    p.add_argument("--emulate-scale", type=float, default=10.0, help="implanted norm / image median (10)")
    p.add_argument("--emulate-direction", default="principal", choices=("principal", "null", "random"))


def model_inputs(args: argparse.Namespace):
    """``(AnalysisModel, images, names)`` from the options of :func:`add_model_arguments`."""
    from mdistiller.analysis.inputs import load_analysis_model, load_images

    emulate = None
    if args.emulate is not None:
        emulate = {"layer": args.emulate, "share": args.emulate_share, "scale": args.emulate_scale,
                   "direction": args.emulate_direction}
    am = load_analysis_model(args.model, args.weights, parse_kv(args.model_kwargs), emulate)
    images, names = load_images(args.images, am.snap(args.size), args.num_images)
    return am, images, names
