#!/usr/bin/env python
"""Analyse a ViT teacher or trained distillation runs: ``python tools/analyze.py <what> [options]``.

    artifacts        per-layer patch-norm artifacts and the layer recommendation   (--model NAME|RUN_DIR)
    nullspace        singular spectra of W̃_l (Fig. 8) and sub-layer changes (Fig. 7)   (--model)
    null-vs-reality  SiNGER / Jacobian / random bases on the real next block (Table 8+)   (--model)
    subspace         subspace energy of patches vs their norm (App. I, Fig. 13)   (--model)
    adapter          trained SiNGER adapters: Table 3, 5a, 5b, Fig. 6   (RUN_DIR)
    similarity       teacher-student Gram distance and CKA of several runs (Table 2)   (RUN_DIR ...)
    figures          norm / PCA / similarity maps per image (Fig. 2, 9, 11, 12)   (RUN_DIR ...)

Each prints its table (``--json``: the JSON instead) and writes ``<what>.json``, ``<what>.txt`` and PNG figures into
``RUN_DIR/analysis/`` (the first run directory), ``output/analysis/<model>/`` for a model name, or ``--out``.
Results with emulated artifacts (``--emulate LAYER`` or a run trained with them) say "emulated artifacts".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _kv(items: list[str]) -> dict:
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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/analysis or output/analysis/<model>)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the text table")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--wandb", action="store_true",
                   help="also log the report and its figures into the (first) run directory's wandb training run")


def _model_args(p: argparse.ArgumentParser, images: str = "skimage", size: int = 224, num: int | None = None) -> None:
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True, metavar="<what>")

    p = sub.add_parser("artifacts", help="per-layer patch-norm artifacts and the layer recommendation")
    _model_args(p)
    p.add_argument("--k", type=float, nargs="+", default=[2, 4, 10], help="share-above-k x median thresholds")
    p.add_argument("--ratio-threshold", type=float, default=4.0, help="max/median ratio of an artifact-prone layer")
    p.add_argument("--share-threshold", type=float, default=0.01, help="share above share-k x median (0.01)")
    p.add_argument("--share-k", type=float, default=4.0, help="k of the share rule (4)")
    _common(p)

    p = sub.add_parser("nullspace", help="singular spectra of W̃_l and sub-layer changes")
    _model_args(p)
    p.add_argument("--eps", type=float, default=0.05, help="absolute tolerance ε of k_ε and r_ε (0.05)")
    p.add_argument("--rho", type=float, default=0.999, help="energy level of k_energy (0.999)")
    p.add_argument("--rank", type=int, default=16, help="rank r for σ_{d-r+1} (16)")
    p.add_argument("--include-norm", action="store_true", help="fold the pre-FFN LayerNorm scale into W̃")
    p.add_argument("--include-layerscale", action="store_true", help="fold LayerScale into W̃")
    _common(p)

    p = sub.add_parser("null-vs-reality", help="SiNGER / Jacobian / random bases on the real next block")
    _model_args(p, num=8)
    p.add_argument("--layer", type=int, default=None, help="perturbed layer l (default floor(3/4 (L-1)))")
    p.add_argument("--rank", type=int, default=16, help="basis rank r (16)")
    p.add_argument("--scales", type=float, nargs="+", default=[0.05, 0.1, 0.2], help="‖ΔF_i‖/‖F_i‖ per token")
    p.add_argument("--mode", default="random", choices=("random", "projection"),
                   help="ΔF = random combination in span(U) or the projection F U Uᵀ")
    p.add_argument("--jacobian-samples", type=int, default=16, help="tokens for the Jacobian basis (16)")
    p.add_argument("--no-principal", action="store_true", help="leave out the principal-basis reference row")
    p.add_argument("--seed", type=int, default=0)
    _common(p)

    p = sub.add_parser("subspace", help="subspace energy of patches vs their norm (App. I)")
    _model_args(p)
    p.add_argument("--layers", type=int, nargs="+", default=None, help="layers (default: 3/4 depth and last)")
    p.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="ranks r")
    p.add_argument("--basis-block", default="next", choices=("next", "same"),
                   help="W̃ of block l+1 (the adapter's, default) or of block l (App. I as written)")
    p.add_argument("--outlier-k", type=float, default=4.0, help="outlier = norm above k x image median (4)")
    _common(p)

    p = sub.add_parser("adapter", help="trained SiNGER adapters (Table 3, 5a, 5b, Fig. 6)")
    p.add_argument("run_dir", help="run directory of a SiNGER run")
    p.add_argument("--num-images", type=int, default=64, help="held-out toy scenes (64)")
    _common(p)

    p = sub.add_parser("similarity", help="teacher-student Gram distance and CKA (Table 2)")
    p.add_argument("run_dirs", nargs="+", help="run directories, shown side by side")
    p.add_argument("--num-images", type=int, default=64, help="held-out toy scenes (64)")
    _common(p)

    p = sub.add_parser("figures", help="norm / PCA / similarity maps per image (Fig. 2, 9, 11, 12)")
    p.add_argument("run_dirs", nargs="+", help="run directories")
    p.add_argument("--image-index", type=int, nargs="+", default=[0], help="held-out toy scene indices (0)")
    p.add_argument("--patch", default=None, metavar="ROW,COL", help="marked patch (default: the object centre)")
    _common(p)
    return ap.parse_args(argv)


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


def _out_dir(args: argparse.Namespace) -> Path:
    from mdistiller.analysis.reports import is_run_dir

    if args.out:
        return Path(args.out)
    first = getattr(args, "run_dir", None) or (getattr(args, "run_dirs", None) or [None])[0]
    if first is None and is_run_dir(args.model):
        first = args.model
    if first is not None:
        return Path(first) / "analysis"
    return Path("output/analysis") / Path(args.model).name


def build_report(args: argparse.Namespace) -> dict:
    """Run the chosen analysis (the library does the work; this only maps options)."""
    from mdistiller.analysis import reports as R

    if args.what == "adapter":
        return R.adapter_report(args.run_dir, num_images=args.num_images, batch_size=args.batch_size)
    if args.what == "similarity":
        return R.similarity_report(args.run_dirs, num_images=args.num_images, batch_size=args.batch_size)
    if args.what == "figures":
        patch = tuple(int(v) for v in args.patch.split(",")) if args.patch else None
        if patch is not None and len(patch) != 2:
            raise ValueError(f"--patch expects ROW,COL, got '{args.patch}'.")
        return R.figures_report(args.run_dirs, args.image_index, patch)
    emulate = None
    if args.emulate is not None:
        emulate = {"layer": args.emulate, "share": args.emulate_share, "scale": args.emulate_scale,
                   "direction": args.emulate_direction}
    am = R.load_analysis_model(args.model, args.weights, _kv(args.model_kwargs), emulate)
    check_against_model(args, am)
    images, names = R.load_images(args.images, am.snap(args.size), args.num_images)
    if args.what == "artifacts":
        return R.artifacts_report(am, images, names, args.images, k=args.k, ratio_threshold=args.ratio_threshold,
                                  share_threshold=args.share_threshold, share_k=args.share_k,
                                  batch_size=args.batch_size)
    if args.what == "nullspace":
        return R.nullspace_report(am, images, eps=args.eps, rho=args.rho, rank=args.rank,
                                  include_norm=args.include_norm, include_layerscale=args.include_layerscale,
                                  batch_size=args.batch_size)
    if args.what == "null-vs-reality":
        return R.null_vs_reality_report(am, images, layer=args.layer, rank=args.rank, scales=args.scales,
                                        mode=args.mode, jacobian_samples=args.jacobian_samples, seed=args.seed,
                                        include_principal=not args.no_principal, batch_size=args.batch_size)
    return R.subspace_report(am, images, layers=args.layers, ranks=args.ranks, basis_block=args.basis_block,
                             outlier_k=args.outlier_k, batch_size=args.batch_size)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mdistiller.analysis import reports, viz

    try:
        check_args(args)
        report = build_report(args)
        out = _out_dir(args)
        figures = [] if args.no_figures else viz.write_figures(report, out)
        files = reports.save_report(report, out, figures)
        if args.wandb:
            from mdistiller.engine.dashboards import log_analysis

            first = getattr(args, "run_dir", None) or (getattr(args, "run_dirs", None) or [None])[0]
            log_analysis(first or getattr(args, "model", None), report["command"], files["json"], figures)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, KeyError, TypeError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    if args.json:
        print(files["json"].read_text())
    else:
        print(reports.format_report(report))
        print(f"written: {files['json']}, {files['text']}" + (f" and {len(figures)} figures" if figures else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
