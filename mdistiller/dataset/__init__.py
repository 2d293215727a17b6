"""Datasets: a registry of dataset classes and one factory, :func:`build_dataset`.

Contract shared by every dataset here: an item is ``(image, target)`` where ``image`` is a float32
tensor ``[3, H, W]`` in ``[0, 1]`` (not normalised: each model normalises its own input) and ``target``
is an ``int`` class label, or for dense tasks a dict of tensors that the default collate can batch
(toy scenes: ``{"label": int, "mask": LongTensor[H, W], "depth": FloatTensor[H, W]}``).

Each registered class provides a classmethod ``build(split, *, root, input_size, train, **kwargs)``
that maps the uniform factory arguments onto its own constructor. A dataset that generates its images (toy scenes)
names the constructor keyword that sets how many in a class attribute ``size_arg``; :func:`size_kwargs` turns a
size (``DATASET.TRAIN_SIZE``, ``DATASET.VAL_SIZE``) into that keyword, so no caller tests a dataset's name. A dataset
read from files has no ``size_arg``: its files set its size, and ``DATASET.TRAIN_SIZE`` is refused for it.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from mdistiller.dataset import fashion_mnist, folders, toy_scenes  # the modules register into DATASETS
from mdistiller.dataset.catalog import DATASETS
from mdistiller.dataset.fashion_mnist import FashionMNIST, read_idx
from mdistiller.dataset.folders import ImageFolderSplit
from mdistiller.dataset.toy_scenes import ToyScenes
from mdistiller.dataset.transforms import eval_transform, train_transform


def build_dataset(name: str, split: str, *, root: str | None, input_size: int, train: bool, format: str = "folder",
                  **kwargs: Any) -> Dataset:
    """Build the registered dataset ``name`` for ``split``.

    ``root`` is the dataset's folder (ignored by toy scenes, optional for Fashion-MNIST), ``input_size``
    the side of the square images it returns, and ``train`` selects training augmentation (random
    resized crop + flip for folders, random flip for toy scenes) versus deterministic evaluation
    preprocessing; extra ``kwargs`` go to the dataset's constructor (e.g. ``num_images``, ``limit``).
    An unknown ``name`` raises a ``KeyError`` that lists the valid names.

    ``format`` (``DATASET.FORMAT``) says how ImageNet-style data (``name`` ``imagenet``) is stored: ``folder`` (class
    folders), ``wds`` (WebDataset shards), ``hfds`` (a saved Hugging Face dataset) or ``images`` (unlabelled image
    files); see :mod:`mdistiller.dataset.formats`, which takes the other ``kwargs`` (``wds_mode``,
    ``shuffle_buffer``) for the last three.
    """
    if input_size < 1:
        raise ValueError(f"dataset input_size is {input_size}: it must be a positive number of pixels.")
    cls = DATASETS.get(name)
    if str(format).lower() != "folder":
        from mdistiller.dataset.formats import build_format_dataset

        if cls is not DATASETS.get("imagenet"):
            raise ValueError(f"DATASET.FORMAT {format} stores ImageNet-style data, but the dataset is '{name}', which "
                             "has its own files; use DATASET.TYPE imagenet or DATASET.FORMAT folder.")
        return build_format_dataset(format, split, root=root, input_size=input_size, train=train, **kwargs)
    return cls.build(split, root=root, input_size=input_size, train=train, **kwargs)


def takes_size(name: str) -> bool:
    """Whether the registered dataset ``name`` is sized by a constructor keyword (its ``size_arg``) rather than by
    its files."""
    return bool(getattr(DATASETS.get(name), "size_arg", None))


def size_kwargs(name: str, num_images: int) -> dict[str, int]:
    """The constructor keyword that makes dataset ``name`` hold ``num_images`` images (``{"num_images": n}`` for toy
    scenes), to pass to :func:`build_dataset`; ``{}`` when ``num_images`` is 0 (the dataset's default) or the dataset
    is sized by its files."""
    if not num_images or not takes_size(name):
        return {}
    return {DATASETS.get(name).size_arg: int(num_images)}


__all__ = [
    "DATASETS",
    "FashionMNIST",
    "ImageFolderSplit",
    "ToyScenes",
    "build_dataset",
    "eval_transform",
    "fashion_mnist",
    "folders",
    "read_idx",
    "size_kwargs",
    "takes_size",
    "toy_scenes",
    "train_transform",
]

# Evaluation datasets in their official on-disk formats (they register themselves, too).
from mdistiller.dataset import ade20k, finegrained, imagenet_variants, inat2019, nyud  # noqa: E402, F401


def check_dataset_config(cfg) -> None:
    """The config check of ``DATASET.TYPE`` (declared in ``mdistiller.hooks.LINKS``): an unknown
    name is one sentence with the closest valid one; then ``DATASET.FORMAT`` and its keys
    (:func:`mdistiller.dataset.formats.check_format_config`), and ``DATASET.TRAIN_SIZE`` (:func:`_check_train_size`)."""
    import difflib

    from mdistiller.config import ConfigError

    if cfg.DATASET.TYPE in DATASETS:
        from mdistiller.dataset.formats import check_format_config

        check_format_config(cfg)
        _check_train_size(cfg)
        return
    close = difflib.get_close_matches(str(cfg.DATASET.TYPE), DATASETS.names(), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"valid datasets: {', '.join(DATASETS.names())}."
    raise ConfigError(f"unknown DATASET.TYPE '{cfg.DATASET.TYPE}'; {hint}")


def _check_train_size(cfg) -> None:
    """``DATASET.TRAIN_SIZE`` sizes only a dataset that generates its images (:func:`takes_size`); for one read from
    files it would be ignored, so it is refused in one sentence instead of training on another set than asked."""
    from mdistiller.config import ConfigError

    n, name = int(cfg.DATASET.TRAIN_SIZE), str(cfg.DATASET.TYPE)
    if not n or takes_size(name):
        return
    sized = ", ".join(d for d in DATASETS.names() if takes_size(d))
    raise ConfigError(f"DATASET.TRAIN_SIZE {n} sets the number of images only of a generated dataset ({sized}), but "
                      f"'{name}' is read from its files under DATASET.ROOT, which set its size; set DATASET.TRAIN_SIZE "
                      "0 and put the images to train on under DATASET.ROOT.")
