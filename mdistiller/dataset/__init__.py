"""Datasets: a registry of dataset classes and one factory, :func:`build_dataset`.

Contract shared by every dataset here: an item is ``(image, target)`` where ``image`` is a float32
tensor ``[3, H, W]`` in ``[0, 1]`` (not normalised: each model normalises its own input) and ``target``
is an ``int`` class label, or for dense tasks a dict of tensors that the default collate can batch
(toy scenes: ``{"label": int, "mask": LongTensor[H, W], "depth": FloatTensor[H, W]}``).

Each registered class provides a classmethod ``build(split, *, root, input_size, train, **kwargs)``
that maps the uniform factory arguments onto its own constructor.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from mdistiller.registry import Registry

DATASETS = Registry("dataset")

# The modules below register themselves into DATASETS, so they are imported after it exists.
from mdistiller.dataset import fashion_mnist, folders, toy_scenes  # noqa: E402
from mdistiller.dataset.fashion_mnist import FashionMNIST, read_idx  # noqa: E402
from mdistiller.dataset.folders import ImageFolderSplit  # noqa: E402
from mdistiller.dataset.toy_scenes import ToyScenes  # noqa: E402
from mdistiller.dataset.transforms import eval_transform, train_transform  # noqa: E402


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
    "toy_scenes",
    "train_transform",
]

# Evaluation datasets in their official on-disk formats (they register themselves, too).
from mdistiller.dataset import ade20k, finegrained, imagenet_variants, inat2019, nyud  # noqa: E402, F401


def check_dataset_config(cfg) -> None:
    """The config check of ``DATASET.TYPE`` (declared in ``mdistiller.hooks.LINKS``): an unknown
    name is one sentence with the closest valid one; then ``DATASET.FORMAT`` and its keys
    (:func:`mdistiller.dataset.formats.check_format_config`)."""
    import difflib

    from mdistiller.config import ConfigError

    if cfg.DATASET.TYPE in DATASETS:
        from mdistiller.dataset.formats import check_format_config

        check_format_config(cfg)
        return
    close = difflib.get_close_matches(str(cfg.DATASET.TYPE), DATASETS.names(), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"valid datasets: {', '.join(DATASETS.names())}."
    raise ConfigError(f"unknown DATASET.TYPE '{cfg.DATASET.TYPE}'; {hint}")
