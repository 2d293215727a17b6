"""Decode and augment JPEG batches on the training device (nvjpeg on CUDA) instead of in the loader workers.

On a GPU host the loader workers' CPU time goes mostly to JPEG decoding and resizing.  This module moves both
to the device:

* :class:`EncodedImages` wraps a folder dataset so that the workers only read files: an item is
  ``(uint8 1-D tensor of the encoded file bytes, int label)``; :func:`collate_encoded` batches them into
  ``(list of byte tensors, int64 label tensor)`` (the byte strings differ in length, so they cannot be stacked).
  With ``augment=True`` the worker also draws the sample's crop box and flip from the image size in the file
  header (no decoding): items are ``(bytes, int64 [top, left, height, width, flip], label)`` and batches
  ``(list of bytes, (B, 5) int64 params, labels)``.  Drawn inside the training engine's per-sample seeded RNG
  (:class:`mdistiller.engine.data.SeededSamples`), the augmentation is then a pure function of the sample key.
* :class:`DeviceDecodeTransform` takes that list (and optionally those params), decodes all JPEGs in one batched
  ``torchvision.io.decode_jpeg(..., device=device)`` call (nvjpeg on CUDA; libjpeg-turbo on CPU), decodes
  other formats (PNG, ...) with ``torchvision.io.decode_image`` on the CPU, and then applies on the device the
  same geometry as :mod:`mdistiller.dataset.transforms`: training = RandomResizedCrop(size, scale 0.08-1,
  ratio 3/4-4/3) + horizontal flip with probability 0.5; evaluation = resize of the shorter side to
  ``round(size * 256 / 224)`` + centre crop ``size``; bicubic with antialiasing in both, on uint8 images (so
  overshoot is clipped, as with PIL).  The result is a float32 ``(B, 3, size, size)`` batch in [0, 1], or
  normalised with ``mean``/``std`` when given.

The folder datasets hand out un-normalised [0, 1] images because each model normalises its own input, so leave
``mean``/``std`` as ``None`` to feed the same distillers.  Usage::

    ds = EncodedImages.from_dataset(build_dataset("imagenet", "train", root=root, input_size=224, train=True))
    loader = DataLoader(ds, batch_size=256, shuffle=True, num_workers=8, collate_fn=collate_encoded,
                        persistent_workers=True)  # no pin_memory: it would pin every byte string separately
    gpu_tf = DeviceDecodeTransform(224, train=True, device="cuda")
    for data, labels in loader:
        images = gpu_tf(data)  # (256, 3, 224, 224) float32 on cuda
        labels = labels.to("cuda", non_blocking=True)

The training engine uses the ``augment=True`` form (``DATASET.DECODE device``): ``gpu_tf(data, params=params)``.

On CPU the decoded pixels are identical to PIL's (both use libjpeg-turbo); nvjpeg's IDCT and chroma upsampling
differ from libjpeg's by a few grey levels.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import InterpolationMode

JPEG_MAGIC = b"\xff\xd8\xff"
"""First bytes of every JPEG file (SOI marker + the next marker's 0xFF); anything else goes to ``decode_image``."""
DEFAULT_SCALE = (0.08, 1.0)
"""RandomResizedCrop's area-fraction range (torchvision's default, as in :mod:`mdistiller.dataset.transforms`)."""
DEFAULT_RATIO = (3 / 4, 4 / 3)
"""RandomResizedCrop's aspect-ratio range (torchvision's default)."""
PARAMS_FIELDS = ("top", "left", "height", "width", "flip")
"""The columns of a training sample's augmentation parameters (one int64 row per image)."""


def is_jpeg(data: torch.Tensor) -> bool:
    """Whether the uint8 byte tensor ``data`` starts like a JPEG file (by content, not by file name)."""
    return data.numel() >= 3 and bytes(data[:3].tolist()) == JPEG_MAGIC


def check_device_decode(dataset_type: str) -> None:
    """Raise one sentence (``ValueError``) unless ``dataset_type`` names a file-based folder dataset.

    Device decoding reads image files, so it needs a dataset whose items come from a ``samples`` list of
    JPEG/PNG paths (the :class:`~mdistiller.dataset.finegrained.ImageListDataset` family: ``imagenet``,
    ``imagenet_r``, the fine-grained sets, ...), not a generated or array-backed one (``toy_scenes``,
    ``fashion_mnist``).  An unknown name raises the registry's ``KeyError``.
    """
    from mdistiller.dataset.catalog import DATASETS
    from mdistiller.dataset.finegrained import ImageListDataset

    if not issubclass(DATASETS.get(dataset_type), ImageListDataset):
        raise ValueError(
            f"DATASET.DECODE 'device' needs JPEG/PNG files (imagenet-style folders); use DECODE cpu for {dataset_type}."
        )


def check_decode_config(cfg) -> None:
    """The config check of ``DATASET.DECODE device`` (declared in ``mdistiller.hooks.LINKS``):
    :func:`check_device_decode` as a ``ConfigError``; an unknown ``DATASET.TYPE`` is left to ``build_dataset``."""
    from mdistiller.config import ConfigError

    if str(cfg.DATASET.DECODE).lower() != "device":
        return
    try:
        check_device_decode(cfg.DATASET.TYPE)
    except ValueError as e:
        raise ConfigError(e.args[0]) from None
    except KeyError:
        pass  # an unknown DATASET.TYPE is reported by build_dataset with the list of valid names


def read_bytes(path: str | os.PathLike[str]) -> torch.Tensor:
    """The bytes of the file at ``path`` as a 1-D uint8 tensor in ordinary (heap) memory.

    Not ``torchvision.io.read_file``: its tensor is backed by a memory map without a file descriptor, which a
    ``DataLoader`` worker cannot hand to the main process (``os.dup`` fails with EBADF and the loader hangs).
    """
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise OSError(f"image file '{path}' is empty: replace or delete the file.")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def encoded_size(data: torch.Tensor) -> tuple[int, int]:
    """``(height, width)`` of an encoded image, read from its header by PIL without decoding the pixels.

    No EXIF rotation is applied, like the folder datasets' PIL loader and ``decode_jpeg``/``decode_image``, so
    this is the size of the image that :meth:`DeviceDecodeTransform.decode` returns.
    """
    with Image.open(io.BytesIO(data.numpy())) as im:
        width, height = im.size
    return height, width


def _shape_only(height: int, width: int) -> torch.Tensor:
    """A zero-storage ``(1, height, width)`` tensor: all that torchvision's ``get_params`` reads is the size."""
    return torch.empty(1, 1, 1).expand(1, height, width)


def augment_params(
    height: int,
    width: int,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int, int]:
    """A training sample's ``(top, left, h, w, flip)``, drawn exactly as :func:`~mdistiller.dataset.transforms.
    train_transform` draws them: ``T.RandomResizedCrop.get_params`` (up to 10 tries, then a centred crop at the
    nearest allowed aspect ratio), then ``torch.rand(1) < 0.5`` for the flip, from torch's global CPU RNG.

    So under the same seed (e.g. :class:`~mdistiller.engine.data.SeededSamples`) ``DATASET.DECODE device`` crops
    and flips every sample like the PIL path. With ``generator`` the draws run on a global-RNG fork seeded from it
    (the generator advances by one draw; torch's global RNG is left untouched).
    """
    if generator is not None:
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return augment_params(height, width, scale, ratio)
    top, left, h, w = T.RandomResizedCrop.get_params(_shape_only(height, width), list(scale), list(ratio))
    return top, left, h, w, int(torch.rand(1).item() < 0.5)


class EncodedImages(Dataset):
    """Items ``(uint8 tensor of the file's bytes, label)``: the raw file bytes, no decoding in the loader workers.

    ``samples`` is a list of ``(path, int label)``, as in the folder datasets' ``samples`` attribute;
    ``classes`` is kept for reference.  With ``augment=True`` items are ``(bytes, params, label)``, where
    ``params`` is an int64 tensor ``[top, left, height, width, flip]`` (:func:`augment_params` with ``scale`` /
    ``ratio``, for the size in the file header) drawn from torch's global RNG in the worker, so a per-sample
    seeded wrapper fixes each sample's crop and flip.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str] | None = None,
        *,
        augment: bool = False,
        scale: tuple[float, float] = DEFAULT_SCALE,
        ratio: tuple[float, float] = DEFAULT_RATIO,
    ) -> None:
        if not samples:
            raise ValueError("EncodedImages got no samples: pass a non-empty list of (image path, label).")
        self.samples = list(samples)
        self.targets = [t for _, t in self.samples]
        self.classes = list(classes) if classes is not None else None
        self.augment = bool(augment)
        self.scale = scale
        self.ratio = ratio

    @classmethod
    def from_dataset(cls, dataset: Any, **kwargs: Any) -> EncodedImages:
        """Wrap a dataset with ``samples`` (and optionally ``classes``), e.g. ``build_dataset("imagenet", ...)``.

        The wrapped dataset's own transform is not used: :class:`DeviceDecodeTransform` replaces it.  ``kwargs``
        (``augment``, ``scale``, ``ratio``) go to the constructor.
        """
        samples = getattr(dataset, "samples", None)
        if samples is None:
            raise TypeError(
                f"{type(dataset).__name__} has no 'samples' list of (path, label): wrap a folder dataset such as "
                "build_dataset('imagenet', ...)."
            )
        return cls(samples, getattr(dataset, "classes", None), **kwargs)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, torch.Tensor, int]:
        path, target = self.samples[index]
        data = read_bytes(path)
        if not self.augment:
            return data, target
        try:
            height, width = encoded_size(data)
        except OSError as err:
            raise OSError(f"image '{path}' cannot be read ({err}): replace or delete the file.") from err
        params = torch.tensor(augment_params(height, width, self.scale, self.ratio), dtype=torch.int64)
        return data, params, target


def collate_encoded(batch: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """``DataLoader`` ``collate_fn`` for :class:`EncodedImages`: ``(list of byte tensors, int64 labels)``, or
    ``(list of byte tensors, (B, 5) int64 params, int64 labels)`` for ``augment=True`` items."""
    data = [item[0] for item in batch]
    labels = torch.tensor([int(item[-1]) for item in batch], dtype=torch.int64)
    if len(batch[0]) == 3:
        return data, torch.stack([item[1] for item in batch]), labels
    return data, labels


class DeviceDecodeTransform:
    """Batched decode + train/eval geometry + float conversion on ``device``; see the module docstring.

    ``size``: output side in pixels.  ``train``: RandomResizedCrop + flip (``True``) or resize + centre crop.
    ``mean``/``std``: per-channel normalisation of the [0, 1] pixels, or ``None`` for none (the repo's datasets
    do not normalise).  ``device``: where decoding and resizing run.  ``scale``/``ratio``/``interpolation``:
    as in :func:`mdistiller.dataset.transforms.train_transform` by default.

    Randomness (training only): unless :meth:`__call__` gets ``params`` (e.g. drawn per sample by
    :class:`EncodedImages` with ``augment=True``), the crop box and the flip are drawn from the ``generator``
    passed to :meth:`__call__`, else from the one given here, else from torch's global CPU RNG (so
    ``torch.manual_seed`` makes a run repeatable).  Draws happen on the CPU in the order of the images, exactly as
    torchvision's RandomResizedCrop + RandomHorizontalFlip draw them, whatever the device (:func:`augment_params`).
    """

    def __init__(
        self,
        size: int,
        train: bool,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device: str | torch.device = "cpu",
        *,
        interpolation: InterpolationMode = InterpolationMode.BICUBIC,
        scale: tuple[float, float] = DEFAULT_SCALE,
        ratio: tuple[float, float] = DEFAULT_RATIO,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"transform size {size!r} is invalid: pass a positive integer number of pixels.")
        if (mean is None) != (std is None):
            raise ValueError("pass both mean and std (3 numbers each) to normalise, or neither for [0, 1] pixels.")
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"scale {scale} / ratio {ratio} are invalid: need 0 < lo <= hi (and scale hi <= 1).")
        self.size = size
        self.train = train
        self.device = torch.device(device)
        self.interpolation = interpolation
        self.scale = scale
        self.ratio = ratio
        self.generator = generator
        # Same expression as transforms.eval_transform (EVAL_RESIZE_RATIO = 256 / 224).
        self.resize_size = round(size * 256 / 224)
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32, device=self.device)

    def __repr__(self) -> str:
        mode = "train" if self.train else "eval"
        return f"DeviceDecodeTransform(size={self.size}, {mode}, device={self.device})"

    # ------------------------------------------------------------------------------------------- decoding

    def decode(self, data: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """uint8 ``(3, H, W)`` RGB images on the device, in input order.

        JPEGs go through one batched ``decode_jpeg`` call; if that call fails (a corrupt file, or a JPEG variant
        such as CMYK that the device decoder rejects) each JPEG is retried alone and then with ``decode_image`` on
        the CPU.  Other formats are decoded with ``decode_image`` on the CPU and moved to the device.
        """
        out: list[torch.Tensor | None] = [None] * len(data)
        jpeg_idx = [i for i, d in enumerate(data) if is_jpeg(d)]
        if jpeg_idx:
            jpegs = [data[i] for i in jpeg_idx]
            try:
                decoded = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:
                decoded = [self._decode_one_jpeg(d) for d in jpegs]
            for i, img in zip(jpeg_idx, decoded, strict=True):
                out[i] = img
        for i, d in enumerate(data):
            if out[i] is None:
                out[i] = decode_image(d, mode=ImageReadMode.RGB).to(self.device, non_blocking=True)
        return out  # type: ignore[return-value]

    def _decode_one_jpeg(self, data: torch.Tensor) -> torch.Tensor:
        """One JPEG on the device, falling back to the CPU decoder (which raises for a truly corrupt file)."""
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return decode_image(data, mode=ImageReadMode.RGB).to(self.device)

    # ------------------------------------------------------------------------------------------- geometry

    def crop_params(self, height: int, width: int, generator: torch.Generator | None = None) -> tuple[int, ...]:
        """A RandomResizedCrop box ``(top, left, h, w)`` for an image of ``height`` × ``width`` pixels."""
        return augment_params(height, width, self.scale, self.ratio, generator)[:4]

    def geometry(
        self, img: torch.Tensor, generator: torch.Generator | None = None, params: Sequence[int] | None = None
    ) -> torch.Tensor:
        """The train or eval crop of one uint8 ``(3, H, W)`` image: uint8 ``(3, size, size)``.

        ``params`` (training only): ``(top, left, h, w, flip)`` to apply instead of drawing them.
        """
        if not self.train:
            img = F.resize(img, [self.resize_size], interpolation=self.interpolation, antialias=True)
            return F.center_crop(img, [self.size, self.size])
        if params is None:
            params = augment_params(img.shape[-2], img.shape[-1], self.scale, self.ratio, generator)
        top, left, h, w, flip = (int(p) for p in params)
        height, width = img.shape[-2:]
        if not (0 <= top and 0 <= left and 0 < h and 0 < w and top + h <= height and left + w <= width):
            raise ValueError(
                f"crop box (top {top}, left {left}, {h} x {w}) does not fit the decoded {height} x {width} image: "
                "draw the params from the size of the same file (encoded_size)."
            )
        img = F.resized_crop(
            img, top, left, h, w, [self.size, self.size], interpolation=self.interpolation, antialias=True
        )
        if flip:
            img = F.horizontal_flip(img)
        return img

    def __call__(
        self,
        data: Sequence[torch.Tensor],
        generator: torch.Generator | None = None,
        params: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encoded images (uint8 1-D CPU tensors) in, float32 ``(B, 3, size, size)`` on the device out.

        ``params`` (training only): a ``(B, 5)`` integer tensor of ``(top, left, h, w, flip)`` rows, as collated
        from :class:`EncodedImages` with ``augment=True``; the crops and flips then come from it, not from an RNG.
        """
        if len(data) == 0:
            raise ValueError("DeviceDecodeTransform got an empty batch: pass a non-empty list of byte tensors.")
        rows: list[list[int]] | list[None] = [None] * len(data)
        if params is not None:
            if not self.train:
                raise ValueError("augmentation params were given to an eval DeviceDecodeTransform: pass train=True.")
            if tuple(params.shape) != (len(data), len(PARAMS_FIELDS)):
                raise ValueError(
                    f"augmentation params have shape {tuple(params.shape)} but the batch needs ({len(data)}, "
                    f"{len(PARAMS_FIELDS)}): one ({', '.join(PARAMS_FIELDS)}) row per image."
                )
            rows = params.tolist()
        gen = generator if generator is not None else self.generator
        crops = [self.geometry(img, gen, row) for img, row in zip(self.decode(data), rows, strict=True)]
        batch = F.to_dtype(torch.stack(crops), torch.float32, scale=True)
        if self.mean is not None and self.std is not None:
            batch = (batch - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)
        return batch
