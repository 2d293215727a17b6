"""Shared command line of ``tools/lineval/{imagenet,ade20k,nyud,transfer}.py``: parse, build, probe, write JSON.

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
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "build_parser", "main", "result_name", "run_command"]

COMMANDS: dict[str, dict[str, Any]] = {
    "imagenet": {"kind": "cls", "default": "imagenet", "datasets": ("imagenet", "toy_scenes", "fashion_mnist"),
                 "doc": "ImageNet-1k linear classification (top-1/top-5); with --imagenet-r-root / --imagenet-v2-root "
                        "the selected head is also tested on ImageNet-R (200-class mask) and ImageNet-v2."},
    "transfer": {"kind": "cls", "default": None,
                 "datasets": ("aircraft", "pets", "food101", "flowers102", "inat2019", "toy_scenes", "fashion_mnist"),
                 "doc": "Linear classification on a transfer set (fine-grained, iNat2019, Fashion-MNIST, toy scenes)."},
    "ade20k": {"kind": "seg", "default": "ade20k", "datasets": ("ade20k", "toy_scenes"),
               "doc": "Linear semantic segmentation (BN + 1x1 conv on patch tokens, dataset-level mIoU)."},
    "nyud": {"kind": "depth", "default": "nyud", "datasets": ("nyud", "toy_scenes"),
             "doc": "Linear monocular depth (BN + 1x1 conv on patch (+) CLS tokens, 256 bins, RMSE)."},
}
# (train split, test split) of each dataset; the validation split is always carved from the train split
SPLITS = {"imagenet": ("train", "val"), "aircraft": ("trainval", "test"), "pets": ("trainval", "test"),
          "food101": ("train", "test"), "flowers102": ("trainval", "test"), "inat2019": ("train", "test"),
          "toy_scenes": ("train", "test"), "fashion_mnist": ("train", "test"), "ade20k": ("train", "val"),
          "nyud": ("train", "test")}
# default --data-root; the fine-grained loaders also accept the parent folder of their archive (torchvision layout)
DEFAULT_ROOTS = {"imagenet": "data/imagenet", "ade20k": "data/ade20k", "nyud": "data/nyud", "inat2019": "data/inat2019",
                 "aircraft": "data", "pets": "data", "food101": "data", "flowers102": "data"}
TOY_DEFAULT_SIZES = (2000, 500)
# the DATASET.FORMAT values a classification probe reads (the unlabelled 'images' format has nothing to probe)
CLS_FORMATS = ("folder", "wds", "hfds")
CLS_AUG = "RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3) + horizontal flip"


def result_name(dataset: str, kind: str) -> str:
    """The ``<task>`` part of the result file name (see the module docstring)."""
    if dataset == "toy_scenes":
        return f"toy_scenes_{kind}"
    if dataset in ("imagenet", "ade20k", "nyud"):
        return dataset
    return f"transfer_{dataset}"


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
# heavy part
# --------------------------------------------------------------------------------------------------


def _error(msg: str, code: int = 1) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def _subset(ds: Any, n: int | None, seed: int = 0) -> Any:
    """A seeded random subset of ``n`` items (sorted indices), or ``ds`` itself."""
    if n is None or n >= len(ds):
        return ds
    import numpy as np
    from torch.utils.data import Subset

    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    return Subset(ds, idx.tolist())


def make_data(command: str, args: argparse.Namespace, input_size: int) -> tuple[Any, Any]:
    """``(ProbeData, Task)`` for the command's dataset."""
    from mdistiller.dataset import build_dataset
    from mdistiller.eval.protocols import ClassificationTask, DepthTask, SegmentationTask
    from mdistiller.eval.runner import ProbeData

    kind = COMMANDS[command]["kind"]
    name = args.dataset
    tr_split, te_split = SPLITS[name]
    root = args.data_root
    if root is None:
        root = DEFAULT_ROOTS.get(name)
    info: dict[str, Any] = {"name": name, "root": str(Path(root).resolve()) if root else None,
                            "train_split": tr_split, "test_split": te_split, "input_size": input_size}
    fmt = getattr(args, "format", "folder") if name == "imagenet" else "folder"
    if fmt != "folder":
        info["format"] = fmt  # part of the feature caches' key: another storage is other data to them

    def build(split: str, train: bool, size: int = input_size, **kw: Any) -> Any:
        return build_dataset(name, split, root=root, input_size=size, train=train, format=fmt, **kw)

    extra_tests: dict[str, Any] = {}
    slide_test = None
    train_aug = None
    n_train, n_test = args.num_train, args.num_test
    if name in ("toy_scenes", "fashion_mnist"):
        if name == "toy_scenes":
            n_train = n_train or TOY_DEFAULT_SIZES[0]
            n_test = n_test or TOY_DEFAULT_SIZES[1]
            kw_tr, kw_te = {"num_images": n_train}, {"num_images": n_test}
        else:
            kw_tr, kw_te = {"limit": n_train}, {"limit": n_test}
        train, test = build(tr_split, False, **kw_tr), build(te_split, False, **kw_te)
        info.update({"num_train_images": n_train, "num_test_images": n_test, "subset": "first N"})
        augment = "tensor"
        aug_desc = {"cls": CLS_AUG, "seg": "paired random square crop (area 0.25-1) + flip, target nearest",
                    "depth": "paired random square crop (area 0.5-1) + flip, target nearest"}[kind]
        if kind == "seg" and args.slide is not None:
            slide_test = build(te_split, False, size=args.eval_size or input_size, **kw_te)
    else:
        kw: dict[str, Any] = {}
        if name == "inat2019":
            kw["split_mode"] = args.inat_split_mode
            info["split_mode"] = args.inat_split_mode
        train, test = build(tr_split, False, **kw), build(te_split, False, **kw)
        train_aug = build(tr_split, True, **kw)
        augment = "dataset"
        aug_desc = {"cls": CLS_AUG + " (dataset transform, bicubic)",
                    "seg": "short side x U(0.5, 2), random crop, flip (DenseTransform 'train')",
                    "depth": "short side x U(1.0, 1.5), random crop, flip (DenseTransform 'train')"}[kind]
        if kind == "seg" and args.slide is not None:
            slide_test = build(te_split, False, size=args.eval_size or input_size, mode="full")
        if command == "imagenet" and name == "imagenet":
            if args.imagenet_r_root:
                r_kw = _wnid_source(args, root, fmt)
                ds_r = build_dataset("imagenet_r", "val", root=args.imagenet_r_root, input_size=input_size,
                                     train=False, mask_classes=not args.no_r_mask, **r_kw)
                extra_tests["imagenet_r"] = (ds_r, ds_r.imagenet_r_class_mask())
                info["imagenet_r"] = {"root": str(Path(args.imagenet_r_root).resolve()), "class_mask":
                                      "all 1000 classes" if args.no_r_mask else "200 IN-R classes"}
            if args.imagenet_v2_root:
                ds_v2 = build_dataset("imagenet_v2", "val", root=args.imagenet_v2_root, input_size=input_size,
                                      train=False)
                extra_tests["imagenet_v2"] = (ds_v2, None)
                info["imagenet_v2"] = {"root": str(Path(args.imagenet_v2_root).resolve())}
        if n_train is not None or n_test is not None:
            info.update({"num_train_images": n_train, "num_test_images": n_test, "subset": "seeded random (seed 0)"})
    if kind == "cls":
        if int(train.num_classes) < 1:
            raise ValueError(f"the {tr_split} split of '{root}' (--format {fmt}) carries no class labels; a "
                             "classification probe needs them (.cls members in wds shards, a label column in hfds).")
        task = ClassificationTask(int(train.num_classes))
    elif kind == "seg":
        ncls = int(getattr(train, "num_seg_classes", train.num_classes))
        task = SegmentationTask(ncls, int(train.ignore_index), loss_size=args.loss_size)
    else:
        task = DepthTask(tuple(train.depth_range), mode=args.depth_mode, n_bins=args.depth_bins,
                         use_cls=args.depth_cls, eigen_crop=args.eigen_crop, aggregate=args.depth_aggregate,
                         loss_size=args.loss_size)
    if name not in ("toy_scenes", "fashion_mnist"):
        train, test = _subset(train, n_train), _subset(test, n_test)
        train_aug = _subset(train_aug, n_train) if train_aug is not None else None
    data = ProbeData(name=name, train=train, test=test, train_aug=train_aug, augment=augment, augment_desc=aug_desc,
                     extra_tests=extra_tests, slide_test=slide_test, info=info)
    return data, task


def _wnid_source(args: argparse.Namespace, root: str | None, fmt: str) -> dict[str, Any]:
    """Where ImageNet-R finds the 1000 ImageNet wnids: ``--wnids-file``, the class folders of a ``folder`` root, or
    the ``classes.txt`` beside wds shards (``tools/convert_data.py`` writes it); one sentence otherwise."""
    if args.wnids_file:
        return {"wnids_file": args.wnids_file}
    if fmt == "folder":
        return {"imagenet_root": root}
    listed = Path(root or ".") / "classes.txt"
    if fmt == "wds" and listed.is_file():
        return {"wnids_file": str(listed)}
    raise ValueError(f"--imagenet-r-root with --format {fmt} needs --wnids-file (the 1000 ImageNet wnids, one per "
                     "line, in label order): only class folders or a wds classes.txt name them.")


def default_out_dir(target: str) -> Path:
    """``RUN_DIR/lineval`` for a run directory, else ``output/lineval/<name>`` (``:`` becomes ``-``)."""
    p = Path(target).expanduser()
    if p.is_dir():
        return p / "lineval"
    return Path("output") / "lineval" / target.replace(":", "-").replace("/", "_")


def summary_line(result: dict[str, Any], path: Path) -> str:
    """The one-line human summary printed by every command."""
    m, kind = result["metrics"], result["task_kind"]
    if kind == "cls":
        main = f"top-1 {m['top1']:.2f} | top-5 {m['top5']:.2f}"
        for k, label in (("imagenet_r", "IN-R"), ("imagenet_v2", "IN-v2")):
            if k in result["extra_tests"]:
                main += f" | {label} top-1 {result['extra_tests'][k]['top1']:.2f}"
        val = f"val top-1 {result['val_metrics'][result['chosen_head']]['top1']:.2f}"
    elif kind == "seg":
        main = f"mIoU {100 * m['miou']:.2f} | pixel acc {100 * m['pixel_accuracy']:.2f}"
        val = f"val mIoU {100 * result['val_metrics'][result['chosen_head']]['miou']:.2f}"
    else:
        main = f"RMSE {m['rmse']:.4f} | AbsRel {m['abs_rel']:.4f} | d1 {100 * m['d1']:.2f}"
        val = f"val RMSE {result['val_metrics'][result['chosen_head']]['rmse']:.4f}"
    return (f"{result['task']} [{result['protocol']['name']}] {result['model']['label']}: {main} | "
            f"lr {result['chosen_lr']:g} ({val}) | {result['time']['total_s']:.1f} s -> {path}")


def run_command(command: str, args: argparse.Namespace) -> int:
    """Run one probe from parsed arguments; returns the exit status."""
    from mdistiller.engine.distributed import cleanup, init_distributed
    from mdistiller.eval.features import FeatureSpec, load_backbone, parse_layers
    from mdistiller.eval.runner import ProbeSettings, run_probe
    from mdistiller.fileio import atomic_write

    try:
        spec = FeatureSpec(layers=parse_layers(args.layers), final_norm=args.norm, tokens=args.tokens)
    except ValueError as e:
        return _error(str(e), 2)
    try:
        backbone = load_backbone(args.target, seed=args.seed)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        return _error(str(e).strip("'\""))
    try:
        spec.resolve(backbone.features.depth)
    except ValueError as e:
        return _error(f"--layers: {e}", 2)
    input_size = args.input_size or backbone.default_input_size
    kind = COMMANDS[command]["kind"]
    task_name = result_name(args.dataset, kind)
    out_dir = default_out_dir(args.target)
    out = Path(args.out) if args.out else out_dir / f"{task_name}{'.online' if args.protocol == 'online' else ''}.json"
    try:
        data, task = make_data(command, args, input_size)
        if kind == "depth" and not backbone.features.has_cls:
            task.use_cls = False
        settings = ProbeSettings(
            protocol=args.protocol, epochs=args.epochs or (30 if args.protocol == "cached" else 10),
            batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, lrs=args.lrs,
            weight_decay=args.weight_decay, val_fraction=args.val_fraction, seed=args.seed,
            num_workers=args.workers, cache_dir=str(Path(args.cache_dir) if args.cache_dir else out_dir / "cache"),
            cache_dtype=args.cache_dtype, reuse_cache=args.reuse_cache, amp=args.amp, verbose=args.verbose,
            progress=args.progress,
            slide=(input_size, args.slide) if getattr(args, "slide", None) else None)
        if settings.slide is not None and backbone.features.patch_size and input_size % backbone.features.patch_size:
            raise ValueError(f"--input-size {input_size} is the sliding window and must be a multiple of the patch "
                             f"size {backbone.features.patch_size}.")
    except (ValueError, FileNotFoundError, KeyError, ImportError) as e:
        return _error(str(e).strip("'\""))
    env = init_distributed(args.device)
    try:
        result = run_probe(backbone, spec, task, data, settings, device=env.device)
    except FloatingPointError as e:
        return _error(str(e))
    except OSError as e:  # an unreadable image (also inside a loader worker), a full disk: one sentence
        from mdistiller.dataset.bad_images import bad_image_sentence

        return _error(bad_image_sentence(e))
    except KeyboardInterrupt:
        print("interrupted; complete feature caches are kept and a partial one is rebuilt: rerun the same command "
              "to continue.", file=sys.stderr)
        return 130
    finally:
        cleanup()
    result = {"task": task_name, "command": f"tools/lineval/{command}.py", "argv": sys.argv[1:], **result}
    if env.is_main:
        atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2, default=_json_default)))
        print(summary_line(result, out), flush=True)
        if args.wandb:
            log_result_to_wandb(args.target, result, online=args.protocol == "online")
    return 0


def log_result_to_wandb(run_dir: str, result: dict[str, Any], online: bool = False) -> bool:
    """Log a probe result beside the wandb run of the training run ``run_dir`` (a run of its own in its group,
    ``job_type`` eval): the summary entries ``lineval/<task>/<metric>`` and ``lineval/<task>[.online]``, which
    ``tools/lineval/table.py --wandb`` reads."""
    from mdistiller.engine.dashboards import log_to_run

    if not Path(run_dir).is_dir():
        print(f"warning: --wandb needs a training run directory, not '{run_dir}'; the result is in the JSON only.",
              file=sys.stderr)
        return False
    task = result["task"] + (".online" if online else "")
    scalars = {f"lineval/{task}/{k}": v for k, v in result["metrics"].items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    for name, metrics in (result.get("extra_tests") or {}).items():
        scalars |= {f"lineval/{task}/{name}/{k}": v for k, v in metrics.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)}
    cell = json.loads(json.dumps({k: result.get(k) for k in ("metrics", "extra_tests", "chosen_lr", "task_kind")}
                                 | {"protocol": result["protocol"]["name"],
                                    "student_fingerprint": result["model"].get("student_fingerprint")},
                                 default=_json_default))
    return log_to_run(run_dir, scalars, summary={f"lineval/{task}": cell}, job_type="eval", label=f"lineval/{task}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
