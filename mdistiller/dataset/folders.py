"""ImageNet-style class folders: ``root/{train,val}/<class>/*.JPEG|jpg|jpeg|png``.

The class list is the sorted list of class-folder names; label ``i`` is the i-th name.  When both
``train`` and ``val`` exist their class folders must be the same, so labels mean the same in both.
A missing or malformed tree stops early with one sentence that shows the expected layout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from mdistiller.dataset.catalog import DATASETS
from mdistiller.dataset.finegrained import ImageListDataset
from mdistiller.dataset.transforms import eval_transform

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
"""File endings counted as images (case-insensitive, so ImageNet's ``.JPEG`` matches)."""
SPLIT_NAMES = ("train", "val")


def _class_dirs(split_dir: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``split_dir``."""
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _images(class_dir: Path) -> list[str]:
    """Sorted file names in ``class_dir`` that end with an image extension."""
    with os.scandir(class_dir) as it:
        return sorted(
            e.name
            for e in it
            if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
        )


@DATASETS.register("imagenet")
class ImageFolderSplit(ImageListDataset):
    """One split of an ImageNet-style folder tree; items are ``(transform(PIL RGB image), int label)``.

    ``transform`` defaults to :func:`eval_transform` at 224 px.  ``name`` only changes the wording of
    error messages (e.g. "Flowers-102" for another dataset stored in the same layout).
    Attributes follow torchvision's ``ImageFolder``: ``classes``, ``class_to_idx``, ``samples``, ``targets``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        transform: Callable[[Image.Image], Any] | None = None,
        name: str = "ImageNet",
    ) -> None:
        if root is None:
            raise ValueError(
                f"{name} needs a root folder: pass root=/path/with/train/<wnid>/*.JPEG and val/<wnid>/*.JPEG "
                "(DATASET.ROOT in the config; see data/README.md)."
            )
        self.root = Path(root).expanduser()
        self.split = split
        self.name = name
        self.transform = transform if transform is not None else eval_transform(224)
        r = self.root
        layout = f"expected {r}/train/<wnid>/*.JPEG and {r}/val/<wnid>/*.JPEG (see data/README.md)"
        if not r.is_dir():
            raise FileNotFoundError(f"{name} folder '{r}' not found: {layout}.")
        split_dir = r / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"{name} split folder '{split_dir}' not found: {layout}.")
        classes = _class_dirs(split_dir)
        if not classes:
            raise ValueError(f"{name} split folder '{split_dir}' has no class folders: {layout}.")
        for other in SPLIT_NAMES:
            other_dir = r / other
            if other == split or not other_dir.is_dir():
                continue
            other_classes = _class_dirs(other_dir)
            if other_classes != classes:
                only_here = sorted(set(classes) - set(other_classes))
                only_there = sorted(set(other_classes) - set(classes))
                example = (
                    f"'{only_here[0]}' is only in {split}" if only_here else f"'{only_there[0]}' is only in {other}"
                )
                raise ValueError(
                    f"{name} folder '{r}' has {len(classes)} class folders in {split} and {len(other_classes)} in "
                    f"{other} ({example}): expected the same <wnid> folders under {r}/train and {r}/val "
                    "(see data/README.md)."
                )
        samples: list[tuple[str, int]] = []
        for idx, cls in enumerate(classes):
            files = _images(split_dir / cls)
            if not files:
                raise ValueError(
                    f"{name} class folder '{split_dir / cls}' has no images (.JPEG/.jpg/.jpeg/.png): add its images "
                    f"or remove it; {layout}."
                )
            samples.extend((str(split_dir / cls / f), idx) for f in files)
        super().__init__(samples, classes, self.transform, layout)
        self.class_to_idx = {c: i for i, c in enumerate(classes)}

    def __repr__(self) -> str:
        return (
            f"ImageFolderSplit(root='{self.root}', split={self.split!r}, classes={len(self.classes)}, "
            f"images={len(self.samples)})"
        )
