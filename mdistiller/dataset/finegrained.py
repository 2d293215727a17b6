"""The four fine-grained transfer datasets of the paper's "FG top-1", read from their official archives.

=================  =====================  ==========================================================  =========
registered name    dataset                official files read                                         classes
=================  =====================  ==========================================================  =========
``aircraft``       FGVC-Aircraft 2013b    ``fgvc-aircraft-2013b/data/images_variant_<split>.txt``     100
``pets``           Oxford-IIIT Pet        ``annotations/{trainval,test}.txt``                          37
``food101``        Food-101               ``food-101/meta/{train,test}.json``                         101
``flowers102``     Oxford Flowers-102     ``imagelabels.mat`` + ``setid.mat``                         102
=================  =====================  ==========================================================  =========

Each accepts ``root`` either as the extracted folder itself or as its parent (torchvision's layout, e.g.
``root/food-101/meta``).  FGVC-Aircraft and Food-101 are parsed by ``torchvision.datasets`` (their official
archives extract into the folder torchvision expects, so the folder keeps the archive's name); Oxford-IIIT Pet
and Flowers-102 are parsed here, because their official archives have no top-level folder while torchvision
requires its own ``oxford-iiit-pet/`` / ``flowers-102/`` (and checks the ``.mat`` files' MD5).  Both paths give
the samples and labels torchvision gives (``tests/test_torchvision_datasets.py``); ``docs/handwritten.md``.

Splits: Aircraft ``train|val|trainval|test`` (variant level; test on ``test``,
not on ``val`` as the released code did), Pets ``trainval|test``, Food-101 ``train|test``, Flowers-102
``train|val|trainval|test`` (from ``setid.mat``: ``trnid``/``valid``/``tstid``).  The usual linear-probe
protocol trains on ``trainval`` (Aircraft, Pets, Flowers) or ``train`` (Food-101) and tests on ``test``.

:class:`ImageListDataset` is the shared base: a list of ``(path, label)`` plus a class list; the
iNat2019 and ImageNet-R/-V2 loaders build on it too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mdistiller.dataset.catalog import DATASETS
from mdistiller.dataset.transforms import eval_transform, train_transform

Transform = Callable[[Image.Image], Any]


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


def require_root(root: str | os.PathLike[str] | None, name: str, layout: str) -> Path:
    """``root`` as an expanded :class:`Path`; a ``None`` root raises one sentence showing ``layout``."""
    if root is None:
        raise ValueError(f"{name} needs a root folder: pass root=... (DATASET.ROOT in the config) holding {layout}.")
    return Path(root).expanduser()


def find_dataset_dir(root: Path, marker: str, subdirs: Sequence[str], name: str, layout: str) -> Path:
    """The folder under which ``marker`` (a relative path) exists: ``root`` itself or ``root/<subdir>``.

    ``subdirs`` are the archive's top-level folder names (e.g. torchvision's ``food-101``), so both the
    extracted folder and its parent are accepted.  Otherwise one sentence names what is missing.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"{name} folder '{root}' not found: expected {layout} (see data/README.md).")
    for cand in (root, *(root / s for s in subdirs)):
        if (cand / marker).exists():
            return cand
    raise FileNotFoundError(
        f"{name} '{marker}' not found in '{root}'"
        + (f" nor in {', '.join(repr(str(root / s)) for s in subdirs)}" if subdirs else "")
        + f": expected {layout} (see data/README.md)."
    )


def check_split(name: str, split: str, allowed: Sequence[str]) -> None:
    """Raise one sentence when ``split`` is not one of ``allowed``."""
    if split not in allowed:
        raise ValueError(f"unknown {name} split '{split}': use one of {', '.join(allowed)}.")


def locate_dataset(name: str, root: str | os.PathLike[str] | None, split: str, allowed: Sequence[str], layout: str,
                   marker: str | None = None, subdirs: Sequence[str] = ()) -> Path:
    """The opening every loader shares: :func:`check_split`, :func:`require_root`, then the folder holding
    ``marker`` (:func:`find_dataset_dir`), or, without a marker, ``root`` itself, which must exist."""
    check_split(name, split, allowed)
    r = require_root(root, name, layout)
    if marker is not None:
        return find_dataset_dir(r, marker, subdirs, name, layout)
    if not r.is_dir():
        raise FileNotFoundError(f"{name} folder '{r}' not found: expected {layout} (see data/README.md).")
    return r


def read_lines(path: Path, name: str, layout: str) -> list[str]:
    """Stripped, non-empty lines of a text file that are not ``#`` comments; a missing file is one sentence."""
    if not path.is_file():
        raise FileNotFoundError(f"{name} file '{path}' not found: expected {layout} (see data/README.md).")
    with open(path, encoding="utf-8") as f:
        return [s for s in (line.strip() for line in f) if s and not s.startswith("#")]


def load_mat(path: Path) -> dict[str, Any]:
    """The arrays of a MATLAB v5 ``.mat`` file, read with ``scipy.io.loadmat`` (imported on first use)."""
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise ImportError(f"reading '{path}' (a MATLAB .mat file) needs scipy: run 'pip install scipy'.") from err
    return loadmat(path)


def require_file(path: Path, name: str, layout: str) -> Path:
    """``path`` if it is a file, else one sentence naming it and the expected ``layout``."""
    if not path.is_file():
        raise FileNotFoundError(f"{name} file '{path}' not found: expected {layout} (see data/README.md).")
    return path


def archive_parent(base: Path, folder: str, name: str) -> Path:
    """The folder holding ``base``, which torchvision reads as ``<parent>/<folder>``: ``base`` must keep the name
    ``folder`` that the official archive gives it."""
    if base.name != folder:
        raise FileNotFoundError(
            f"{name} folder '{base}' must be named '{folder}' as the official archive extracts it (torchvision reads "
            f"it by that name): rename it or link '{base.parent / folder}' to it."
        )
    return base.parent


def torchvision_samples(dataset: Any, files: str, labels: str, name: str) -> list[tuple[str, int]]:
    """The ``(path, label)`` list a ``torchvision.datasets`` object parsed, from its ``files``/``labels`` lists.

    torchvision keeps these lists in private attributes; if a release renames them this says so in one sentence
    (``tests/test_torchvision_datasets.py`` checks the lists against the official file formats).
    """
    try:
        paths, targets = getattr(dataset, files), getattr(dataset, labels)
    except AttributeError:
        import torchvision

        raise RuntimeError(
            f"torchvision {torchvision.__version__} no longer keeps {type(dataset).__name__}.{files}/{labels}, which "
            f"the {name} reader uses: install the torchvision version pinned in constraints.txt."
        ) from None
    return [(str(p), int(t)) for p, t in zip(paths, targets, strict=True)]


def load_rgb(path: str, name: str) -> Image.Image:
    """Open ``path`` as an RGB PIL image; an unreadable file raises one sentence naming it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as err:
        raise OSError(f"{name} image '{path}' cannot be read ({err}): replace or delete the file.") from err


def decode_rgb(data: bytes, name: str) -> Image.Image:
    """Decode the encoded image ``data`` (JPEG, PNG, ...) as an RGB PIL image; undecodable bytes raise an
    ``OSError`` naming ``name`` (e.g. the shard and sample key they came from)."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except OSError as err:
        raise OSError(f"image {name} cannot be decoded ({err}): replace or delete it.") from err


def load_grey(path: str, name: str, what: str, invalid: str, integer: bool = False) -> np.ndarray:
    """Read the single-channel PNG ``path`` (a label or depth map) as an ``[H, W]`` array.

    An unreadable file raises an ``OSError`` naming ``name``'s ``what`` (e.g. "label map"); a file that is not
    2-D (or, with ``integer=True``, not of an integer dtype) raises a ``ValueError`` ending in ``invalid``
    (e.g. "is not single-channel: use the official 8-bit PNG").
    """
    try:
        with Image.open(path) as im:
            raw = np.array(im)
    except OSError as err:
        raise OSError(f"{name} {what} '{path}' cannot be read ({err}): replace the file.") from err
    if raw.ndim != 2 or (integer and raw.dtype.kind not in "ui"):
        raise ValueError(f"{name} {what} '{path}' {invalid}.")
    return raw


class ImageListDataset(Dataset):
    """A classification dataset given as ``samples = [(image path, int label), ...]`` and a class list.

    Items are ``(transform(PIL RGB image), label)``; ``transform`` defaults to :func:`eval_transform` at
    224 px.  Attributes follow torchvision's ``ImageFolder``: ``classes``, ``samples``, ``targets``.
    Subclasses parse their annotation files and call ``super().__init__``; ``build`` picks the train or
    eval transform and forwards the rest of the keyword arguments to the subclass constructor.
    """

    name = "image list"

    def __init__(
        self,
        samples: list[tuple[str, int]],
        classes: Sequence[str],
        transform: Transform | None = None,
        layout: str = "",
    ) -> None:
        if not samples:
            raise ValueError(f"{self.name} has no images for this split: expected {layout} (see data/README.md).")
        first = samples[0][0]
        if not os.path.isfile(first):
            raise FileNotFoundError(
                f"{self.name} image '{first}' (listed in the annotations) not found: expected {layout} "
                "(see data/README.md)."
            )
        self.samples = samples
        self.targets = [t for _, t in samples]
        self.classes = list(classes)
        self.transform = transform if transform is not None else eval_transform(224)

    @classmethod
    def build(cls, split: str, *, root: str | None, input_size: int, train: bool, **kwargs: Any) -> ImageListDataset:
        """Factory used by :func:`mdistiller.dataset.build_dataset`: train or eval transform at ``input_size``."""
        transform = train_transform(input_size) if train else eval_transform(input_size)
        return cls(root, split, transform=transform, **kwargs)

    @property
    def num_classes(self) -> int:
        """Number of classes (the length of the logit vector a head needs)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        return self.transform(load_rgb(path, self.name)), target

    def __repr__(self) -> str:
        split = getattr(self, "split", "?")
        return f"{type(self).__name__}(split={split!r}, classes={self.num_classes}, images={len(self)})"


# --------------------------------------------------------------------------------------------------
# FGVC-Aircraft
# --------------------------------------------------------------------------------------------------

AIRCRAFT_DIRS = ("fgvc-aircraft-2013b",)  # the archive's top folder
AIRCRAFT_SPLITS = ("train", "val", "trainval", "test")


@DATASETS.register("aircraft")
class FGVCAircraft(ImageListDataset):
    """FGVC-Aircraft 2013b at the *variant* level (100 classes), parsed by ``torchvision.datasets.FGVCAircraft``.

    ``data/variants.txt`` fixes the class order (label = line number); ``data/images_variant_<split>.txt``
    lists ``<image id> <variant name>`` (variant names may contain spaces); images are
    ``data/images/<image id>.jpg``.  The official images keep their 20-px copyright banner at the
    bottom, as torchvision does.  ``split`` adds nothing to torchvision's: train, val, trainval, test.
    """

    name = "FGVC-Aircraft"

    def __init__(self, root: str | os.PathLike[str] | None, split: str = "test", transform: Transform | None = None):
        from torchvision.datasets import FGVCAircraft as TorchvisionAircraft

        layout = (
            "<root>/fgvc-aircraft-2013b/data/{variants.txt, images_variant_{train,val,trainval,test}.txt, "
            "images/<id>.jpg} (the official fgvc-aircraft-2013b.tar.gz)"
        )
        base = locate_dataset(self.name, root, split, AIRCRAFT_SPLITS, layout, "data/variants.txt", AIRCRAFT_DIRS)
        require_file(base / "data" / f"images_variant_{split}.txt", self.name, layout)
        try:
            parsed = TorchvisionAircraft(str(archive_parent(base, AIRCRAFT_DIRS[0], self.name)), split=split,
                                         annotation_level="variant")
        except KeyError as err:
            raise ValueError(
                f"{self.name} images_variant_{split}.txt names variant {err}, which is not in "
                f"'{base / 'data' / 'variants.txt'}': use the unmodified files of one fgvc-aircraft-2013b archive."
            ) from None
        self.root, self.split = base, split
        samples = torchvision_samples(parsed, "_image_files", "_labels", self.name)
        super().__init__(samples, parsed.classes, transform, layout)


# --------------------------------------------------------------------------------------------------
# Oxford-IIIT Pet
# --------------------------------------------------------------------------------------------------

PETS_SPLITS = ("trainval", "test")


@DATASETS.register("pets")
class OxfordIIITPet(ImageListDataset):
    """Oxford-IIIT Pet, 37 breeds, from ``annotations/{trainval,test}.txt``.

    Each line is ``<image name> <class id 1..37> <species 1|2> <breed id>``; the label is ``class id - 1``
    and the image is ``images/<image name>.jpg``.  Class names are the image-name prefixes (``Abyssinian``,
    ``american_bulldog``, ...) ordered by class id.
    """

    name = "Oxford-IIIT Pet"

    def __init__(self, root: str | os.PathLike[str] | None, split: str = "test", transform: Transform | None = None):
        layout = (
            "<root>/annotations/{trainval,test}.txt and <root>/images/<name>.jpg (the official images.tar.gz + "
            "annotations.tar.gz)"
        )
        base = locate_dataset(self.name, root, split, PETS_SPLITS, layout, "annotations/trainval.txt",
                              ("oxford-iiit-pet",))
        names: dict[int, str] = {}
        per_split: dict[str, list[tuple[str, int]]] = {}
        for s in PETS_SPLITS:
            entries = []
            for line in read_lines(base / "annotations" / f"{s}.txt", self.name, layout):
                parts = line.split()
                try:
                    label = int(parts[1]) - 1
                except (IndexError, ValueError):
                    raise ValueError(
                        f"{self.name} line '{line}' of '{base / 'annotations' / f'{s}.txt'}' is malformed: expected "
                        "'<image name> <class id> <species> <breed id>' as in the official annotations."
                    ) from None
                names.setdefault(label, parts[0].rsplit("_", 1)[0])
                entries.append((str(base / "images" / f"{parts[0]}.jpg"), label))
            per_split[s] = entries
        num = max(names) + 1
        classes = [names.get(i, f"class_{i + 1}") for i in range(num)]
        self.root, self.split = base, split
        super().__init__(per_split[split], classes, transform, layout)


# --------------------------------------------------------------------------------------------------
# Food-101
# --------------------------------------------------------------------------------------------------

FOOD_SPLITS = ("train", "test")


@DATASETS.register("food101")
class Food101(ImageListDataset):
    """Food-101, parsed by ``torchvision.datasets.Food101`` from ``meta/{train,test}.json``.

    Each json maps a class name to its ``"<class>/<image id>"`` entries; classes are the sorted names (the order of
    ``meta/classes.txt``), the image ``images/<class>/<image id>.jpg``.
    """

    name = "Food-101"

    def __init__(self, root: str | os.PathLike[str] | None, split: str = "test", transform: Transform | None = None):
        from torchvision.datasets import Food101 as TorchvisionFood101

        layout = (
            "<root>/food-101/meta/{train,test}.json and <root>/food-101/images/<class>/<id>.jpg (the official "
            "food-101.tar.gz)"
        )
        base = locate_dataset(self.name, root, split, FOOD_SPLITS, layout, f"meta/{split}.json", ("food-101",))
        parsed = TorchvisionFood101(str(archive_parent(base, "food-101", self.name)), split=split)
        self.root, self.split = base, split
        samples = torchvision_samples(parsed, "_image_files", "_labels", self.name)
        super().__init__(samples, parsed.classes, transform, layout)


# --------------------------------------------------------------------------------------------------
# Oxford Flowers-102
# --------------------------------------------------------------------------------------------------

FLOWERS_SPLITS = ("train", "val", "trainval", "test")
_FLOWERS_KEYS = {"train": ("trnid",), "val": ("valid",), "trainval": ("trnid", "valid"), "test": ("tstid",)}


def _mat_vector(path: Path, key: str, name: str, layout: str) -> np.ndarray:
    """The 1-D int64 vector stored under ``key`` in a MATLAB v5 ``.mat`` file (one sentence if absent)."""
    if not path.is_file():
        raise FileNotFoundError(f"{name} file '{path}' not found: expected {layout} (see data/README.md).")
    data = load_mat(path)
    if key not in data:
        raise ValueError(f"{name} file '{path}' has no '{key}' array: use the official file from the archive page.")
    return np.asarray(data[key]).astype(np.int64).ravel()


@DATASETS.register("flowers102")
class Flowers102(ImageListDataset):
    """Oxford Flowers-102 from ``imagelabels.mat`` (``labels``, 1..102 per image) and ``setid.mat``.

    ``setid.mat`` holds the 1-based image ids of each split: ``trnid`` (train, 1,020), ``valid``
    (val, 1,020) and ``tstid`` (test, 6,149); ``trainval`` is train + val.  Image ``k`` is
    ``jpg/image_{k:05d}.jpg``; its label is ``labels[k - 1] - 1``.  Classes are named ``"1"``..``"102"``
    (the archive ships no names).
    """

    name = "Flowers-102"

    def __init__(self, root: str | os.PathLike[str] | None, split: str = "test", transform: Transform | None = None):
        layout = (
            "<root>/imagelabels.mat, <root>/setid.mat and <root>/jpg/image_00001.jpg ... (the official 102flowers.tgz"
            " + imagelabels.mat + setid.mat)"
        )
        base = locate_dataset(self.name, root, split, FLOWERS_SPLITS, layout, "imagelabels.mat", ("flowers-102",))
        labels = _mat_vector(base / "imagelabels.mat", "labels", self.name, layout)
        ids = np.concatenate([_mat_vector(base / "setid.mat", k, self.name, layout) for k in _FLOWERS_KEYS[split]])
        if ids.size and (ids.min() < 1 or ids.max() > labels.size):
            raise ValueError(
                f"{self.name} setid.mat lists image ids up to {ids.max()} but imagelabels.mat labels only "
                f"{labels.size} images: use the two .mat files of the same official release."
            )
        samples = [(str(base / "jpg" / f"image_{k:05d}.jpg"), int(labels[k - 1]) - 1) for k in ids.tolist()]
        classes = [str(i + 1) for i in range(int(labels.max()))]
        self.root, self.split = base, split
        super().__init__(samples, classes, transform, layout)
