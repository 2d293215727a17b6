"""Hugging Face Arrow datasets (``DATASET.FORMAT hfds``): a dataset written by ``datasets``' ``save_to_disk``.

``DATASET.ROOT`` is one of:

* a ``DatasetDict`` folder (``DatasetDict({"train": ..., "validation": ...}).save_to_disk(ROOT)``);
* a folder holding one saved ``Dataset`` per split, ``ROOT/train`` and ``ROOT/validation`` (or ``ROOT/val``);
* a single saved ``Dataset``: the training split, with no held-out split.

The split ``val`` is found under the name ``validation`` too, and the other way round. The dataset needs an
``image`` column of the ``datasets.Image`` type and an integer ``label`` column (a ``ClassLabel`` gives the class
names). Reading goes through ``datasets.load_from_disk``: the Arrow files are memory-mapped, not loaded, and a row
is read by index, so the resumable sampler orders the rows as it orders a folder's files (exact resume).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mdistiller.dataset.finegrained import decode_rgb, load_rgb
from mdistiller.dataset.transforms import eval_transform

__all__ = ["ArrowSplit", "SPLIT_ALIASES", "require_datasets"]

SPLIT_ALIASES = {"val": ("val", "validation"), "validation": ("validation", "val"), "test": ("test",),
                 "train": ("train",)}
IMAGE_COLUMN, LABEL_COLUMN = "image", "label"


def require_datasets() -> Any:
    """The ``datasets`` module, or one sentence when it is missing."""
    try:
        import datasets
    except ImportError:
        raise ImportError("DATASET.FORMAT hfds needs the datasets package: pip install 'mdistiller[formats]' (or pip "
                          "install datasets).") from None
    return datasets


def _layout(root: Path) -> str:
    return (f"expected {root} written by datasets' save_to_disk: a DatasetDict with train/validation splits, one "
            "saved Dataset per split folder (train/, validation/), or a single Dataset (the training split), with "
            "'image' and 'label' columns")


def _is_saved(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def load_split(root: str | os.PathLike[str], split: str) -> Any:
    """The ``datasets.Dataset`` of ``split`` under ``root`` (see the module docstring); one sentence otherwise."""
    datasets = require_datasets()
    root = Path(root).expanduser()
    names = SPLIT_ALIASES.get(split, (split,))
    if not root.is_dir():
        raise FileNotFoundError(f"DATASET.ROOT '{root}' (DATASET.FORMAT hfds) is not a folder: {_layout(root)}.")
    for name in names:  # one saved Dataset per split folder
        if (root / name / "state.json").is_file():
            return datasets.load_from_disk(str(root / name))
    if not _is_saved(root):
        raise FileNotFoundError(f"DATASET.ROOT '{root}' holds no dataset saved by datasets (no dataset_dict.json, "
                                f"state.json or {names[0]}/state.json): {_layout(root)}.")
    saved = datasets.load_from_disk(str(root))
    if isinstance(saved, datasets.DatasetDict):
        for name in names:
            if name in saved:
                return saved[name]
        raise FileNotFoundError(f"the DatasetDict at DATASET.ROOT '{root}' has the splits {sorted(saved)}, not "
                                f"{' or '.join(names)}: {_layout(root)}.")
    if split == "train":
        return saved
    raise FileNotFoundError(f"DATASET.ROOT '{root}' is a single saved Dataset, used as the training split; it has no "
                            f"{split} split ({_layout(root)}).")


class ArrowSplit(Dataset):
    """One split of a saved Hugging Face dataset; items ``(transform(RGB image), label)``; attributes ``classes``,
    ``targets`` (int64 array) and ``num_classes`` as the folder datasets have them."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train",
                 transform: Callable[[Image.Image], Any] | None = None) -> None:
        datasets = require_datasets()
        self.root, self.split = Path(root).expanduser(), split
        ds = load_split(self.root, split)
        missing = [c for c in (IMAGE_COLUMN, LABEL_COLUMN) if c not in ds.column_names]
        if missing:
            raise ValueError(
                f"the hfds {split} split at DATASET.ROOT '{self.root}' has the columns {ds.column_names}, not "
                f"{' and '.join(repr(c) for c in missing)}; rename them (dataset.rename_column(old, "
                f"{missing[0]!r})) and save the dataset again.")
        if not isinstance(ds.features[IMAGE_COLUMN], datasets.Image):
            raise ValueError(
                f"the 'image' column of the hfds {split} split at DATASET.ROOT '{self.root}' is "
                f"{ds.features[IMAGE_COLUMN]}, not datasets.Image; cast it (dataset.cast_column('image', "
                "datasets.Image())) and save the dataset again.")
        self.data = ds.select_columns([IMAGE_COLUMN, LABEL_COLUMN]).cast_column(IMAGE_COLUMN,
                                                                               datasets.Image(decode=False))
        try:
            self.targets = np.asarray(self.data.with_format("numpy")[LABEL_COLUMN], dtype=np.int64)
        except (TypeError, ValueError):
            raise ValueError(f"the 'label' column of the hfds {split} split at DATASET.ROOT '{self.root}' is "
                             f"{ds.features[LABEL_COLUMN]}, not integer class indices; map it to integers and save "
                             "the dataset again.") from None
        if not len(self.targets):
            raise ValueError(f"the hfds {split} split at DATASET.ROOT '{self.root}' has no rows: {_layout(self.root)}.")
        label_feature = ds.features[LABEL_COLUMN]
        names = getattr(label_feature, "names", None)
        self.classes = list(names) if names else [str(i) for i in range(int(self.targets.max()) + 1)]
        self.transform = transform if transform is not None else eval_transform(224)

    @property
    def num_classes(self) -> int:
        """Number of classes (the label feature's names, else the largest label + 1)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def sample_name(self, i: int) -> str:
        """``'<root>' <split> row <i>``, for messages."""
        return f"'{self.root}' {self.split} row {i}"

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        cell = self.data[int(i)][IMAGE_COLUMN]
        if cell.get("bytes"):
            image = decode_rgb(cell["bytes"], self.sample_name(i))
        elif cell.get("path"):
            image = load_rgb(cell["path"], f"hfds {self.split} row {i}")
        else:
            raise OSError(f"image {self.sample_name(i)} has neither bytes nor a path: rewrite the dataset.")
        return self.transform(image), int(self.targets[i])

    def __repr__(self) -> str:
        return (f"ArrowSplit(root='{self.root}', split={self.split!r}, images={len(self)}, "
                f"classes={self.num_classes})")
