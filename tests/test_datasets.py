"""Datasets: toy scenes (determinism, targets, occlusion, geometry), ImageNet-style folders, Fashion-MNIST idx
files, transforms and the registry."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mdistiller.dataset import DATASETS, build_dataset
from mdistiller.dataset.fashion_mnist import DEFAULT_ROOT, FashionMNIST, read_idx, write_idx
from mdistiller.dataset.folders import ImageFolderSplit
from mdistiller.dataset.toy_scenes import (
    CLASS_NAMES,
    DEPTH_MAX,
    DEPTH_MIN,
    NUM_CLASSES,
    NUM_SEG_CLASSES,
    ObjectSpec,
    SceneSpec,
    ToyScenes,
    render_scene,
    sample_scene,
    save_preview,
)
from mdistiller.dataset.transforms import eval_transform, train_transform

# ----------------------------------------------------------------------------------------------- toy scenes


def test_toy_scenes_deterministic_and_distinct() -> None:
    a, b = ToyScenes("train", num_images=10, size=48), ToyScenes("train", num_images=10, size=48)
    for i in (0, 7):
        (xa, ta), (xb, tb) = a[i], b[i]
        assert torch.equal(xa, xb) and torch.equal(ta["mask"], tb["mask"]) and torch.equal(ta["depth"], tb["depth"])
        assert ta["label"] == tb["label"]
    assert not torch.equal(a[0][0], a[1][0])
    assert not torch.equal(a[0][0], ToyScenes("train", num_images=10, size=48, seed=1)[0][0])


def test_toy_scenes_splits_do_not_overlap() -> None:
    def keys(split: str) -> set[bytes]:
        ds = ToyScenes(split, num_images=40, size=16)
        return {ds[i][0].numpy().tobytes() for i in range(len(ds))}

    train, val, test = keys("train"), keys("val"), keys("test")
    assert len(train) == 40 and len(val) == 40
    assert not train & val and not train & test and not val & test


@pytest.mark.parametrize("size", [32, 64, 100])
def test_toy_scenes_shapes_dtypes_ranges(size: int) -> None:
    ds = ToyScenes("val", num_images=12, size=size)
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.shape == (3, size, size) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert t["mask"].shape == (size, size) and t["mask"].dtype == torch.int64
        assert t["depth"].shape == (size, size) and t["depth"].dtype == torch.float32
        assert isinstance(t["label"], int) and 0 <= t["label"] < NUM_CLASSES
        assert 0 <= t["mask"].min() and t["mask"].max() < NUM_SEG_CLASSES
        assert DEPTH_MIN <= t["depth"].min() and t["depth"].max() <= DEPTH_MAX
    assert len(CLASS_NAMES) == NUM_CLASSES and NUM_SEG_CLASSES == NUM_CLASSES + 1


def test_toy_scenes_label_is_largest_visible_class() -> None:
    ds = ToyScenes("train", num_images=60, size=64)
    labels = set()
    for i in range(len(ds)):
        _, t = ds[i]
        counts = torch.bincount(t["mask"].flatten(), minlength=NUM_SEG_CLASSES)[1:]
        assert counts[t["label"]] == counts.max() > 0
        # the scene spec agrees: every object category is distinct and the label is one of them
        cats = [o.category for o in ds.spec(i).objects]
        assert len(set(cats)) == len(cats) and t["label"] in cats
        labels.add(t["label"])
    assert len(labels) >= NUM_CLASSES - 1  # every category shows up as a label


def test_toy_scenes_label_resolution_independent() -> None:
    for i in range(15):
        spec = sample_scene(i, "val")
        assert render_scene(spec, 40)[3] == render_scene(spec, 160)[3] == spec.objects[0].category


def test_toy_scenes_depth_geometry() -> None:
    spec = SceneSpec(horizon=0.4, bottom_depth=1.2, objects=())
    image, mask, depth, label = render_scene(spec, 64)
    assert label == -1 and mask.max() == 0
    v = (np.arange(64) + 0.5) / 64
    assert np.all(depth[v < 0.4] == DEPTH_MAX)  # sky is far
    ground = depth[v > 0.4, 10]
    assert np.all(np.diff(ground) <= 0) and ground[0] == DEPTH_MAX  # depth grows toward the horizon
    assert ground[-1] == pytest.approx(1.2 * (1 - 0.4) / (v[-1] - 0.4), rel=1e-5)
    assert np.all(depth == depth[:, :1])  # flat ground: depth depends on the row only
    # plain sky: a smooth gradient with no texture inside a row
    assert np.abs(np.diff(image[: int(0.4 * 64)], axis=1)).max() < 1e-6


def test_toy_scenes_occlusion_and_size_shrink_with_depth() -> None:
    near = ObjectSpec(category=1, x=0.45, depth=2.0, height=1.0)
    far = ObjectSpec(category=0, x=0.55, depth=2.5, height=1.2)
    for objects in ((near, far), (far, near)):  # the listed order must not matter: painter's algorithm
        _, mask, depth, label = render_scene(SceneSpec(objects=objects), 96)
        alone_far = render_scene(SceneSpec(objects=(far,)), 96)[1] == 1
        alone_near = render_scene(SceneSpec(objects=(near,)), 96)[1] == 2
        overlap = alone_far & alone_near
        assert overlap.sum() > 50
        assert np.all(mask[overlap] == 2) and np.allclose(depth[overlap], 2.0)
        assert np.all(mask[alone_far & ~alone_near] == 1) and np.allclose(depth[alone_far & ~alone_near], 2.5)
        assert label == 1
    # the same object twice as far covers about a quarter of the pixels
    a2 = (render_scene(SceneSpec(objects=(ObjectSpec(6, 0.5, 2.0),)), 128)[1] > 0).sum()
    a4 = (render_scene(SceneSpec(objects=(ObjectSpec(6, 0.5, 4.0),)), 128)[1] > 0).sum()
    assert 3.3 < a2 / a4 < 4.7


def test_toy_scenes_flip_augmentation_is_consistent() -> None:
    plain = ToyScenes("train", num_images=6, size=32)
    aug = ToyScenes("train", num_images=6, size=32, train_augment=True)
    torch.manual_seed(0)
    flipped = 0
    for i in range(len(plain)):
        (x, t), (xa, ta) = plain[i], aug[i]
        f = torch.equal(xa, x.flip(-1))
        assert f or torch.equal(xa, x)
        assert torch.equal(ta["mask"], t["mask"].flip(-1) if f else t["mask"])
        assert torch.equal(ta["depth"], t["depth"].flip(-1) if f else t["depth"])
        assert ta["label"] == t["label"]
        flipped += f
    assert 0 < flipped < len(plain)


def test_toy_scenes_default_collate() -> None:
    loader = DataLoader(ToyScenes("val", num_images=5, size=24), batch_size=4)
    images, targets = next(iter(loader))
    assert images.shape == (4, 3, 24, 24)
    assert targets["label"].shape == (4,) and targets["label"].dtype == torch.int64
    assert targets["mask"].shape == (4, 24, 24) and targets["depth"].shape == (4, 24, 24)


def test_toy_scenes_generation_cost_scales_with_pixels() -> None:
    def best(size: int) -> float:
        times = []
        for i in range(5):
            spec = sample_scene(i, "test")
            t0 = time.perf_counter()
            render_scene(spec, size)
            times.append(time.perf_counter() - t0)
        return min(times)

    # 12x the pixels must not cost much more than 12x the time (no per-pixel Python loops)
    assert best(224) < 25 * best(64)


def test_toy_scenes_errors_and_preview(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown toy-scenes split"):
        ToyScenes("valid")
    with pytest.raises(IndexError):
        ToyScenes("val", num_images=3).spec(3)
    out = save_preview(tmp_path / "prev.png", n=2, size=32)
    assert out.stat().st_size > 1000 and Image.open(out).format == "PNG"


# ------------------------------------------------------------------------------------------ ImageNet folders

_COLORS = {"n01": (255, 0, 0), "n02": (0, 255, 0), "n03": (0, 0, 255)}


def _tree(root: Path, splits=("train", "val"), classes=tuple(_COLORS), n: int = 2) -> Path:
    exts = (".JPEG", ".png", ".jpg")
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for k in range(n):
                Image.new("RGB", (20 + 3 * k, 16), _COLORS.get(c, (128, 128, 128))).save(d / f"img{k}{exts[k % 3]}")
            (d / "notes.txt").write_text("not an image")
    return root


def test_image_folder_classes_and_labels(tmp_path: Path) -> None:
    root = _tree(tmp_path / "inet")
    (root / "train" / "README").write_text("stray file at class level is ignored")
    ds = ImageFolderSplit(root, "val", transform=eval_transform(8))
    assert ds.classes == ["n01", "n02", "n03"] and ds.num_classes == 3 and len(ds) == 6
    for i in range(len(ds)):
        image, label = ds[i]
        assert isinstance(label, int) and image.shape == (3, 8, 8)
        # the image's colour identifies its class folder
        assert int(image.mean(dim=(1, 2)).argmax()) == label
    train = build_dataset("imagenet", "train", root=str(root), input_size=12, train=True)
    assert train.classes == ds.classes and train.targets == [0, 0, 1, 1, 2, 2]
    x, y = train[5]
    assert x.shape == (3, 12, 12) and 0 <= x.min() and x.max() <= 1 and y == 2


def test_image_folder_val_only_is_accepted(tmp_path: Path) -> None:
    root = _tree(tmp_path / "inet", splits=("val",))
    assert len(ImageFolderSplit(root, "val")) == 6


def test_image_folder_malformed_layouts(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=r"ImageNet folder '.*nope' not found: expected .*nope/train/<wnid>"):
        ImageFolderSplit(missing, "train")
    root = _tree(tmp_path / "only_train", splits=("train",))
    with pytest.raises(FileNotFoundError, match=r"split folder '.*only_train/val' not found: expected"):
        ImageFolderSplit(root, "val")
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"has no class folders: expected .*/train/<wnid>/\*\.JPEG"):
        ImageFolderSplit(empty, "train")
    hollow = _tree(tmp_path / "hollow", splits=("train",))
    (hollow / "train" / "n04").mkdir()
    (hollow / "train" / "n04" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"class folder '.*n04' has no images .*expected"):
        ImageFolderSplit(hollow, "train")
    mismatch = _tree(tmp_path / "mismatch", splits=("train",))
    _tree(mismatch, splits=("val",), classes=("n01", "n02"))
    for split in ("train", "val"):
        with pytest.raises(ValueError, match=r"'n03' is only in train.*same <wnid> folders"):
            ImageFolderSplit(mismatch, split)
    with pytest.raises(ValueError, match="needs a root folder"):
        build_dataset("imagenet", "val", root=None, input_size=8, train=False)


# ---------------------------------------------------------------------------------------------- transforms


def test_transforms_output_unit_tensors_of_the_right_size() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    for tf in (train_transform(32), eval_transform(32)):
        x = tf(img)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(eval_transform(32)(img), eval_transform(32)(img))
    resize = eval_transform(224).transforms[0]
    assert resize.size == 256
    with pytest.raises(ValueError, match="positive integer"):
        train_transform(0)


# ------------------------------------------------------------------------------------------- Fashion-MNIST


def _fake_fashion(root: Path, n_train: int = 5, n_test: int = 3) -> None:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


def test_idx_parser_on_self_written_files(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 0x08, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    (tmp_path / "a-idx3-ubyte").write_bytes(raw + arr.tobytes())  # hand-written header, plain file
    with gzip.open(tmp_path / "a-idx3-ubyte.gz", "wb") as f:
        f.write(raw + arr.tobytes())
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        out = read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and np.array_equal(out, arr)
        assert np.array_equal(read_idx(tmp_path / name, limit=1), arr[:1])
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    assert np.array_equal(read_idx(write_idx(tmp_path / "f.idx", floats)), floats)

    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x03" + raw[4:] + arr.tobytes())
    with pytest.raises(ValueError, match="is not an idx file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(raw + arr.tobytes()[:-1])
    with pytest.raises(ValueError, match="is truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(raw + arr.tobytes() + b"\x00")
    with pytest.raises(ValueError, match="bytes beyond"):
        read_idx(tmp_path / "long")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_idx(tmp_path / "absent")


def test_fashion_mnist_on_fake_files(tmp_path: Path) -> None:
    _fake_fashion(tmp_path / "fm")
    ds = build_dataset("fashion_mnist", "train", root=str(tmp_path / "fm"), input_size=40, train=True)
    assert len(ds) == 5 and ds.targets == [0, 1, 2, 3, 4]
    x, y = ds[2]
    assert x.shape == (3, 40, 40) and x.dtype == torch.float32 and y == 2
    assert 0 <= x.min() and x.max() <= 1 and torch.equal(x[0], x[2])
    assert len(FashionMNIST(tmp_path / "fm", "val", input_size=28, limit=2)) == 2
    x28, _ = FashionMNIST(tmp_path / "fm", "test", input_size=28)[0]
    raw = read_idx(tmp_path / "fm" / "t10k-images-idx3-ubyte.gz")[0]
    assert torch.allclose(x28[1], torch.from_numpy(raw).float() / 255)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        FashionMNIST(tmp_path / "nowhere")
    write_idx(tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz", np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="matching pair"):
        FashionMNIST(tmp_path / "fm", "test")


@pytest.mark.asset
@pytest.mark.skipif(
    not Path(DEFAULT_ROOT, "train-labels-idx1-ubyte.gz").is_file(), reason="dataset-fashion-mnist absent"
)
def test_fashion_mnist_real_files() -> None:
    ds = FashionMNIST(split="train", input_size=32, limit=64)
    assert len(ds) == 64 and ds.targets[:5] == [9, 0, 0, 3, 0]  # the published first training labels
    x, _ = ds[0]
    assert x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1 and x.std() > 0.1
    assert read_idx(Path(DEFAULT_ROOT, "t10k-labels-idx1-ubyte.gz")).shape == (10_000,)


# ----------------------------------------------------------------------------------------------- registry


def test_registry_and_build_dataset() -> None:
    assert {"imagenet", "fashion_mnist", "toy_scenes"} <= set(DATASETS.names())
    assert DATASETS.get("toy_scenes") is ToyScenes and DATASETS.get("ImageNet") is ImageFolderSplit
    with pytest.raises(KeyError, match="unknown dataset 'cifar10'; valid names: .*toy_scenes"):
        DATASETS.get("cifar10")
    with pytest.raises(KeyError, match="valid names"):
        build_dataset("cifar10", "train", root=None, input_size=32, train=True)
    ds = build_dataset("toy_scenes", "val", root=None, input_size=20, train=False, num_images=3)
    assert isinstance(ds, ToyScenes) and len(ds) == 3 and ds[0][0].shape == (3, 20, 20) and not ds.train_augment
    assert build_dataset("toy_scenes", "train", root=None, input_size=20, train=True, num_images=3).train_augment
