"""``DATASET.DECODE device`` in the training engine (CPU): trains, augmentation is a pure function of the sample
key (same batches across loader rebuilds, worker counts and a mid-epoch restart), and matches the PIL path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from mdistiller.config import ConfigError, load_config, validate_config
from mdistiller.dataset import build_dataset
from mdistiller.dataset.device_decode import (
    DeviceDecodeTransform,
    EncodedImages,
    collate_encoded,
    encoded_size,
)
from mdistiller.dataset.finegrained import load_rgb
from mdistiller.engine.data import SeededSamples
from mdistiller.engine.distributed import DistEnv
from mdistiller.engine.trainer import Trainer
from tests.conftest import tiny_config

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec (noted in docs/benchmark.md).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

SIZE = 32
BATCH = 4
SIZES = [(64, 48), (48, 64), (80, 60), (56, 56), (72, 50), (50, 72), (60, 80), (48, 48)]  # (width, height)


def _image(w: int, h: int, seed: int) -> Image.Image:
    """A smooth gradient plus mild noise, so JPEG artefacts and resampling behave like a photo's."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 200 / w, yy * 200 / h, (xx + yy) * 100 / (w + h) + 50], -1) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """``root/train/{n01,n02}/*``: 16 small images of assorted sizes and aspect ratios, 8 per class, the last of
    each class a PNG (decoded on the CPU by the device path) and the others JPEGs."""
    root = tmp_path_factory.mktemp("jpeg_folder")
    for c, cls in enumerate(("n01", "n02")):
        (root / "train" / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(SIZES):
            im = _image(w, h, 10 * c + i)
            if i == len(SIZES) - 1:
                im.save(root / "train" / cls / f"img_{i}.png", "PNG")
            else:
                im.save(root / "train" / cls / f"img_{i}.JPEG", "JPEG", quality=90)
    return root


def cpu_env() -> DistEnv:
    return DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None, is_main=True)


def _cfg(root: Path, **overrides):
    cfg = tiny_config("SiNGER", size=SIZE, **{
        "DATASET.TYPE": "imagenet", "DATASET.ROOT": str(root), "DATASET.DECODE": "device", "DATASET.NUM_WORKERS": 0,
        "SOLVER.BATCH_SIZE": BATCH, "SOLVER.MAX_STEPS": 3, "SOLVER.AMP": "none", "LOG.PROGRESS": False,
        "LOG.FREQ": 1, "LOG.CKPT_EVERY_STEPS": 0, **overrides})
    validate_config(cfg)
    return cfg


def _batches(trainer: Trainer, epoch: int, start_step: int = 0, n: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` batches the trainer's loader yields from ``(epoch, start_step)``, as in ``Trainer.fit``."""
    trainer.sampler.set_epoch(epoch, start=start_step * trainer.batch)
    out = []
    for images, targets in trainer.loader:
        out.append((images, targets))
        if len(out) == n:
            break
    return out


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_device_decode_trains_with_finite_loss(folder: Path, tmp_path: Path) -> None:
    trainer = Trainer(_cfg(folder), cpu_env(), tmp_path / "run")
    (images, targets), = _batches(trainer, 0)
    assert images.shape == (BATCH, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert 0.0 <= images.min().item() and images.max().item() <= 1.0 and targets.dtype == torch.int64
    trainer.fit()
    losses = _losses(tmp_path / "run")
    assert trainer.step == 3 and sorted(losses) == [1, 2, 3] and all(math.isfinite(v) for v in losses.values())


def test_batches_are_a_function_of_the_sample_key(folder: Path, tmp_path: Path) -> None:
    a = Trainer(_cfg(folder), cpu_env(), tmp_path / "a")
    ref = _batches(a, 0, n=4) + _batches(a, 1, n=1)
    rebuilt = Trainer(_cfg(folder), cpu_env(), tmp_path / "b")
    one_worker = Trainer(_cfg(folder, **{"DATASET.NUM_WORKERS": 1, "DATASET.WORKER_START": "forkserver"}), cpu_env(),
                         tmp_path / "c")  # a worker that does not fork the test process (its torch threads)
    torch.manual_seed(123)  # the global RNG plays no part: params are drawn per sample in the (seeded) workers
    for other in (rebuilt, one_worker):
        got = _batches(other, 0, n=4) + _batches(other, 1, n=1)
        for (x, y), (x2, y2) in zip(ref, got, strict=True):
            assert torch.equal(x, x2) and torch.equal(y, y2)
    (resumed, labels), = _batches(rebuilt, 0, start_step=2)  # a run restarted at step 2 of epoch 0
    assert torch.equal(resumed, ref[2][0]) and torch.equal(labels, ref[2][1])
    # a sample's crop/flip is fixed by (seed, epoch, index) and changes with the epoch
    samples = a.loader.loader.dataset
    n = len(samples)
    assert torch.equal(samples[3][1], samples[3][1]) and not torch.equal(samples[3][1], samples[n + 3][1])


def test_resume_matches_uninterrupted(folder: Path, tmp_path: Path) -> None:
    """As tests/test_train.py's in-process resume test, with decoding and augmentation on the device."""
    over = {"SOLVER.MAX_STEPS": 0, "SOLVER.EPOCHS": 3, "SOLVER.WARMUP_EPOCHS": 0.5, "LOG.CKPT_EVERY_STEPS": 1}
    full = Trainer(_cfg(folder, **over), cpu_env(), tmp_path / "full")
    full.fit()
    part = Trainer(_cfg(folder, **over), cpu_env(), tmp_path / "part")
    part.total_steps = 6  # stop mid-epoch 1 (4 steps per epoch); the schedule keeps the full length
    part.fit()
    resumed = Trainer(_cfg(folder, **over), cpu_env(), tmp_path / "part")
    resumed.fit(resume=tmp_path / "part/checkpoints/last.pth")
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "part")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step


def test_eval_geometry_matches_the_pil_path(folder: Path, tmp_path: Path) -> None:
    device = Trainer(_cfg(folder, **{"DATASET.AUGMENT": False}), cpu_env(), tmp_path / "d")
    cpu = Trainer(_cfg(folder, **{"DATASET.AUGMENT": False, "DATASET.DECODE": "cpu"}), cpu_env(), tmp_path / "c")
    for (x, y), (ref, ref_y) in zip(_batches(device, 0, n=4), _batches(cpu, 0, n=4), strict=True):
        assert torch.equal(y, ref_y)
        diff = (x - ref).abs()  # same bounds as tests/test_device_decode.py (one grey level of uint8 rounding)
        assert diff.mean().item() < 0.02 and diff.max().item() <= 1 / 255 + 1e-6


def test_train_batches_match_the_pil_path_under_the_same_seed(folder: Path, tmp_path: Path) -> None:
    """Crop and flip are drawn like torchvision's RandomResizedCrop + flip, so switching DECODE keeps the crops."""
    device = Trainer(_cfg(folder), cpu_env(), tmp_path / "d")
    cpu = Trainer(_cfg(folder, **{"DATASET.DECODE": "cpu"}), cpu_env(), tmp_path / "c")
    for (x, y), (ref, ref_y) in zip(_batches(device, 1, n=4), _batches(cpu, 1, n=4), strict=True):
        assert torch.equal(y, ref_y)
        diff = (x - ref).abs()  # the bounds of the given-params test below: resampling rounding only
        assert diff.mean().item() < 0.005 and diff.max().item() <= 2 / 255 + 1e-6


def test_train_crop_with_given_params_matches_pil(folder: Path) -> None:
    train_set = build_dataset("imagenet", "train", root=str(folder), input_size=SIZE, train=True)
    encoded = SeededSamples(EncodedImages.from_dataset(train_set, augment=True), seed=0)
    items = [encoded[k] for k in range(len(encoded))]
    data, params, labels = collate_encoded(items)
    assert params.shape == (16, 5) and params.dtype == torch.int64 and labels.tolist() == train_set.targets
    assert set(params[:, 4].tolist()) == {0, 1}  # both flips occur among 16 draws
    for d, p in zip(data, params.tolist(), strict=True):
        top, left, h, w, _ = p
        height, width = encoded_size(d)
        assert 0 <= top and 0 <= left and top + h <= height and left + w <= width
    out = DeviceDecodeTransform(SIZE, train=True)(data, params=params)
    torch.manual_seed(7)  # given params draw nothing, whatever the RNG state
    assert torch.equal(out, DeviceDecodeTransform(SIZE, train=True)(data, params=params))
    for i, ((path, _), (top, left, h, w, flip)) in enumerate(zip(train_set.samples, params.tolist(), strict=True)):
        img = TF.resized_crop(load_rgb(path, "test"), top, left, h, w, [SIZE, SIZE],
                              interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        ref = TF.to_tensor(TF.hflip(img) if flip else img)
        # Measured (torchvision 0.29 / Pillow 13, CPU): mean |diff| <= 1.1e-3, max 1 grey level, 2 on one
        # upscaled small crop (bicubic rounding of tensor vs PIL resampling).
        diff = (out[i] - ref).abs()
        assert diff.mean().item() < 0.005 and diff.max().item() <= 2 / 255 + 1e-6, (i, diff.max().item())


def test_params_errors(folder: Path) -> None:
    train_set = build_dataset("imagenet", "train", root=str(folder), input_size=SIZE, train=True)
    data, params, _ = collate_encoded([EncodedImages.from_dataset(train_set, augment=True)[i] for i in range(2)])
    with pytest.raises(ValueError, match="shape"):
        DeviceDecodeTransform(SIZE, train=True)(data, params=params[:1])
    with pytest.raises(ValueError, match="eval"):
        DeviceDecodeTransform(SIZE, train=False)(data, params=params)
    with pytest.raises(ValueError, match="does not fit"):
        DeviceDecodeTransform(SIZE, train=True)(data[:1], params=torch.tensor([[0, 0, 500, 500, 0]]))


def test_device_decode_needs_a_folder_dataset(tmp_path: Path) -> None:
    msg = "DATASET.DECODE 'device' needs JPEG/PNG files (imagenet-style folders); use DECODE cpu for toy_scenes."
    with pytest.raises(ConfigError) as err:
        validate_config(load_config([], ["DATASET.TYPE", "toy_scenes", "DATASET.DECODE", "device"], validate=False))
    assert str(err.value) == msg
    with pytest.raises(ConfigError, match="DATASET.DECODE is 'gpu' but must be one of: cpu, device"):
        validate_config(load_config([], ["DATASET.DECODE", "gpu"], validate=False))
    cfg = tiny_config("SiNGER", **{"DATASET.TYPE": "fashion_mnist", "DATASET.DECODE": "device"})
    with pytest.raises(ValueError, match="use DECODE cpu for fashion_mnist"):  # unvalidated config: the Trainer checks
        Trainer(cfg, cpu_env(), tmp_path / "run")
