"""NYU Depth V2, labelled subset (1,449 RGB-D images, 480 x 640), with the standard 795 / 654 split.

Two on-disk sources, picked by ``source="auto"`` (the default) in this order:

(a) **official** ``"mat"``: ``<root>/nyu_depth_v2_labeled.mat`` (MATLAB v7.3, i.e. HDF5, read with
    h5py) plus ``<root>/splits.mat`` (MATLAB v5, read with scipy) holding ``trainNdxs`` (795) and
    ``testNdxs`` (654), 1-based indices into the labelled set.  In HDF5 the MATLAB arrays appear with
    their axes reversed: ``images`` is ``[N, 3, W, H]`` uint8 and ``depths`` ``[N, W, H]`` float metres
    (``raw_depth=True`` reads ``rawDepths``, the unfilled Kinect depth, instead).  The ``test`` split
    really uses ``testNdxs`` (the released code's conversion recipe used ``trainNdxs`` for both).
(b) **extracted** ``"png"``: ``<root>/{train,test}/rgb/NNNNN.png`` (8-bit RGB) and
    ``<root>/{train,test}/depth/NNNNN.png`` (16-bit grey, depth in millimetres, 0 = invalid), where
    ``NNNNN`` is the 1-based index in the labelled set; :func:`export_png_layout` writes it from (a).

Items are ``(image [3, h, w] in [0, 1], {"depth": FloatTensor[h, w]})`` in metres, 0 = invalid.  Splits:
``train``, ``test`` (``val`` is an alias for ``test``: NYUd-v2 has no validation split).  Geometry goes
through :class:`~mdistiller.dataset.ade20k.DenseTransform` (depth resized with NEAREST, padding 0):
``mode="crop"`` at 224 px is, up to rounding, the released code's preprocessing (centre 480 x 480 square
resized to 224).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mdistiller.dataset.ade20k import DenseTransform
from mdistiller.dataset.catalog import DATASETS
from mdistiller.dataset.finegrained import load_grey, load_mat, load_rgb, locate_dataset

MAT_FILE = "nyu_depth_v2_labeled.mat"
SPLITS_FILE = "splits.mat"
SOURCES = ("auto", "mat", "png")
SPLITS = ("train", "test", "val")
NYU_SCALE_RANGE = (1.0, 1.5)
"""Short-side scale range of ``mode="train"`` for NYUd-v2 (crops cover 2/3 to all of the short side)."""
DEPTH_PNG_SCALE = 1000.0
"""Depth PNGs store millimetres: metres = value / 1000."""
LAYOUT = (
    f"either <root>/{MAT_FILE} + <root>/{SPLITS_FILE} (the official labelled set and the standard split file) or "
    "<root>/{train,test}/{rgb,depth}/NNNNN.png (8-bit RGB, 16-bit depth in mm)"
)


def _split_dir(split: str) -> str:
    return "train" if split == "train" else "test"


def read_split_indices(path: Path, split: str) -> np.ndarray:
    """0-based indices of ``split`` from ``splits.mat``: ``trainNdxs`` for train, ``testNdxs`` for test/val."""
    if not path.is_file():
        raise FileNotFoundError(
            f"NYUd-v2 split file '{path}' not found: put the standard splits.mat (trainNdxs/testNdxs) next to "
            f"{MAT_FILE} (see data/README.md)."
        )
    key = "trainNdxs" if split == "train" else "testNdxs"
    data = load_mat(path)
    if key not in data:
        raise ValueError(f"NYUd-v2 split file '{path}' has no '{key}' array: use the standard splits.mat.")
    return np.asarray(data[key]).astype(np.int64).ravel() - 1


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            f"reading {MAT_FILE} (MATLAB v7.3 = HDF5) needs h5py: run 'pip install h5py', or use the extracted PNG "
            "layout."
        ) from err
    return h5py


@DATASETS.register("nyud")
class NYUDepthV2(Dataset):
    """NYUd-v2 labelled set, 795 train / 654 test images, from the official .mat files or extracted PNGs.

    ``transform`` is a :class:`DenseTransform` (default ``mode="crop"`` at 480 px, i.e. the centre square);
    :meth:`load` returns the untransformed ``(PIL image, depth float32 [480, 640])``.  ``indices`` are the
    0-based positions in the labelled set of this split's images.
    """

    name = "NYUd-v2"
    depth_range = (0.0, 10.0)
    """Depth a head should cover, metres (the Kinect's range; the released code clipped to 10 m)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str = "test",
        transform: DenseTransform | None = None,
        source: str = "auto",
        raw_depth: bool = False,
        mat_file: str = MAT_FILE,
        splits_file: str = SPLITS_FILE,
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"unknown NYUd-v2 source '{source}': use one of {', '.join(SOURCES)}.")
        r = locate_dataset(self.name, root, split, SPLITS, LAYOUT)
        if source == "auto":
            if (r / mat_file).is_file():
                source = "mat"
            elif (r / _split_dir(split)).is_dir():
                source = "png"
            else:
                raise FileNotFoundError(
                    f"{self.name} folder '{r}' has neither {mat_file} nor {_split_dir(split)}/: expected {LAYOUT} "
                    "(see data/README.md)."
                )
        self.root, self.split, self.source, self.raw_depth = r, split, source, bool(raw_depth)
        self.transform = transform if transform is not None else DenseTransform(480, "crop", pad_value=0.0)
        self._h5: Any = None
        self._h5_pid = -1
        if source == "mat":
            self._init_mat(r / mat_file, r / splits_file)
        else:
            self._init_png(r / _split_dir(split))

    # ------------------------------------------------------------------------------------------ sources

    def _init_mat(self, mat_path: Path, splits_path: Path) -> None:
        if not mat_path.is_file():
            raise FileNotFoundError(f"{self.name} file '{mat_path}' not found: expected {LAYOUT} (see data/README.md).")
        h5py = _import_h5py()
        self.depth_key = "rawDepths" if self.raw_depth else "depths"
        try:
            with h5py.File(mat_path, "r") as f:
                if "images" not in f or self.depth_key not in f:
                    raise ValueError(
                        f"{self.name} file '{mat_path}' lacks 'images' or '{self.depth_key}': use the official "
                        f"{MAT_FILE}."
                    )
                ishape, dshape = tuple(f["images"].shape), tuple(f[self.depth_key].shape)
        except OSError as err:
            raise OSError(
                f"{self.name} file '{mat_path}' is not a readable MATLAB v7.3 (HDF5) file ({err}): download the "
                f"official {MAT_FILE} again."
            ) from err
        if len(ishape) != 4 or ishape[1] != 3 or dshape != (ishape[0], ishape[2], ishape[3]):
            raise ValueError(
                f"{self.name} file '{mat_path}' has images {ishape} and {self.depth_key} {dshape}: expected "
                "[N, 3, W, H] and [N, W, H] as in the official file."
            )
        indices = read_split_indices(splits_path, self.split)
        if indices.size and (indices.min() < 0 or indices.max() >= ishape[0]):
            raise ValueError(
                f"{self.name} split file '{splits_path}' has indices up to {indices.max() + 1}, but '{mat_path}' "
                f"holds {ishape[0]} images: use the splits.mat that belongs to the labelled set."
            )
        self.mat_path = mat_path
        self.indices = [int(i) for i in indices]

    def _init_png(self, split_dir: Path) -> None:
        rgb_dir, depth_dir = split_dir / "rgb", split_dir / "depth"
        for d in (rgb_dir, depth_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"{self.name} folder '{d}' not found: expected {LAYOUT} (see data/README.md).")
        with os.scandir(rgb_dir) as it:
            names = sorted(e.name for e in it if e.name.lower().endswith(".png"))
        if not names:
            raise ValueError(f"{self.name} folder '{rgb_dir}' has no .png images: expected {LAYOUT}.")
        for n in names:
            if not (depth_dir / n).is_file():
                raise FileNotFoundError(
                    f"{self.name} depth map '{depth_dir / n}' for '{rgb_dir / n}' not found: every rgb/NNNNN.png "
                    "needs depth/NNNNN.png."
                )
        self.files = [(str(rgb_dir / n), str(depth_dir / n)) for n in names]
        stems = [os.path.splitext(n)[0] for n in names]
        self.indices = [int(s) - 1 if s.isdigit() else -1 for s in stems]

    # ------------------------------------------------------------------------------------------ access

    def _file(self) -> Any:
        """The open HDF5 file of this process (reopened after a DataLoader worker fork)."""
        if self._h5 is None or self._h5_pid != os.getpid():
            self._h5 = _import_h5py().File(self.mat_path, "r")
            self._h5_pid = os.getpid()
        return self._h5

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"], state["_h5_pid"] = None, -1
        return state

    def __len__(self) -> int:
        return len(self.indices) if self.source == "mat" else len(self.files)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The untransformed pair: ``(PIL RGB image, depth float32 [H, W] in metres, 0 = invalid)``."""
        if self.source == "mat":
            f = self._file()
            i = self.indices[index]
            rgb = np.ascontiguousarray(np.asarray(f["images"][i], dtype=np.uint8).transpose(2, 1, 0))
            depth = np.ascontiguousarray(np.asarray(f[self.depth_key][i], dtype=np.float32).T)
            return Image.fromarray(rgb), depth
        rgb_path, depth_path = self.files[index]
        image = load_rgb(rgb_path, self.name)
        raw = load_grey(depth_path, self.name, "depth map", "is not a 16-bit grey PNG in millimetres", integer=True)
        return image, raw.astype(np.float32) / DEPTH_PNG_SCALE

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, depth = self.load(index)
        img, tgt = self.transform(image, depth)
        return img, {"depth": tgt}

    @classmethod
    def build(cls, split: str, *, root: str | None, input_size: int, train: bool, **kwargs: Any) -> NYUDepthV2:
        """Factory for :func:`mdistiller.dataset.build_dataset`.

        ``train=True`` gives ``mode="train"`` (``scale_range`` default 1.0-1.5); otherwise ``mode`` (default
        ``"crop"``).  Extra kwargs: ``mode``, ``scale_range``, ``interpolation``, ``source``, ``raw_depth``,
        ``mat_file``, ``splits_file``.
        """
        transform = DenseTransform.for_build(input_size, train, kwargs, scale_range=NYU_SCALE_RANGE, pad_value=0.0)
        return cls(root, split, transform=transform, **kwargs)

    def __repr__(self) -> str:
        return (
            f"NYUDepthV2(split={self.split!r}, source={self.source!r}, images={len(self)}, "
            f"transform={self.transform!r})"
        )


def export_png_layout(
    root: str | os.PathLike[str], out: str | os.PathLike[str], *, raw_depth: bool = False
) -> dict[str, int]:
    """Write layout (b) under ``out`` from the official files in ``root``; returns the image count per split.

    Files are named by the 1-based labelled-set index (``00001.png``); depth is rounded to millimetres.
    """
    out_dir = Path(out).expanduser()
    counts = {}
    for split in ("train", "test"):
        ds = NYUDepthV2(root, split, source="mat", raw_depth=raw_depth)
        rgb_dir, depth_dir = out_dir / split / "rgb", out_dir / split / "depth"
        rgb_dir.mkdir(parents=True, exist_ok=True)
        depth_dir.mkdir(parents=True, exist_ok=True)
        for k, idx in enumerate(ds.indices):
            image, depth = ds.load(k)
            name = f"{idx + 1:05d}.png"
            image.save(rgb_dir / name)
            mm = np.clip(np.round(depth * DEPTH_PNG_SCALE), 0, 65535).astype(np.uint16)
            Image.fromarray(mm).save(depth_dir / name)
        counts[split] = len(ds)
    return counts
