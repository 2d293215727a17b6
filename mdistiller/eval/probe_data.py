"""The data side of a linear probe: which datasets each ``tools/lineval`` command reads, where its results go, and
:func:`make_data`, which builds the datasets and the task of one probe from explicit :class:`DataOptions`.

Imports nothing heavy at module level (the command lines' ``--help`` reads :data:`COMMANDS`); the datasets and
tasks are imported when :func:`make_data` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "CLS_FORMATS", "DEFAULT_ROOTS", "SPLITS", "DataOptions", "default_out_dir", "make_data",
           "result_name"]

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


def _subset(ds: Any, n: int | None, seed: int = 0) -> Any:
    """A seeded random subset of ``n`` items (sorted indices), or ``ds`` itself."""
    if n is None or n >= len(ds):
        return ds
    import numpy as np
    from torch.utils.data import Subset

    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    return Subset(ds, idx.tolist())


@dataclass(frozen=True)
class DataOptions:
    """What a probe reads, as the command-line options name it (``dataset`` for ``--dataset``, ...).

    ``format`` is ImageNet's storage (``folder`` | ``wds`` | ``hfds``); ``num_train`` / ``num_test`` cap the splits
    (toy scenes default to 2000 / 500); ``loss_size`` is the dense heads' target resolution; ``slide`` /
    ``eval_size`` the segmentation sliding window; ``depth_*`` and ``eigen_crop`` the depth head; the ImageNet-R /
    -v2 roots, ``wnids_file`` and ``no_r_mask`` the extra ImageNet tests; ``inat_split_mode`` iNat2019's split.
    """

    dataset: str
    data_root: str | None = None
    format: str = "folder"
    num_train: int | None = None
    num_test: int | None = None
    loss_size: int | None = None
    slide: int | None = None
    eval_size: int | None = None
    depth_mode: str = "bins"
    depth_bins: int = 256
    depth_cls: bool = True
    eigen_crop: bool = False
    depth_aggregate: str = "pixel"
    imagenet_r_root: str | None = None
    imagenet_v2_root: str | None = None
    wnids_file: str | None = None
    no_r_mask: bool = False
    inat_split_mode: str = "paper"


def make_data(command: str, options: DataOptions, input_size: int) -> tuple[Any, Any]:
    """``(ProbeData, Task)`` of the ``tools/lineval/<command>.py`` probe on ``options.dataset`` at ``input_size``.

    Raises ``ValueError`` / ``FileNotFoundError`` with one sentence for missing or unlabelled data.
    """
    from mdistiller.dataset import build_dataset
    from mdistiller.eval.protocols import ClassificationTask, DepthTask, SegmentationTask
    from mdistiller.eval.runner import ProbeData

    kind = COMMANDS[command]["kind"]
    name = options.dataset
    tr_split, te_split = SPLITS[name]
    root = options.data_root
    if root is None:
        root = DEFAULT_ROOTS.get(name)
    info: dict[str, Any] = {"name": name, "root": str(Path(root).resolve()) if root else None,
                            "train_split": tr_split, "test_split": te_split, "input_size": input_size}
    fmt = options.format if name == "imagenet" else "folder"
    if fmt != "folder":
        info["format"] = fmt  # part of the feature caches' key: another storage is other data to them

    def build(split: str, train: bool, size: int = input_size, **kw: Any) -> Any:
        return build_dataset(name, split, root=root, input_size=size, train=train, format=fmt, **kw)

    extra_tests: dict[str, Any] = {}
    slide_test = None
    train_aug = None
    n_train, n_test = options.num_train, options.num_test
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
        if kind == "seg" and options.slide is not None:
            slide_test = build(te_split, False, size=options.eval_size or input_size, **kw_te)
    else:
        kw: dict[str, Any] = {}
        if name == "inat2019":
            kw["split_mode"] = options.inat_split_mode
            info["split_mode"] = options.inat_split_mode
        train, test = build(tr_split, False, **kw), build(te_split, False, **kw)
        train_aug = build(tr_split, True, **kw)
        augment = "dataset"
        aug_desc = {"cls": CLS_AUG + " (dataset transform, bicubic)",
                    "seg": "short side x U(0.5, 2), random crop, flip (DenseTransform 'train')",
                    "depth": "short side x U(1.0, 1.5), random crop, flip (DenseTransform 'train')"}[kind]
        if kind == "seg" and options.slide is not None:
            slide_test = build(te_split, False, size=options.eval_size or input_size, mode="full")
        if command == "imagenet" and name == "imagenet":
            if options.imagenet_r_root:
                r_kw = _wnid_source(options, root, fmt)
                ds_r = build_dataset("imagenet_r", "val", root=options.imagenet_r_root, input_size=input_size,
                                     train=False, mask_classes=not options.no_r_mask, **r_kw)
                extra_tests["imagenet_r"] = (ds_r, ds_r.imagenet_r_class_mask())
                info["imagenet_r"] = {"root": str(Path(options.imagenet_r_root).resolve()), "class_mask":
                                      "all 1000 classes" if options.no_r_mask else "200 IN-R classes"}
            if options.imagenet_v2_root:
                ds_v2 = build_dataset("imagenet_v2", "val", root=options.imagenet_v2_root, input_size=input_size,
                                      train=False)
                extra_tests["imagenet_v2"] = (ds_v2, None)
                info["imagenet_v2"] = {"root": str(Path(options.imagenet_v2_root).resolve())}
        if n_train is not None or n_test is not None:
            info.update({"num_train_images": n_train, "num_test_images": n_test, "subset": "seeded random (seed 0)"})
    if kind == "cls":
        if int(train.num_classes) < 1:
            raise ValueError(f"the {tr_split} split of '{root}' (--format {fmt}) carries no class labels; a "
                             "classification probe needs them (.cls members in wds shards, a label column in hfds).")
        task = ClassificationTask(int(train.num_classes))
    elif kind == "seg":
        ncls = int(getattr(train, "num_seg_classes", train.num_classes))
        task = SegmentationTask(ncls, int(train.ignore_index), loss_size=options.loss_size)
    else:
        task = DepthTask(tuple(train.depth_range), mode=options.depth_mode, n_bins=options.depth_bins,
                         use_cls=options.depth_cls, eigen_crop=options.eigen_crop, aggregate=options.depth_aggregate,
                         loss_size=options.loss_size)
    if name not in ("toy_scenes", "fashion_mnist"):
        train, test = _subset(train, n_train), _subset(test, n_test)
        train_aug = _subset(train_aug, n_train) if train_aug is not None else None
    data = ProbeData(name=name, train=train, test=test, train_aug=train_aug, augment=augment, augment_desc=aug_desc,
                     extra_tests=extra_tests, slide_test=slide_test, info=info)
    return data, task


def _wnid_source(options: DataOptions, root: str | None, fmt: str) -> dict[str, Any]:
    """Where ImageNet-R finds the 1000 ImageNet wnids: ``--wnids-file``, the class folders of a ``folder`` root, or
    the ``classes.txt`` beside wds shards (``tools/convert_data.py`` writes it); one sentence otherwise."""
    if options.wnids_file:
        return {"wnids_file": options.wnids_file}
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
