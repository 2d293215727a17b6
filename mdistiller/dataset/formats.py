"""``DATASET.FORMAT``: how ImageNet-style training data is stored, and the reader of each storage.

* ``folder`` (the default): ``train/<class>/*.JPEG`` and ``val/<class>/*``; :class:`~.folders.ImageFolderSplit`.
* ``wds``: WebDataset shards ``train-*.tar`` / ``val-*.tar`` of ``<key>.jpg|jpeg|png`` + ``<key>.cls``;
  :class:`~.wds.WdsShards` (an index over the shards), or :class:`~.wds.WdsStream` for training with
  ``DATASET.WDS_MODE stream`` (a shuffle buffer of ``DATASET.SHUFFLE_BUFFER`` samples per loader worker).
* ``hfds``: a dataset saved by ``datasets``' ``save_to_disk`` with ``image`` and ``label`` columns;
  :class:`~.hfds.ArrowSplit`.
* ``images``: any tree of image files, no labels (``train/`` + ``val/`` when ``train/`` exists);
  :class:`~.image_tree.ImageTree`.

All but the stream are map-style, so the resumable sampler gives them the exact resume of the folders; the stream
resumes exactly for the same layout (world size, loader workers, batch, buffer; see :class:`~.wds.WdsStream`).
Every reader hands out the folder datasets' items, ``(float32 [3, S, S] in [0, 1], int label)`` (label -1 without
labels), with the same training and evaluation transforms, so the formats differ only in how bytes are read.
"""

from __future__ import annotations

import difflib
import importlib.util
from typing import Any

from torch.utils.data import Dataset

from mdistiller.dataset.transforms import eval_transform, train_transform

__all__ = ["FORMATS", "WDS_MODES", "build_format_dataset", "check_format_config", "format_kwargs"]

FORMATS = ("folder", "wds", "hfds", "images")
WDS_MODES = ("index", "stream")
_PACKAGES = {"wds": "webdataset", "hfds": "datasets"}
_LABELLED = ("folder", "wds", "hfds")


def build_format_dataset(fmt: str, split: str, *, root: str | None, input_size: int, train: bool,
                         wds_mode: str = "index", shuffle_buffer: int = 1000) -> Dataset:
    """The ``split`` of ``root`` stored as ``fmt`` (not ``folder``: :func:`~mdistiller.dataset.build_dataset` reads
    that one), with the training (``train``) or evaluation transform at ``input_size``. ``wds_mode stream`` applies
    to the training split only; evaluation always reads the shards by index."""
    fmt = str(fmt).lower()
    if root is None:
        raise ValueError(f"DATASET.FORMAT {fmt} needs DATASET.ROOT: pass the folder that holds the data.")
    transform = train_transform(input_size) if train else eval_transform(input_size)
    if fmt == "wds":
        from mdistiller.dataset.wds import WdsShards, WdsStream

        if str(wds_mode).lower() == "stream" and split == "train":
            return WdsStream(root, split, transform, shuffle_buffer=shuffle_buffer)
        return WdsShards(root, split, transform)
    if fmt == "hfds":
        from mdistiller.dataset.hfds import ArrowSplit

        return ArrowSplit(root, split, transform)
    if fmt == "images":
        from mdistiller.dataset.image_tree import ImageTree

        return ImageTree(root, split, transform)
    raise ValueError(_unknown(fmt))


def format_kwargs(data: Any, split: str) -> dict[str, Any]:
    """The :func:`~mdistiller.dataset.build_dataset` keyword arguments that the ``DATASET`` config node ``data``
    gives for ``split`` (the format, and for training wds shards the reading mode and shuffle buffer)."""
    out: dict[str, Any] = {"format": str(data.FORMAT).lower()}
    if out["format"] == "wds" and split == "train":
        out |= {"wds_mode": str(data.WDS_MODE).lower(), "shuffle_buffer": int(data.SHUFFLE_BUFFER)}
    return out


def _unknown(fmt: str) -> str:
    close = difflib.get_close_matches(fmt, FORMATS, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(FORMATS)}."
    return f"unknown DATASET.FORMAT '{fmt}'; {hint}"


def check_format_config(cfg: Any) -> None:
    """The config checks of ``DATASET.FORMAT``, ``WDS_MODE`` and ``SHUFFLE_BUFFER`` (one sentence each, as
    ``ConfigError``): a known format, read for ``DATASET.TYPE imagenet``, its package installed, labels where the
    method needs them, and a decode path that fits it. The data itself is checked when it is opened."""
    from mdistiller.config import ConfigError

    data = cfg.DATASET
    fmt = str(data.FORMAT).lower()
    if fmt not in FORMATS:
        raise ConfigError(_unknown(str(data.FORMAT)))
    if str(data.WDS_MODE).lower() not in WDS_MODES:
        raise ConfigError(f"DATASET.WDS_MODE is '{data.WDS_MODE}' but must be one of: {', '.join(WDS_MODES)}.")
    if not isinstance(data.SHUFFLE_BUFFER, int) or data.SHUFFLE_BUFFER < 0:
        raise ConfigError(f"DATASET.SHUFFLE_BUFFER is {data.SHUFFLE_BUFFER!r} but must be a number of samples >= 0 "
                          "(0: no shuffling inside a stream).")
    if fmt == "folder":
        return
    if str(data.TYPE).lower() != "imagenet":
        raise ConfigError(f"DATASET.FORMAT {fmt} stores ImageNet-style data, but DATASET.TYPE is '{data.TYPE}', which "
                          "has its own files; set DATASET.TYPE imagenet or DATASET.FORMAT folder.")
    package = _PACKAGES.get(fmt)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"DATASET.FORMAT {fmt} needs the {package} package: pip install 'mdistiller[formats]' (or "
                          f"pip install {package}).")
    if fmt not in _LABELLED and str(cfg.DISTILLER.TYPE).lower() == "supervised":
        raise ConfigError(f"DISTILLER.TYPE Supervised trains on labels but DATASET.FORMAT {fmt} has none; use "
                          f"DATASET.FORMAT {', '.join(_LABELLED)}.")
    if str(data.DECODE).lower() == "device" and fmt in _PACKAGES:
        raise ConfigError(f"DATASET.DECODE device reads image files, but DATASET.FORMAT {fmt} keeps images inside "
                          "its own files; use DATASET.DECODE cpu (or the folder/images formats).")
