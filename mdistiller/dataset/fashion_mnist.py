"""Fashion-MNIST from its idx files (``*-idx3-ubyte.gz`` images, ``*-idx1-ubyte.gz`` labels).

The idx format (LeCun's MNIST format): a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then
``ndim`` big-endian uint32 dimension sizes, then the data in C order, big-endian.  The parser here reads
it directly (gzip-compressed or plain), checks the header and the data length, and can stop after the
first ``limit`` records without decompressing the rest.

Default folder: ``/usr/share/datasets/fashion-mnist/`` from the Debian package ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mdistiller.dataset.catalog import DATASETS

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_ALIASES = {"train": "train", "test": "test", "val": "test"}
"""Fashion-MNIST has no separate validation set: "val" reads the 10k test files."""

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path: Path) -> BinaryIO:
    """Open a possibly gzip-compressed file for binary reading (detected from its first two bytes)."""
    raw = path.open("rb")  # the caller closes it (via the returned file object)
    head = raw.read(2)
    raw.seek(0)
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _read_exact(f: BinaryIO, n: int, path: Path, what: str) -> bytes:
    try:
        data = f.read(n)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"idx file '{path}' is corrupt ({err}) while reading its {what}: download it again.") from err
    if len(data) != n:
        raise ValueError(
            f"idx file '{path}' is truncated: its {what} needs {n} bytes but only {len(data)} remain, "
            "so download it again."
        )
    return data


def read_idx(path: str | os.PathLike[str], limit: int | None = None) -> np.ndarray:
    """Read an idx file (plain or ``.gz``) into a numpy array of its declared dtype and shape.

    ``limit`` keeps only the first ``limit`` records along the first dimension (and reads only those).
    A wrong magic number, an unknown dtype code or missing data raise ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file '{path}' not found: check the path (see data/README.md).")
    with _open(path) as f:
        magic = _read_exact(f, 4, path, "4-byte magic number")
        if magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or magic[3] == 0:
            raise ValueError(
                f"'{path}' is not an idx file (magic number 0x{magic.hex()}, expected 0x0000<dtype><ndim> such as "
                "0x00000803 for images or 0x00000801 for labels): download or reinstall the dataset."
            )
        dtype, ndim = np.dtype(_IDX_DTYPES[magic[2]]), magic[3]
        dims = list(struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path, "dimension header")))
        if limit is not None:
            if limit < 0:
                raise ValueError(f"idx limit is {limit}: pass a non-negative number of records or None.")
            dims[0] = min(dims[0], int(limit))
        count = int(np.prod(dims, dtype=np.int64))
        data = _read_exact(f, count * dtype.itemsize, path, f"data of shape {tuple(dims)}")
        if limit is None and f.read(1):
            raise ValueError(f"idx file '{path}' has bytes beyond its declared shape {tuple(dims)}: download it again.")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as an idx file (gzip-compressed when ``path`` ends in ``.gz``); used by tests and tools."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    arr = np.asarray(array)
    key = arr.dtype.newbyteorder("=")
    if key not in codes:
        raise ValueError(f"idx cannot store dtype {arr.dtype}: use uint8, int8, int16, int32, float32 or float64.")
    header = bytes([0, 0, codes[key], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(np.dtype(_IDX_DTYPES[codes[key]])).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
            gz.write(payload)
        payload = buf.getvalue()
    path.write_bytes(payload)
    return path


def _find(root: Path, stem: str, split: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST {split} file '{root / (stem + '.gz')}' not found: expected {root}/"
        f"{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte.gz, so install the Debian package dataset-fashion-mnist "
        "or pass root=<folder with those files> (see data/README.md)."
    )


@DATASETS.register("fashion_mnist")
class FashionMNIST(Dataset):
    """Fashion-MNIST as ``(image [3, input_size, input_size] in [0, 1], int label)``.

    The 28x28 grey images are resized with bilinear interpolation (antialiased when shrinking) and
    replicated to 3 channels.  ``split`` is "train" (60k) or "test" (10k; "val" is an alias);
    ``limit`` keeps the first N images (only those are decompressed).
    """

    classes = CLASSES
    num_classes = len(CLASSES)

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        split: str = "train",
        input_size: int = 28,
        limit: int | None = None,
    ) -> None:
        if split not in SPLIT_ALIASES:
            raise ValueError(f"unknown Fashion-MNIST split '{split}': use train, test or val (= test).")
        if input_size < 1:
            raise ValueError(f"Fashion-MNIST input_size is {input_size}: it must be a positive number of pixels.")
        self.root = Path(root if root is not None else DEFAULT_ROOT).expanduser()
        self.split = SPLIT_ALIASES[split]
        self.input_size = int(input_size)
        img_stem, lbl_stem = FILES[self.split]
        img_path, lbl_path = _find(self.root, img_stem, self.split), _find(self.root, lbl_stem, self.split)
        images = read_idx(img_path, limit)
        labels = read_idx(lbl_path, limit)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"Fashion-MNIST image file '{img_path}' holds {images.dtype} data of shape {images.shape}, "
                "expected uint8 [N, 28, 28]: download it again."
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"Fashion-MNIST label file '{lbl_path}' holds {labels.shape} labels for {len(images)} images in "
                f"'{img_path}': use the matching pair of files."
            )
        self.images = torch.from_numpy(images)  # [N, h, w] uint8 (read_idx returns a writable copy)
        self.targets = [int(x) for x in labels]

    @classmethod
    def build(cls, split: str, *, root: str | None, input_size: int, train: bool, **kwargs: Any) -> FashionMNIST:
        """Factory used by :func:`mdistiller.dataset.build_dataset` (no augmentation; ``train`` is unused)."""
        return cls(root=root, split=split, input_size=input_size, **kwargs)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index].to(torch.float32).div_(255.0)[None, None]  # [1, 1, h, w]
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
        return x[0].expand(3, -1, -1).contiguous(), self.targets[index]

    def __repr__(self) -> str:
        return (
            f"FashionMNIST(root='{self.root}', split={self.split!r}, images={len(self)}, input_size={self.input_size})"
        )
