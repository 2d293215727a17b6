"""Unlabelled images (``DATASET.FORMAT images``): every image file anywhere under ``DATASET.ROOT``.

Distillation needs no labels, so any folder of one's own images will do: pathology tiles, satellite or driving
frames. The tree is walked with timm's ``find_images_and_targets`` (recursively, following links; the files in
timm's natural-key order of their paths, so ``img2`` comes before ``img10``); hidden files and folders are left
out. Items are ``(transform(RGB image), -1)``.

Splits: when ``ROOT/train`` is a folder, the splits are ``ROOT/train`` and ``ROOT/val``; otherwise the whole tree
is the training split and there is no held-out split (the Trainer then skips its agreement check). The files are a
fixed, sorted list, so the resumable sampler orders them exactly as it orders a class folder's (exact resume), and
an unreadable file follows ``DATASET.SKIP_BAD_IMAGES`` like any other training image.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from mdistiller.dataset.finegrained import ImageListDataset

__all__ = ["IMAGE_TREE_EXTENSIONS", "ImageTree", "find_images"]

IMAGE_TREE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
"""File endings read as images (case-insensitive)."""
NO_LABEL = -1


def find_images(folder: Path) -> list[str]:
    """Every visible image file under ``folder``, in timm's natural-key order of the paths."""
    from timm.data.readers.reader_image_folder import find_images_and_targets

    types = set(IMAGE_TREE_EXTENSIONS) | {e.upper() for e in IMAGE_TREE_EXTENSIONS}
    found, _ = find_images_and_targets(str(folder), types=types, leaf_name_only=True, sort=True)
    return [p for p, _ in found
            if not any(part.startswith(".") for part in Path(os.path.relpath(p, folder)).parts)]


def split_folder(root: Path, split: str) -> Path:
    """The folder of ``split`` (see the module docstring); one sentence when it does not exist."""
    if not root.is_dir():
        raise FileNotFoundError(f"DATASET.ROOT '{root}' (DATASET.FORMAT images) is not a folder: point it at a folder "
                                "of images (any tree of .jpg/.png/... files).")
    if (root / "train").is_dir():
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"DATASET.ROOT '{root}' has a train/ folder but no {split}/ folder; add "
                                    f"{folder} or drop the train/ level to use the whole tree for training.")
        return folder
    if split != "train":
        raise FileNotFoundError(f"DATASET.ROOT '{root}' has no train/ and {split}/ folders, so the whole tree is the "
                                f"training split and there is no {split} split.")
    return root


class ImageTree(ImageListDataset):
    """One split of a tree of unlabelled images (see the module docstring); ``samples`` is ``[(path, -1), ...]``
    and ``classes`` is empty, so ``DATASET.DECODE device`` reads these files too."""

    name = "image tree"

    def __init__(self, root: str | os.PathLike[str], split: str = "train",
                 transform: Callable[[Image.Image], Any] | None = None) -> None:
        self.root, self.split = Path(root).expanduser(), split
        folder = split_folder(self.root, split)
        files = find_images(folder)
        if not files:
            raise ValueError(f"DATASET.ROOT '{self.root}' (DATASET.FORMAT images) holds no images in '{folder}' "
                             f"({'/'.join(e.lstrip('.') for e in IMAGE_TREE_EXTENSIONS)}, any depth); point it at a "
                             "folder with images.")
        super().__init__([(p, NO_LABEL) for p in files], [], transform, layout="any tree of image files")

    def __repr__(self) -> str:
        return f"ImageTree(root='{self.root}', split={self.split!r}, images={len(self)})"
