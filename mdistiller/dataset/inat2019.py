"""iNaturalist 2019 (1,010 species) from its official COCO-style json annotations.

Layout (the official ``train_val2019.tar.gz`` + ``train2019.json.tar.gz`` + ``val2019.json.tar.gz``)::

    <root>/train2019.json   <root>/val2019.json
    <root>/train_val2019/<supercategory>/<category id>/<hash>.jpg

Each json holds ``images`` (``{"id", "file_name"}``, ``file_name`` relative to ``root``),
``annotations`` (``{"image_id", "category_id"}``) and ``categories`` (``{"id", "name", ...}``).
Labels are the category ids (0..1009; any other id set is mapped to its sorted index).

Two split modes:

* ``split_mode="paper"`` (default): the SiNGER paper's protocol as released.  The 268,243 images of
  train + val are ordered like torchvision's ``INaturalist(version="2019")`` index (category id, then
  file name), shuffled with ``torch.randperm`` from a generator seeded with ``seed`` (1234), and the
  first ``int(0.8 * N)`` = 214,594 are ``train``, the remaining 53,649 ``test`` (``val`` is an alias).
  torchvision lists files with ``os.listdir``, whose order depends on the file system, so the released
  split itself is not portable; this one sorts file names, so it is the same on every machine.
* ``split_mode="official"``: ``train`` = ``train2019.json`` (265,213), ``val`` = ``val2019.json``
  (3,030); ``test`` is an alias for ``val`` (the official test labels were never released).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from mdistiller.dataset.catalog import DATASETS
from mdistiller.dataset.finegrained import ImageListDataset, Transform, locate_dataset

SPLIT_MODES = ("paper", "official")
SPLITS = ("train", "val", "test")
PAPER_SEED = 1234
PAPER_TRAIN_FRACTION = 0.8
LAYOUT = (
    "<root>/train2019.json, <root>/val2019.json and the images they name under <root>/train_val2019/"
    "<supercategory>/<category id>/*.jpg (the official iNat2019 archives)"
)


def read_inat_json(path: Path) -> tuple[list[tuple[str, int]], dict[int, str]]:
    """``([(file_name, category_id), ...], {category_id: name})`` from one iNat json file."""
    if not path.is_file():
        raise FileNotFoundError(f"iNat2019 file '{path}' not found: expected {LAYOUT} (see data/README.md).")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(
            f"iNat2019 file '{path}' has no '{missing[0]}' list: use the official train2019.json/val2019.json "
            "(test2019.json has no labels)."
        )
    files = {img["id"]: img["file_name"] for img in data["images"]}
    entries = []
    for ann in data["annotations"]:
        if ann["image_id"] not in files:
            raise ValueError(
                f"iNat2019 file '{path}' annotates image id {ann['image_id']}, which its 'images' list lacks: "
                "re-extract the official json."
            )
        entries.append((files[ann["image_id"]], int(ann["category_id"])))
    if len(entries) != len(files):
        raise ValueError(
            f"iNat2019 file '{path}' has {len(files)} images but {len(entries)} annotations: expected one label "
            "per image, as in the official json."
        )
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
    return entries, names


def paper_split_indices(
    n: int, seed: int = PAPER_SEED, train_fraction: float = PAPER_TRAIN_FRACTION
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train indices, test indices)`` of the released 80/20 split: ``torch.randperm(n)`` seeded with ``seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = int(train_fraction * n)
    return perm[:n_train], perm[n_train:]


@DATASETS.register("inat2019")
class INaturalist2019(ImageListDataset):
    """iNaturalist 2019 with ``split_mode`` ``"paper"`` (seeded 80/20 of train+val) or ``"official"``.

    ``seed`` and ``train_fraction`` only affect the paper mode.  ``classes`` are the species names in
    category-id order; ``category_ids[label]`` is the json id.
    """

    name = "iNat2019"

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str = "test",
        transform: Transform | None = None,
        split_mode: str = "paper",
        seed: int = PAPER_SEED,
        train_fraction: float = PAPER_TRAIN_FRACTION,
    ) -> None:
        if split_mode not in SPLIT_MODES:
            raise ValueError(f"unknown iNat2019 split_mode '{split_mode}': use one of {', '.join(SPLIT_MODES)}.")
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"iNat2019 train_fraction is {train_fraction}: it must lie strictly between 0 and 1.")
        r = locate_dataset(self.name, root, split, SPLITS, LAYOUT)
        train, names = read_inat_json(r / "train2019.json")
        val, val_names = read_inat_json(r / "val2019.json")
        names.update(val_names)
        ids = sorted(names)
        label_of = {cid: i for i, cid in enumerate(ids)}
        for fname, cid in (*train, *val):
            if cid not in label_of:
                raise ValueError(
                    f"iNat2019 image '{fname}' has category id {cid}, which no 'categories' entry defines: "
                    "re-extract the official json files."
                )
        if split_mode == "official":
            entries = train if split == "train" else val
        else:
            # torchvision's INaturalist(version="2019") index order: category id, then file (sorted here).
            everything = sorted(set(train) | set(val), key=lambda e: (e[1], os.path.basename(e[0])))
            tr, te = paper_split_indices(len(everything), seed, train_fraction)
            entries = [everything[i] for i in (tr if split == "train" else te).tolist()]
        samples = [(str(r / fname), label_of[cid]) for fname, cid in entries]
        self.root, self.split, self.split_mode, self.seed = r, split, split_mode, seed
        self.category_ids = ids
        super().__init__(samples, [names[c] for c in ids], transform, LAYOUT)

    def __repr__(self) -> str:
        return (
            f"INaturalist2019(split={self.split!r}, split_mode={self.split_mode!r}, classes={self.num_classes}, "
            f"images={len(self)})"
        )
