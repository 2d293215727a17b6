"""ADE20K (SceneParsing / ADEChallengeData2016, 150 classes) and the paired image+target transforms of dense tasks.

Layout (the official ``ADEChallengeData2016.zip``)::

    <root>/ADEChallengeData2016/        (or <root> is that folder itself)
      images/training/ADE_train_00000001.jpg ...        20,210 images
      images/validation/ADE_val_00000001.jpg ...         2,000 images
      annotations/training/ADE_train_00000001.png ...   8-bit label maps, same stems
      annotations/validation/ADE_val_00000001.png ...
      objectInfo150.txt                                 (optional: class names)

Label maps hold 0 = "other/unlabelled" and 1..150 = the classes; items carry
``{"mask": LongTensor[H, W]}`` with 0 -> 255 (ignore) and k -> k - 1 (classes 0..149).
Splits: ``train`` (training), ``val`` (validation); ``test`` is an alias for ``val`` (the challenge's
test set has no public labels).

:class:`DenseTransform` transforms an image and its dense target (mask or depth) with *the same*
geometry; the target is always resized with NEAREST so no new label or depth value is invented.
Modes (``mode=``):

* ``"train"``: resize the short side to ``size * s`` with ``s ~ U(scale_range)`` (keep aspect), random
  crop ``size x size`` (pad first, image with 0 and target with ``pad_value``, if a side is shorter),
  horizontal flip with p = 0.5.  Random numbers come from torch's global RNG.
* ``"crop"`` (evaluation default): resize the short side to ``size``, centre crop ``size x size``: a
  fixed shape, as a cached linear probe needs.
* ``"full"``: resize the short side to ``size`` and keep the whole image (shapes vary: use
  ``batch_size=1`` or a padding collate).
* ``"resize"``: squash to ``size x size`` (the released code's ADE test preprocessing).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

from mdistiller.dataset.catalog import DATASETS
from mdistiller.dataset.finegrained import load_grey, load_rgb, locate_dataset

DENSE_MODES = ("train", "crop", "full", "resize")
NUM_CLASSES = 150
IGNORE_INDEX = 255
ADE_SCALE_RANGE = (0.5, 2.0)
"""Short-side scale range of ``mode="train"`` for ADE20K, relative to the crop size (mmseg/DINOv2's 0.5-2.0)."""
SPLITS = ("train", "val", "test")
_SPLIT_DIRS = {"train": "training", "val": "validation", "test": "validation"}
_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


class DenseTransform:
    """Apply one geometric transform to a PIL image and its ``[H, W]`` target array (mask or depth).

    ``__call__(image, target)`` returns ``(image float32 [3, h, w] in [0, 1], target tensor [h, w])``; the
    target keeps its kind (integer array -> ``int64``, float array -> ``float32``).  ``interpolation``
    (``"bilinear"`` default, ``"bicubic"``) is used for the image only.  See the module docstring for
    the modes.
    """

    def __init__(
        self,
        size: int,
        mode: str = "crop",
        scale_range: Sequence[float] = ADE_SCALE_RANGE,
        flip: bool = True,
        pad_value: float = IGNORE_INDEX,
        interpolation: str = "bilinear",
    ) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"dense transform size {size!r} is invalid: pass a positive integer number of pixels.")
        if mode not in DENSE_MODES:
            raise ValueError(f"unknown dense transform mode '{mode}': use one of {', '.join(DENSE_MODES)}.")
        lo, hi = (float(v) for v in scale_range)
        if not 0.0 < lo <= hi:
            raise ValueError(f"dense transform scale_range {tuple(scale_range)} is invalid: use 0 < low <= high.")
        if interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation '{interpolation}': use one of {', '.join(_RESAMPLE)}.")
        self.size, self.mode, self.scale_range = size, mode, (lo, hi)
        self.flip, self.pad_value, self.interpolation = bool(flip), pad_value, interpolation

    @classmethod
    def for_build(
        cls, input_size: int, train: bool, kwargs: dict[str, Any], *, scale_range: Sequence[float], pad_value: float
    ) -> DenseTransform:
        """The transform of a dense dataset's ``build``: ``mode="train"`` if ``train``, else ``kwargs``' ``mode``
        (default ``"crop"``).  Pops ``mode``, ``scale_range`` (default ``scale_range``) and ``interpolation``
        (default ``"bilinear"``) from ``kwargs``, leaving the rest for the dataset's constructor."""
        mode = kwargs.pop("mode", "crop")
        return cls(
            input_size,
            "train" if train else mode,
            scale_range=kwargs.pop("scale_range", scale_range),
            pad_value=pad_value,
            interpolation=kwargs.pop("interpolation", "bilinear"),
        )

    def _resize(self, image: Image.Image, target: Image.Image, short: int) -> tuple[Image.Image, Image.Image]:
        w, h = image.size
        if self.mode == "resize":
            ow = oh = self.size
        elif w <= h:
            ow, oh = short, max(1, int(short * h / w))
        else:
            ow, oh = max(1, int(short * w / h)), short
        if (ow, oh) == (w, h):
            return image, target
        return image.resize((ow, oh), _RESAMPLE[self.interpolation]), target.resize((ow, oh), Image.NEAREST)

    def __call__(self, image: Image.Image, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        target = np.asarray(target)
        if target.shape != (image.size[1], image.size[0]):
            raise ValueError(
                f"dense target shape {target.shape} differs from the image's {(image.size[1], image.size[0])}: "
                "pair each image with its own annotation."
            )
        integer = np.issubdtype(target.dtype, np.integer)
        if integer:
            if target.min(initial=0) < 0 or target.max(initial=0) > 255:
                raise ValueError("dense integer target has values outside 0..255: masks are stored as uint8.")
            pil_t = Image.fromarray(target.astype(np.uint8))
        else:
            pil_t = Image.fromarray(target.astype(np.float32))
        short = self.size
        if self.mode == "train":
            lo, hi = self.scale_range
            s = lo + (hi - lo) * float(torch.rand(()))
            short = max(1, round(self.size * s))
        image, pil_t = self._resize(image, pil_t, short)
        img = TF.to_tensor(image)
        tgt = torch.from_numpy(np.array(pil_t))
        tgt = tgt.long() if integer else tgt.float()
        if self.mode == "train":
            img, tgt = self._random_crop(img, tgt)
            if self.flip and bool(torch.rand(()) < 0.5):
                img, tgt = img.flip(-1), tgt.flip(-1)
        elif self.mode == "crop":
            h, w = tgt.shape
            top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
            img = img[:, top : top + self.size, left : left + self.size]
            tgt = tgt[top : top + self.size, left : left + self.size]
        return img.contiguous(), tgt.contiguous()

    def _random_crop(self, img: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.size
        h, w = tgt.shape
        if h < s or w < s:
            ph, pw = max(h, s), max(w, s)
            img_p = img.new_zeros(3, ph, pw)
            tgt_p = tgt.new_full((ph, pw), self.pad_value)
            img_p[:, :h, :w], tgt_p[:h, :w] = img, tgt
            img, tgt, h, w = img_p, tgt_p, ph, pw
        top = int(torch.randint(0, h - s + 1, ()))
        left = int(torch.randint(0, w - s + 1, ()))
        return img[:, top : top + s, left : left + s], tgt[top : top + s, left : left + s]

    def __repr__(self) -> str:
        extra = f", scale_range={self.scale_range}, flip={self.flip}" if self.mode == "train" else ""
        return f"DenseTransform(size={self.size}, mode={self.mode!r}{extra})"


def ade_labels(raw: np.ndarray) -> np.ndarray:
    """Map an ADE20K label map (0 = other, 1..150) to training labels: 0 -> 255 (ignore), k -> k - 1.

    Values above 150 (never in the official maps) become 255 too.
    """
    raw = np.asarray(raw)
    out = raw.astype(np.int64) - 1
    out[(raw == 0) | (raw > NUM_CLASSES)] = IGNORE_INDEX
    return out.astype(np.uint8)


def _read_class_names(path: Path) -> list[str]:
    """First name of each class in ``objectInfo150.txt`` (``Idx Ratio Train Val Name``, tab-separated)."""
    names: dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 5 and parts[0].strip().isdigit():
                names[int(parts[0]) - 1] = parts[4].split(";")[0].strip()
    return [names.get(i, f"class_{i}") for i in range(NUM_CLASSES)]


@DATASETS.register("ade20k")
class ADE20K(Dataset):
    """ADE20K SceneParsing: items ``(image [3, h, w] in [0, 1], {"mask": LongTensor[h, w]})``.

    ``transform`` is a :class:`DenseTransform` (default: ``mode="crop"`` at 512 px); :meth:`load` gives the
    untransformed full-resolution pair.  ``num_classes`` is 150 and ``ignore_index`` 255.
    """

    name = "ADE20K"
    num_classes = NUM_CLASSES
    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        split: str = "val",
        transform: DenseTransform | None = None,
    ) -> None:
        layout = (
            "<root>/ADEChallengeData2016/images/{training,validation}/*.jpg and "
            "annotations/{training,validation}/*.png with matching names (the official ADEChallengeData2016.zip)"
        )
        sub = _SPLIT_DIRS.get(split, split)  # an unknown split is reported by locate_dataset
        base = locate_dataset(self.name, root, split, SPLITS, layout, f"images/{sub}", ("ADEChallengeData2016",))
        img_dir, ann_dir = base / "images" / sub, base / "annotations" / sub
        if not ann_dir.is_dir():
            raise FileNotFoundError(
                f"{self.name} folder '{ann_dir}' not found: expected {layout} (see data/README.md)."
            )
        with os.scandir(img_dir) as it:
            images = sorted(e.name for e in it if e.name.lower().endswith((".jpg", ".jpeg", ".png")))
        if not images:
            raise ValueError(f"{self.name} folder '{img_dir}' has no images: expected {layout} (see data/README.md).")
        with os.scandir(ann_dir) as it:
            anns = {e.name for e in it if e.name.lower().endswith(".png")}
        pairs = []
        for name in images:
            ann = os.path.splitext(name)[0] + ".png"
            if ann not in anns:
                raise FileNotFoundError(
                    f"{self.name} annotation '{ann_dir / ann}' for image '{img_dir / name}' not found: every image "
                    "needs a label map with the same name; re-extract the official archive."
                )
            pairs.append((str(img_dir / name), str(ann_dir / ann)))
        self.root, self.split, self.pairs = base, split, pairs
        info = base / "objectInfo150.txt"
        self.classes = _read_class_names(info) if info.is_file() else [f"class_{i}" for i in range(NUM_CLASSES)]
        self.transform = transform if transform is not None else DenseTransform(512, "crop")

    @classmethod
    def build(cls, split: str, *, root: str | None, input_size: int, train: bool, **kwargs: Any) -> ADE20K:
        """Factory for :func:`mdistiller.dataset.build_dataset`.

        ``train=True`` gives ``mode="train"`` (``scale_range`` default 0.5-2.0); otherwise ``mode`` (default
        ``"crop"``).  Extra kwargs: ``mode``, ``scale_range``, ``interpolation``.
        """
        transform = DenseTransform.for_build(
            input_size, train, kwargs, scale_range=ADE_SCALE_RANGE, pad_value=IGNORE_INDEX
        )
        return cls(root, split, transform=transform, **kwargs)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The untransformed pair: ``(PIL RGB image, uint8 label array with 255 = ignore, classes 0..149)``."""
        img_path, ann_path = self.pairs[index]
        image = load_rgb(img_path, self.name)
        raw = load_grey(ann_path, self.name, "label map", "is not single-channel: use the official 8-bit PNG")
        return image, ade_labels(raw)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, mask = self.load(index)
        img, tgt = self.transform(image, mask)
        return img, {"mask": tgt}

    def __repr__(self) -> str:
        return f"ADE20K(split={self.split!r}, images={len(self)}, transform={self.transform!r})"
