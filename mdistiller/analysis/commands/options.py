"""The options of every analysis command (argparse only, so ``--help`` never waits for torch) and the parsers of
the option strings that are not plain values (``--model-kwargs``, ``--patch``). An option's destination is the
keyword argument of the command's typed ``run(...)`` of the same name (``--no-figures``/``--no-principal`` become
``figures``/``principal``); :mod:`mdistiller.analysis.cli` makes the call. This module imports nothing else of
the package."""

from __future__ import annotations

import argparse
import json
from typing import Any


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


def artifacts_options(p: argparse.ArgumentParser) -> None:
    """per-layer patch-norm artifacts and the layer recommendation"""
    add_model_arguments(p)
    p.add_argument("--k", type=float, nargs="+", default=[2, 4, 10], help="share-above-k x median thresholds")
    p.add_argument("--ratio-threshold", type=float, default=4.0, help="max/median ratio of an artifact-prone layer")
    p.add_argument("--share-threshold", type=float, default=0.01, help="share above share-k x median (0.01)")
    p.add_argument("--share-k", type=float, default=4.0, help="k of the share rule (4)")


def nullspace_options(p: argparse.ArgumentParser) -> None:
    """singular spectra of W̃_l and sub-layer changes"""
    add_model_arguments(p)
    p.add_argument("--eps", type=float, default=0.05, help="absolute tolerance ε of k_ε and r_ε (0.05)")
    p.add_argument("--rho", type=float, default=0.999, help="energy level of k_energy (0.999)")
    p.add_argument("--rank", type=int, default=16, help="rank r for σ_{d-r+1} (16)")
    p.add_argument("--include-norm", action="store_true", help="fold the pre-FFN LayerNorm scale into W̃")
    p.add_argument("--include-layerscale", action="store_true", help="fold LayerScale into W̃")


def null_vs_reality_options(p: argparse.ArgumentParser) -> None:
    """SiNGER / Jacobian / random bases on the real next block"""
    add_model_arguments(p, num=8)
    p.add_argument("--layer", type=int, default=None, help="perturbed layer l (default floor(3/4 (L-1)))")
    p.add_argument("--rank", type=int, default=16, help="basis rank r (16)")
    p.add_argument("--scales", type=float, nargs="+", default=[0.05, 0.1, 0.2], help="‖ΔF_i‖/‖F_i‖ per token")
    p.add_argument("--mode", default="random", choices=("random", "projection"),
                   help="ΔF = random combination in span(U) or the projection F U Uᵀ")
    p.add_argument("--jacobian-samples", type=int, default=16, help="tokens for the Jacobian basis (16)")
    p.add_argument("--no-principal", action="store_true", help="leave out the principal-basis reference row")
    p.add_argument("--seed", type=int, default=0)


def subspace_options(p: argparse.ArgumentParser) -> None:
    """subspace energy of patches vs their norm (App. I)"""
    add_model_arguments(p)
    p.add_argument("--layers", type=int, nargs="+", default=None, help="layers (default: 3/4 depth and last)")
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="ranks r")
    p.add_argument("--basis-block", default="next", choices=("next", "same"),
                   help="W̃ of block l+1 (the adapter's, default) or of block l (App. I as written)")
    p.add_argument("--outlier-k", type=float, default=4.0, help="outlier = norm above k x image median (4)")


def adapter_options(p: argparse.ArgumentParser) -> None:
    """trained SiNGER adapters (Table 3, 5a, 5b, Fig. 6)"""
    p.add_argument("run_dir", help="run directory of a SiNGER run")
    p.add_argument("--num-images", type=int, default=64, help="held-out toy scenes (64)")


def similarity_options(p: argparse.ArgumentParser) -> None:
    """teacher-student Gram distance and CKA (Table 2)"""
    p.add_argument("run_dirs", nargs="+", help="run directories, shown side by side")
    p.add_argument("--num-images", type=int, default=64, help="held-out toy scenes (64)")


def figures_options(p: argparse.ArgumentParser) -> None:
    """norm / PCA / similarity maps per image (Fig. 2, 9, 11, 12)"""
    p.add_argument("run_dirs", nargs="+", help="run directories")
    p.add_argument("--image-index", type=int, nargs="+", default=[0], help="held-out toy scene indices (0)")
    p.add_argument("--patch", default=None, metavar="ROW,COL", help="marked patch (default: the object centre)")


def parse_patch(text: str | None) -> tuple[int, int] | None:
    """``"ROW,COL"`` → ``(row, col)`` (``None`` stays ``None``): the ``--patch`` option of ``figures``."""
    if not text:
        return None
    patch = tuple(int(v) for v in text.split(","))
    if len(patch) != 2:
        raise ValueError(f"--patch expects ROW,COL, got '{text}'.")
    return patch[0], patch[1]
