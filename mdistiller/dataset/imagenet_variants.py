"""ImageNet-R and ImageNet-V2: test sets evaluated with the ImageNet-1k linear head ("DS top-1" in the paper).

Both hand out **1000-way ImageNet-1k labels**, so the IN-1k head is reused unchanged:

* **ImageNet-R** (``imagenet_r``): ``root/<wnid>/*`` with 200 class folders.  A folder's label is the
  index of its wnid in the *sorted* ImageNet-1k wnid list (the index :class:`ImageFolderSplit` gives the
  same class), taken from an ImageNet folder tree (``imagenet_root``, e.g. the config's ImageNet
  ``DATASET.ROOT``) or from a text file (``wnids_file``: one wnid per line, as first token, e.g.
  ``LOC_synset_mapping.txt``); nothing is downloaded.  The common IN-R protocol restricts the argmax
  to the 200 IN-R classes: :meth:`ImageNetR.imagenet_r_class_mask` (or :func:`imagenet_r_class_mask`)
  gives that ``BoolTensor[1000]`` and :func:`restrict_logits` applies it.  ``mask_classes=False``
  (the released code's choice) makes the dataset's mask all-``True``.
* **ImageNet-V2** (``imagenet_v2``): ``root/<0..999>/*.jpeg`` as in the official tarballs
  (matched-frequency, threshold-0.7 or top-images); the label is ``int(folder name)``, which is already
  the IN-1k index.

Both are single test sets: ``split`` may be ``val`` or ``test`` (the same images).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from mdistiller.dataset.catalog import DATASETS
from mdistiller.dataset.finegrained import ImageListDataset, Transform, locate_dataset
from mdistiller.dataset.folders import _class_dirs, _images

IMAGENET_R_WNIDS: tuple[str, ...] = tuple(
    """
n01443537 n01484850 n01494475 n01498041 n01514859 n01518878 n01531178 n01534433 n01614925 n01616318
n01630670 n01632777 n01644373 n01677366 n01694178 n01748264 n01770393 n01774750 n01784675 n01806143
n01820546 n01833805 n01843383 n01847000 n01855672 n01860187 n01882714 n01910747 n01944390 n01983481
n01986214 n02007558 n02009912 n02051845 n02056570 n02066245 n02071294 n02077923 n02085620 n02086240
n02088094 n02088238 n02088364 n02088466 n02091032 n02091134 n02092339 n02094433 n02096585 n02097298
n02098286 n02099601 n02099712 n02102318 n02106030 n02106166 n02106550 n02106662 n02108089 n02108915
n02109525 n02110185 n02110341 n02110958 n02112018 n02112137 n02113023 n02113624 n02113799 n02114367
n02117135 n02119022 n02123045 n02128385 n02128757 n02129165 n02129604 n02130308 n02134084 n02138441
n02165456 n02190166 n02206856 n02219486 n02226429 n02233338 n02236044 n02268443 n02279972 n02317335
n02325366 n02346627 n02356798 n02363005 n02364673 n02391049 n02395406 n02398521 n02410509 n02423022
n02437616 n02445715 n02447366 n02480495 n02480855 n02481823 n02483362 n02486410 n02510455 n02526121
n02607072 n02655020 n02672831 n02701002 n02749479 n02769748 n02793495 n02797295 n02802426 n02808440
n02814860 n02823750 n02841315 n02843684 n02883205 n02906734 n02909870 n02939185 n02948072 n02950826
n02951358 n02966193 n02980441 n02992529 n03124170 n03272010 n03345487 n03372029 n03424325 n03452741
n03467068 n03481172 n03494278 n03495258 n03498962 n03594945 n03602883 n03630383 n03649909 n03676483
n03710193 n03773504 n03775071 n03888257 n03930630 n03947888 n04086273 n04118538 n04133789 n04141076
n04146614 n04147183 n04192698 n04254680 n04266014 n04275548 n04310018 n04325704 n04347754 n04389033
n04409515 n04465501 n04487394 n04522168 n04536866 n04552348 n04591713 n07614500 n07693725 n07695742
n07697313 n07697537 n07714571 n07714990 n07718472 n07720875 n07734744 n07742313 n07745940 n07749582
n07753275 n07753592 n07768694 n07873807 n07880968 n07920052 n09472597 n09835506 n10565667 n12267677
""".split()
)
"""The 200 ImageNet-1k wnids that ImageNet-R covers (sorted), as in the dataset's release."""

NUM_IMAGENET_CLASSES = 1000
TEST_SPLITS = ("val", "test")
_WNID = re.compile(r"^n\d{8}$")


def read_wnids(path: str | os.PathLike[str]) -> list[str]:
    """The wnids of a text file, in file order: the first token of each non-empty line.

    Accepts a plain list (``n01440764`` per line) or ``LOC_synset_mapping.txt``
    (``n01440764 tench, Tinca tinca``).  The order of the file is the label order.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"ImageNet wnid file '{p}' not found: pass wnids_file= a text file with the 1000 sorted ImageNet-1k "
            "wnids, one per line (e.g. LOC_synset_mapping.txt), or imagenet_root= your ImageNet folder."
        )
    with open(p, encoding="utf-8") as f:
        wnids = [line.split()[0] for line in f if line.strip()]
    bad = [w for w in wnids if not _WNID.match(w)]
    if bad:
        raise ValueError(f"ImageNet wnid file '{p}' has '{bad[0]}', which is not a wnid like n01440764: fix the file.")
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"ImageNet wnid file '{p}' lists some wnid twice: each of the 1000 wnids must appear once.")
    return wnids


def imagenet_wnids(
    imagenet_root: str | os.PathLike[str] | None = None, wnids_file: str | os.PathLike[str] | None = None
) -> list[str]:
    """The ImageNet-1k wnid list that defines label indices: from ``wnids_file`` or an ImageNet folder tree.

    With ``imagenet_root`` the list is the sorted class folders of ``imagenet_root/train`` (else ``/val``,
    else the root itself), exactly the labels :class:`~mdistiller.dataset.folders.ImageFolderSplit` uses.
    """
    if wnids_file is not None:
        return read_wnids(wnids_file)
    if imagenet_root is None:
        raise ValueError(
            "ImageNet-R needs the ImageNet-1k class list to map its 200 folders onto 1000-way labels: pass "
            "imagenet_root=<ImageNet folder with train/<wnid>/> or wnids_file=<text file with the 1000 wnids>."
        )
    r = Path(imagenet_root).expanduser()
    for cand in (r / "train", r / "val", r):
        if cand.is_dir():
            wnids = [w for w in _class_dirs(cand) if _WNID.match(w)]
            if wnids:
                return wnids
    raise FileNotFoundError(
        f"ImageNet folder '{r}' has no <wnid> class folders in train/, val/ or itself: pass imagenet_root= the "
        "folder holding train/n01440764/..., or wnids_file= a text file with the 1000 wnids."
    )


def imagenet_r_class_mask(imagenet_wnid_list: Sequence[str], r_wnids: Iterable[str] = IMAGENET_R_WNIDS) -> torch.Tensor:
    """``BoolTensor[len(imagenet_wnid_list)]`` (``[1000]``), ``True`` at the classes in ``r_wnids``.

    Every wnid of ``r_wnids`` must be in ``imagenet_wnid_list``.
    """
    index = {w: i for i, w in enumerate(imagenet_wnid_list)}
    mask = torch.zeros(len(imagenet_wnid_list), dtype=torch.bool)
    for w in r_wnids:
        if w not in index:
            raise ValueError(f"wnid '{w}' is not in the ImageNet-1k wnid list: pass the full 1000-class list.")
        mask[index[w]] = True
    return mask


def restrict_logits(logits: torch.Tensor, class_mask: torch.Tensor) -> torch.Tensor:
    """``logits [..., C]`` with the classes outside ``class_mask [C]`` set to ``-inf`` (argmax/top-k stay inside)."""
    if class_mask.shape[-1] != logits.shape[-1]:
        raise ValueError(
            f"class mask has {class_mask.shape[-1]} entries but the logits have {logits.shape[-1]} classes: build the "
            "mask from the same wnid list as the head."
        )
    return logits.masked_fill(~class_mask.to(logits.device), float("-inf"))


@DATASETS.register("imagenet_r")
class ImageNetR(ImageListDataset):
    """ImageNet-R (``root/<wnid>/*``) with 1000-way ImageNet-1k labels.

    ``classes`` is the full ImageNet-1k wnid list (so ``num_classes == 1000`` and ``classes[target]`` is
    the wnid); ``r_wnids`` the class folders found under ``root``.  ``mask_classes`` (default ``True``)
    decides what :meth:`imagenet_r_class_mask` returns: the folders' classes, or all classes.
    ``num_imagenet_classes`` (default 1000; ``None`` skips the check) is the size the wnid list must have.
    """

    name = "ImageNet-R"

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str = "val",
        transform: Transform | None = None,
        imagenet_root: str | os.PathLike[str] | None = None,
        wnids_file: str | os.PathLike[str] | None = None,
        mask_classes: bool = True,
        num_imagenet_classes: int | None = NUM_IMAGENET_CLASSES,
    ) -> None:
        layout = "<root>/<wnid>/*.jpg with the 200 class folders of the official imagenet-r.tar"
        r = locate_dataset(self.name, root, split, TEST_SPLITS, layout)
        wnids = imagenet_wnids(imagenet_root, wnids_file)
        if num_imagenet_classes is not None and len(wnids) != num_imagenet_classes:
            raise ValueError(
                f"{self.name} got an ImageNet class list of {len(wnids)} wnids, not {num_imagenet_classes}: point "
                "imagenet_root/wnids_file at the full ImageNet-1k list so labels match the 1000-way head."
            )
        index = {w: i for i, w in enumerate(wnids)}
        folders = _class_dirs(r)
        if not folders:
            raise ValueError(f"{self.name} folder '{r}' has no class folders: expected {layout} (see data/README.md).")
        unknown = [f for f in folders if f not in index]
        if unknown:
            raise ValueError(
                f"{self.name} folder '{r / unknown[0]}' is not an ImageNet-1k wnid of the {len(wnids)}-class list: "
                f"expected {layout}, and the ImageNet list from imagenet_root/wnids_file must be the full 1000 classes."
            )
        samples = []
        for w in folders:
            files = _images(r / w)
            if not files:
                raise ValueError(f"{self.name} class folder '{r / w}' has no images: add its images or remove it.")
            samples.extend((str(r / w / f), index[w]) for f in files)
        self.root, self.split = r, split
        self.r_wnids = folders
        self.mask_classes = bool(mask_classes)
        super().__init__(samples, wnids, transform, layout)

    def imagenet_r_class_mask(self) -> torch.Tensor:
        """``BoolTensor[num_classes]``: ``True`` at the IN-R classes (all ``True`` when ``mask_classes=False``)."""
        if not self.mask_classes:
            return torch.ones(self.num_classes, dtype=torch.bool)
        return imagenet_r_class_mask(self.classes, self.r_wnids)

    @property
    def class_mask(self) -> torch.Tensor:
        """Same as :meth:`imagenet_r_class_mask`: the classes an evaluator may predict."""
        return self.imagenet_r_class_mask()


@DATASETS.register("imagenet_v2")
class ImageNetV2(ImageListDataset):
    """ImageNet-V2 (``root/<0..999>/*.jpeg``), label ``int(folder)``: already the ImageNet-1k index.

    ``classes`` is ``["0", ..., "999"]``; folders may be missing (a partial copy) but each must be an
    integer in 0..999.
    """

    name = "ImageNet-V2"

    def __init__(
        self, root: str | os.PathLike[str] | None, split: str = "val", transform: Transform | None = None
    ) -> None:
        layout = (
            "<root>/<0..999>/*.jpeg as in the official imagenetv2-matched-frequency.tar.gz "
            "(root = its imagenetv2-matched-frequency-format-val folder)"
        )
        r = locate_dataset(self.name, root, split, TEST_SPLITS, layout)
        folders = _class_dirs(r)
        if not folders:
            raise ValueError(f"{self.name} folder '{r}' has no class folders: expected {layout} (see data/README.md).")
        bad = [f for f in folders if not (f.isdigit() and int(f) < NUM_IMAGENET_CLASSES)]
        if bad:
            raise ValueError(
                f"{self.name} folder '{r / bad[0]}' is not a class index 0..999: expected {layout} "
                "(see data/README.md)."
            )
        samples = []
        for f in sorted(folders, key=int):
            samples.extend((str(r / f / name), int(f)) for name in _images(r / f))
        self.root, self.split = r, split
        super().__init__(samples, [str(i) for i in range(NUM_IMAGENET_CLASSES)], transform, layout)
