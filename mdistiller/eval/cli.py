"""Shared command line of ``tools/lineval/{imagenet,ade20k,nyud,transfer}.py``: parse the arguments, then call
:func:`mdistiller.eval.probing.probe` with them (the summary line on stdout, ``error: <sentence>`` on stderr).

Argument parsing imports nothing heavy (``--help`` is instant); the backbone, datasets and engine are imported
only when a probe runs. Every command writes ``<out dir>/<task>.json`` (``<task>.online.json`` for the online
protocol) where ``<out dir>`` is ``RUN_DIR/lineval`` for a run directory and ``output/lineval/<name>`` for a
model name, and ``<task>`` depends on the dataset only:

==============================  =================================
dataset                          task (file name)
==============================  =================================
imagenet (+ IN-R / IN-v2)        ``imagenet``
ade20k                           ``ade20k``
nyud                             ``nyud``
aircraft, pets, food101, ...     ``transfer_<dataset>``
fashion_mnist                    ``transfer_fashion_mnist``
toy_scenes                       ``toy_scenes_cls`` / ``toy_scenes_seg`` / ``toy_scenes_depth``
==============================  =================================
"""

from __future__ import annotations

import argparse
from typing import Any

# the names after CLS_FORMATS and probe_job lived here before the library had its own modules (probe_data, probing)
from mdistiller.eval.probe_data import CLS_FORMATS, COMMANDS, _wnid_source, default_out_dir, make_data, result_name  # noqa: F401
from mdistiller.eval.probing import log_result_to_wandb, probe_job, summary_line  # noqa: F401

__all__ = ["COMMANDS", "build_parser", "main", "probe_options", "result_name", "run_command"]

def _floats(text: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers (e.g. 1e-3,1e-2)") \
            from None
    if not out:
        raise argparse.ArgumentTypeError("give at least one learning rate")
    return out


def build_parser(command: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``tools/lineval/<command>.py``."""
    spec = COMMANDS[command]
    kind = spec["kind"]
    p = argparse.ArgumentParser(
        prog=prog or f"tools/lineval/{command}.py",
        description=f"{spec['doc']} Trains linear heads on a frozen backbone over a learning-rate grid, selects the "
                    "best on a validation split carved from the training data and reports its test metrics.",
        epilog="Results: RUN_DIR/lineval/<task>.json (or output/lineval/<name>/<task>.json for a model name); "
               "protocols and their comparability: docs/lineval.md.")
    p.add_argument("target", help="a tools/train.py run directory, a model name (e.g. dinov2_small_imgfocus) or "
                                  "random:<name> (random init, e.g. random:vit_tiny)")
    p.add_argument("--dataset", choices=spec["datasets"], default=spec["default"], required=spec["default"] is None,
                   help=f"dataset (default: {spec['default']})" if spec["default"] else "dataset (required)")
    p.add_argument("--data-root", default=None,
                   help="dataset folder (default: data/<dataset>, or data/ holding the torchvision-style fine-grained "
                        "folders; see data/README.md)")
    if command == "imagenet":
        p.add_argument("--format", choices=CLS_FORMATS, default="folder",
                       help="how --data-root stores ImageNet (--dataset imagenet): folder (train/<wnid>/*.JPEG), wds "
                            "(train-*.tar / val-*.tar WebDataset shards) or hfds (a dataset saved by Hugging Face "
                            "datasets, splits train/validation); the unlabelled 'images' format of training has no "
                            "labels to probe (docs/data-formats.md). Default: folder")
    p.add_argument("--protocol", choices=("cached", "online"), default="cached",
                   help="cached: features extracted once (fast, no augmentation); online: backbone on augmented "
                        "images every step (headline numbers). Default: cached")
    g = p.add_argument_group("features")
    g.add_argument("--input-size", type=int, default=None,
                   help="image size (default: the run's training size, 224 for a model name)")
    g.add_argument("--layers", default="last", help="blocks: last, lastN (e.g. last4) or indices 8,11 (default: last)")
    g.add_argument("--tokens", choices=("cls", "avg", "cls+avg") if kind == "cls" else ("patch",),
                   default="cls" if kind == "cls" else "patch", help="token layout (docs/lineval.md)")
    g.add_argument("--norm", action=argparse.BooleanOptionalAction, default=True,
                   help="apply the model's final LayerNorm to the chosen blocks (default: on, as DINOv2)")
    g = p.add_argument_group("training and selection")
    g.add_argument("--epochs", type=int, default=None, help="epochs (default: 30 cached, 10 online)")
    g.add_argument("--batch-size", type=int, default=256 if kind == "cls" else 16, help="global training batch")
    g.add_argument("--eval-batch-size", type=int, default=256 if kind == "cls" else 16)
    g.add_argument("--lrs", type=_floats, default=None,
                   help="comma-separated learning-rate grid, one head each (default: DINOv2's 13 LRs x batch/256 "
                        "with SGD for classification; 3e-4,1e-3,3e-3 with AdamW for dense heads)")
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--val-fraction", type=float, default=0.1, help="share of train held out for selection")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--num-train", type=int, default=None,
                   help="use this many training images (toy scenes default 2000; a seeded subset for folders)")
    g.add_argument("--num-test", type=int, default=None, help="use this many test images (toy scenes default 500)")
    g = p.add_argument_group("execution")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    g.add_argument("--workers", type=int, default=2, help="data-loader workers per process")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bf16 backbone on CUDA")
    g.add_argument("--cache-dir", default=None, help="feature caches (default: <out dir>/cache)")
    g.add_argument("--cache-dtype", choices=("float16", "float32"), default="float16")
    g.add_argument("--reuse-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse a complete cache built from the same weights, features and data (default: on)")
    g.add_argument("--out", default=None, help="result JSON path (default: <out dir>/<task>[.online].json)")
    g.add_argument("--verbose", action="store_true", help="log extraction and per-epoch losses to stderr")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars for feature extraction (default: on when stderr is a terminal)")
    g.add_argument("--wandb", action="store_true",
                   help="also log the result to wandb: a run of its own in the training run's group "
                        "(RUN_DIR/wandb_run.json), job type eval, the metrics as summary entries")
    if kind in ("seg", "depth"):
        g = p.add_argument_group("dense heads")
        g.add_argument("--loss-size", type=int, default=None,
                       help="compute the training loss on targets resized (nearest) to this size (saves memory)")
    if kind == "seg":
        g.add_argument("--slide", type=int, default=None, metavar="STRIDE",
                       help="sliding-window test inference with windows of --input-size and this stride, on "
                            "test images of --eval-size (ADE20K: short side, whole image)")
        g.add_argument("--eval-size", type=int, default=None, help="test image size for --slide")
    if kind == "depth":
        g.add_argument("--depth-mode", choices=("bins", "regression"), default="bins")
        g.add_argument("--depth-bins", type=int, default=256)
        g.add_argument("--depth-cls", action=argparse.BooleanOptionalAction, default=True,
                       help="concatenate the CLS token to every patch token (default: on)")
        g.add_argument("--eigen-crop", action="store_true", help="score only the Eigen crop (full-frame images)")
        g.add_argument("--depth-aggregate", choices=("pixel", "image"), default="pixel")
    if command == "imagenet":
        g = p.add_argument_group("ImageNet-R / ImageNet-v2 (reuse the ImageNet head)")
        g.add_argument("--imagenet-r-root", default=None, help="ImageNet-R folder (<wnid>/*.jpg)")
        g.add_argument("--imagenet-v2-root", default=None, help="ImageNet-v2 folder (<0..999>/*.jpeg)")
        g.add_argument("--wnids-file", default=None, help="ImageNet wnid list for IN-R labels (default: the "
                                                          "class folders of --data-root)")
        g.add_argument("--no-r-mask", action="store_true",
                       help="argmax over all 1000 classes on IN-R (the released code) instead of the 200 IN-R classes")
    if command == "transfer":
        g = p.add_argument_group("iNat2019")
        g.add_argument("--inat-split-mode", choices=("paper", "official"), default="paper",
                       help="paper: the released seeded 80/20 split of train+val; official: train2019/val2019")
    return p


def main(command: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``tools/lineval/<command>.py`` (and ``mdistiller-lineval <command>``)."""
    args = build_parser(command, prog).parse_args(argv)
    return run_command(command, args)


# --------------------------------------------------------------------------------------------------
# from parsed arguments to the library
# --------------------------------------------------------------------------------------------------

#: parsed arguments that are not keyword arguments of :func:`mdistiller.eval.probing.probe`
_NOT_OPTIONS = ("target",)


def probe_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`mdistiller.eval.probing.probe` that parsed arguments ``args`` stand for
    (every option under its own name: ``--num-train`` is ``num_train``)."""
    return {k: v for k, v in vars(args).items() if k not in _NOT_OPTIONS}


def run_command(command: str, args: argparse.Namespace) -> int:
    """Run one probe from parsed arguments: the summary line on stdout, or ``error: <sentence>`` on stderr; returns
    the exit status (0, 1, 2 for a bad option, 130 when interrupted while probing)."""
    return probe_job(args.target, command, probe_options(args))
