"""mdistiller.dataset.device_decode on CPU: eval matches the PIL path, PNG fallback, train determinism, loader."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mdistiller.dataset import build_dataset
from mdistiller.dataset.device_decode import DeviceDecodeTransform, EncodedImages, collate_encoded, is_jpeg
from mdistiller.dataset.transforms import eval_transform

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec (noted in docs/benchmark.md).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

SIZE = 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _image(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A smooth gradient plus mild noise, so JPEG artefacts and resampling behave like a photo's."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 200 / w, yy * 200 / h, (xx + yy) * 100 / (w + h) + 50], -1) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB").convert(mode)


def _encode(im: Image.Image, fmt: str = "JPEG") -> torch.Tensor:
    buf = io.BytesIO()
    im.save(buf, fmt, quality=90) if fmt == "JPEG" else im.save(buf, fmt)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def _pil_eval(data: torch.Tensor) -> torch.Tensor:
    """The folder dataset's path: PIL decode -> RGB -> eval_transform (resize + centre crop) -> [0, 1]."""
    with Image.open(io.BytesIO(bytes(data.tolist()))) as im:
        return eval_transform(SIZE)(im.convert("RGB"))


@pytest.fixture(scope="module")
def batch() -> list[torch.Tensor]:
    """Three JPEGs (landscape, portrait, CMYK) and one palette PNG, all larger than the crop."""
    return [
        _encode(_image(64, 48, 0)),
        _encode(_image(45, 60, 1)),
        _encode(_image(50, 40, 2, "CMYK")),
        _encode(_image(56, 42, 3, "P"), "PNG"),
    ]


def test_eval_matches_pil_path(batch: list[torch.Tensor]) -> None:
    assert [is_jpeg(d) for d in batch] == [True, True, True, False]
    out = DeviceDecodeTransform(SIZE, train=False)(batch)
    assert out.shape == (4, 3, SIZE, SIZE) and out.dtype == torch.float32 and out.device.type == "cpu"
    ref = torch.stack([_pil_eval(d) for d in batch])
    diff = (out - ref).abs()
    # Measured here (torchvision 0.29 / Pillow 13, both libjpeg-turbo, CPU): the decoded JPEG pixels are identical;
    # after the bicubic resize 0.1-0.4 % of the values differ by one grey level (uint8 rounding), mean |diff|
    # 1e-5.  The mean bound leaves room for nvjpeg on CUDA, which differs from libjpeg by a few grey levels.
    assert diff.mean().item() < 0.02
    assert diff.max().item() <= 1 / 255 + 1e-6

    norm = DeviceDecodeTransform(SIZE, False, MEAN, STD)(batch)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(norm, (out - mean) / std)


def test_png_only_batch_and_errors(batch: list[torch.Tensor]) -> None:
    out = DeviceDecodeTransform(SIZE, train=False)([batch[3]])
    assert (out[0] - _pil_eval(batch[3])).abs().max().item() <= 1 / 255 + 1e-6
    with pytest.raises(ValueError, match="empty batch"):
        DeviceDecodeTransform(SIZE, train=False)([])
    with pytest.raises(ValueError, match="both mean and std"):
        DeviceDecodeTransform(SIZE, False, MEAN, None)
    with pytest.raises(RuntimeError):
        DeviceDecodeTransform(SIZE, train=False)([torch.tensor([0xFF, 0xD8, 0xFF, 0, 1, 2], dtype=torch.uint8)])


def test_train_mode_shapes_and_seeding(batch: list[torch.Tensor]) -> None:
    tf = DeviceDecodeTransform(SIZE, train=True, mean=MEAN, std=STD)
    a = tf(batch, torch.Generator().manual_seed(0))
    b = tf(batch, torch.Generator().manual_seed(0))
    c = tf(batch, torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, SIZE, SIZE) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.manual_seed(5)  # no generator: torch's global RNG
    d = tf(batch)
    torch.manual_seed(5)
    assert torch.equal(d, tf(batch))
    seeded = DeviceDecodeTransform(SIZE, train=True, generator=torch.Generator().manual_seed(0))
    unnormalised = seeded(batch)  # the constructor's generator, same draws as seed 0 above
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close((unnormalised - mean) / std, a)


def test_crop_params_within_image_and_fallback() -> None:
    tf = DeviceDecodeTransform(SIZE, train=True)
    gen = torch.Generator().manual_seed(0)
    for height, width in ((48, 64), (375, 500), (10, 7)):
        for _ in range(20):
            top, left, h, w = tf.crop_params(height, width, gen)
            assert 0 <= top and 0 <= left and 0 < h and 0 < w and top + h <= height and left + w <= width
    # a 1 x 100 strip never fits a box of ratio <= 4/3 and area >= 8 %: the centred fallback clamps the ratio
    assert tf.crop_params(1, 100, gen) == (0, 49, 1, 1)


def test_encoded_images_through_a_loader(tmp_path: Path, batch: list[torch.Tensor]) -> None:
    for i, (cls, name) in enumerate([("n01", "a.JPEG"), ("n01", "b.png"), ("n02", "c.jpg")]):
        path = tmp_path / "train" / cls / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(batch[3 if name.endswith(".png") else i].tolist()))
    folder = build_dataset("imagenet", "train", root=str(tmp_path), input_size=SIZE, train=False)
    ds = EncodedImages.from_dataset(folder)
    assert len(ds) == 3 and ds.classes == ["n01", "n02"]
    data, labels = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_encoded)))
    assert isinstance(data, list) and all(d.dtype == torch.uint8 and d.dim() == 1 for d in data)
    assert labels.tolist() == folder.targets == [0, 0, 1]
    out = DeviceDecodeTransform(SIZE, train=False)(data)
    ref = torch.stack([folder[i][0] for i in range(3)])
    assert (out - ref).abs().mean().item() < 0.02
    with pytest.raises(TypeError, match="no 'samples'"):
        EncodedImages.from_dataset([1, 2])
