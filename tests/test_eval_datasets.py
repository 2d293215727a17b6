"""Evaluation datasets in their official on-disk formats, each on a tiny fixture tree built here:
ImageNet-R/-V2, iNat2019, FGVC-Aircraft, Oxford-IIIT Pet, Food-101, Flowers-102, ADE20K, NYUd-v2,
and the paired image+target transforms of the dense tasks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from mdistiller.dataset import DATASETS, build_dataset
from mdistiller.dataset.ade20k import ADE20K, DenseTransform, ade_labels
from mdistiller.dataset.finegrained import FGVCAircraft, Flowers102, Food101, OxfordIIITPet
from mdistiller.dataset.imagenet_variants import (
    IMAGENET_R_WNIDS,
    ImageNetR,
    ImageNetV2,
    imagenet_r_class_mask,
    restrict_logits,
)
from mdistiller.dataset.inat2019 import INaturalist2019, paper_split_indices
from mdistiller.dataset.nyud import NYUDepthV2, export_png_layout


def _write_image(path: Path, value: int = 128, size: tuple[int, int] = (12, 10)) -> None:
    """A tiny solid RGB image (``size`` = (W, H)) whose red channel is ``value``; format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., 0] = value
    arr[..., 1] = np.arange(size[0], dtype=np.uint8)[None, :] * 8
    Image.fromarray(arr).save(path)


def _one_sentence(err: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith("."), msg
    for n in needles:
        assert n in msg, (n, msg)


def test_all_eval_datasets_registered() -> None:
    names = "imagenet_r imagenet_v2 inat2019 aircraft pets food101 flowers102 ade20k nyud".split()
    assert all(name in DATASETS for name in names)


# ------------------------------------------------------------------------------------ ImageNet-R / -V2


def _imagenet_wnids() -> list[str]:
    """A stand-in 1000-class list: the 200 real IN-R wnids plus 800 made-up ones, sorted like ImageNet's."""
    return sorted([*IMAGENET_R_WNIDS, *(f"n9{i:07d}" for i in range(800))])


def test_imagenet_r_wnid_constant() -> None:
    assert len(IMAGENET_R_WNIDS) == 200 == len(set(IMAGENET_R_WNIDS))
    assert list(IMAGENET_R_WNIDS) == sorted(IMAGENET_R_WNIDS)
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in IMAGENET_R_WNIDS)


def test_imagenet_r_1000_way_labels_and_mask(tmp_path: Path) -> None:
    wnids = _imagenet_wnids()
    wnids_file = tmp_path / "LOC_synset_mapping.txt"
    wnids_file.write_text("".join(f"{w} some name, other name\n" for w in wnids))
    chosen = [IMAGENET_R_WNIDS[0], IMAGENET_R_WNIDS[57], IMAGENET_R_WNIDS[199]]
    root = tmp_path / "imagenet-r"
    for w in chosen:
        for k in range(2):
            _write_image(root / w / f"art_{k}.jpg")
    ds = ImageNetR(root, "val", wnids_file=wnids_file)
    assert ds.num_classes == 1000 and len(ds) == 6 and ds.r_wnids == chosen
    assert sorted(set(ds.targets)) == sorted(wnids.index(w) for w in chosen)
    assert all(ds.classes[t] == Path(p).parent.name for p, t in ds.samples)
    mask = ds.imagenet_r_class_mask()
    assert mask.dtype == torch.bool and mask.shape == (1000,) and int(mask.sum()) == 3
    assert torch.equal(mask, ds.class_mask) and all(mask[t] for t in ds.targets)
    full = imagenet_r_class_mask(wnids)  # the canonical 200 classes
    assert int(full.sum()) == 200 and bool(full[mask].all())
    assert bool(ImageNetR(root, "test", wnids_file=wnids_file, mask_classes=False).imagenet_r_class_mask().all())
    logits = torch.zeros(2, 1000)
    logits[:, 1] = 5.0  # the best logit lies outside the IN-R classes
    logits[0, ds.targets[0]] = 1.0
    assert restrict_logits(logits, mask).argmax(1)[0] == ds.targets[0]
    assert logits.argmax(1)[0] == 1
    # the same labels from an ImageNet folder tree (sorted train/<wnid> folders)
    for w in wnids:
        (tmp_path / "imagenet" / "train" / w).mkdir(parents=True)
    ds2 = ImageNetR(root, imagenet_root=tmp_path / "imagenet")
    assert ds2.samples == ds.samples
    x, y = build_dataset("imagenet_r", "val", root=str(root), input_size=16, train=False, wnids_file=str(wnids_file))[0]
    assert x.shape == (3, 16, 16) and y == ds.targets[0]


def test_imagenet_r_errors(tmp_path: Path) -> None:
    root = tmp_path / "imagenet-r"
    _write_image(root / IMAGENET_R_WNIDS[0] / "a.jpg")
    with pytest.raises(ValueError) as err:
        ImageNetR(root)
    _one_sentence(err, "imagenet_root=", "wnids_file=")
    short = tmp_path / "short.txt"
    short.write_text("\n".join(_imagenet_wnids()[:999]))
    with pytest.raises(ValueError) as err:
        ImageNetR(root, wnids_file=short)
    _one_sentence(err, "999 wnids")
    with pytest.raises(FileNotFoundError) as err:
        ImageNetR(tmp_path / "nowhere", wnids_file=short)
    _one_sentence(err, "<root>/<wnid>/")
    with pytest.raises(ValueError) as err:
        ImageNetR(root, "train", wnids_file=short)
    _one_sentence(err, "val, test")


def test_imagenet_v2_labels_are_folder_numbers(tmp_path: Path) -> None:
    root = tmp_path / "imagenetv2-matched-frequency-format-val"
    for c in (0, 5, 999):
        _write_image(root / str(c) / f"{c:04x}beef.jpeg")
    ds = ImageNetV2(root)
    assert ds.num_classes == 1000 and ds.targets == [0, 5, 999]
    assert all(int(Path(p).parent.name) == t for p, t in ds.samples)
    assert build_dataset("imagenet_v2", "test", root=str(root), input_size=8, train=False)[2][1] == 999
    (root / "n01440764").mkdir()
    with pytest.raises(ValueError) as err:
        ImageNetV2(root)
    _one_sentence(err, "n01440764", "0..999")
    with pytest.raises(FileNotFoundError) as err:
        ImageNetV2(tmp_path / "missing")
    _one_sentence(err, "<root>/<0..999>/*.jpeg")


# ------------------------------------------------------------------------------------------- iNat2019


def _inat_tree(root: Path, n_train: int = 42, n_val: int = 11, n_cat: int = 5) -> list[tuple[str, int]]:
    """train2019.json/val2019.json in the official format; returns all (file_name, category_id)."""
    rng = np.random.default_rng(0)
    cats = [{"id": c, "name": f"species {c}", "kingdom": "Plants", "supercategory": "Plants"} for c in range(n_cat)]
    everything = []
    next_id = 0
    for fname, n in (("train2019.json", n_train), ("val2019.json", n_val)):
        images, anns = [], []
        for _ in range(n):
            cid = int(rng.integers(n_cat))
            file_name = f"train_val2019/Plants/{cid}/{rng.bytes(8).hex()}.jpg"
            images.append({"id": next_id, "file_name": file_name, "width": 8, "height": 8})
            anns.append({"id": next_id, "image_id": next_id, "category_id": cid})
            everything.append((file_name, cid))
            next_id += 1
            _write_image(root / file_name, size=(8, 8))
        (root / fname).write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return everything


def test_inat2019_paper_split_is_seeded_80_20(tmp_path: Path) -> None:
    everything = _inat_tree(tmp_path)
    n = len(everything)  # 53 -> int(0.8 * 53) = 42 train, 11 test
    train = INaturalist2019(tmp_path, "train")
    test = INaturalist2019(tmp_path, "test")
    assert len(train) == 42 and len(test) == 11 and train.num_classes == 5
    assert INaturalist2019(tmp_path, "val").samples == test.samples  # val = test in paper mode
    tr_files = {p for p, _ in train.samples}
    te_files = {p for p, _ in test.samples}
    assert not tr_files & te_files and len(tr_files | te_files) == n
    # deterministic, and exactly torch.randperm(seed=1234) over torchvision's (category, file name) order
    assert INaturalist2019(tmp_path, "train").samples == train.samples
    order = sorted(everything, key=lambda e: (e[1], Path(e[0]).name))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1234))
    assert [p for p, _ in test.samples] == [str(tmp_path / order[i][0]) for i in perm[42:].tolist()]
    assert all(int(Path(p).parent.name) == t for p, t in train.samples)  # label = category id
    assert INaturalist2019(tmp_path, "train", seed=7).samples != train.samples
    # the paper's numbers: 268,243 train+val images -> 214,594 / 53,649
    tr, te = paper_split_indices(268_243)
    assert (len(tr), len(te)) == (214_594, 53_649)


def test_inat2019_official_split_and_errors(tmp_path: Path) -> None:
    _inat_tree(tmp_path, n_train=10, n_val=4)
    train = INaturalist2019(tmp_path, "train", split_mode="official")
    val = INaturalist2019(tmp_path, "val", split_mode="official")
    assert len(train) == 10 and len(val) == 4
    assert INaturalist2019(tmp_path, "test", split_mode="official").samples == val.samples
    x, y = build_dataset("inat2019", "train", root=str(tmp_path), input_size=8, train=True, split_mode="official")[0]
    assert x.shape == (3, 8, 8) and y == train.targets[0]
    with pytest.raises(ValueError) as err:
        INaturalist2019(tmp_path, "train", split_mode="released")
    _one_sentence(err, "paper, official")
    (tmp_path / "val2019.json").unlink()
    with pytest.raises(FileNotFoundError) as err:
        INaturalist2019(tmp_path, "train")
    _one_sentence(err, "val2019.json", "train_val2019/")


# ---------------------------------------------------------------------------------------- fine-grained


def test_aircraft_variant_level_official_files(tmp_path: Path) -> None:
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    variants = ["707-320", "Cessna 172", "F/A-18"]
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    splits = {
        "train": [("1000001", 0), ("1000002", 1)],
        "val": [("1000003", 2)],
        "test": [("1000004", 2), ("1000005", 1), ("1000006", 0)],
    }
    splits["trainval"] = splits["train"] + splits["val"]
    for s, rows in splits.items():
        (data / f"images_variant_{s}.txt").write_text("".join(f"{i} {variants[c]}\n" for i, c in rows))
        for i, _ in rows:
            _write_image(data / "images" / f"{i}.jpg")
    for root in (tmp_path, tmp_path / "fgvc-aircraft-2013b"):  # torchvision's parent folder or the folder itself
        test = FGVCAircraft(root, "test")
        assert test.classes == variants and test.targets == [2, 1, 0]
        assert [Path(p).stem for p, _ in test.samples] == ["1000004", "1000005", "1000006"]
    assert len(FGVCAircraft(tmp_path, "trainval")) == 3 and FGVCAircraft(tmp_path, "val").targets == [2]
    assert build_dataset("aircraft", "train", root=str(tmp_path), input_size=8, train=False)[1][1] == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        FGVCAircraft(tmp_path / "empty")
    _one_sentence(err, "data/variants.txt", "images_variant_")


def test_pets_trainval_test(tmp_path: Path) -> None:
    ann = tmp_path / "oxford-iiit-pet" / "annotations"
    ann.mkdir(parents=True)
    trainval = ["Abyssinian_1 1 1 1", "american_bulldog_10 2 2 1", "Abyssinian_2 1 1 1"]
    test = ["american_bulldog_3 2 2 1", "Bengal_7 3 1 2"]
    (ann / "trainval.txt").write_text("\n".join(trainval) + "\n")
    (ann / "test.txt").write_text("\n".join(test) + "\n")
    for line in trainval + test:
        _write_image(tmp_path / "oxford-iiit-pet" / "images" / f"{line.split()[0]}.jpg")
    tv, te = OxfordIIITPet(tmp_path, "trainval"), OxfordIIITPet(tmp_path, "test")
    assert tv.classes == ["Abyssinian", "american_bulldog", "Bengal"] == te.classes
    assert tv.targets == [0, 1, 0] and te.targets == [1, 2] and len(te) == 2
    with pytest.raises(ValueError) as err:
        OxfordIIITPet(tmp_path, "train")
    _one_sentence(err, "trainval, test")
    with pytest.raises(FileNotFoundError) as err:
        OxfordIIITPet(tmp_path / "oxford-iiit-pet" / "images")
    _one_sentence(err, "annotations/{trainval,test}.txt")


def test_food101_meta_files(tmp_path: Path) -> None:
    base = tmp_path / "food-101"
    (base / "meta").mkdir(parents=True)
    train = {"apple_pie": ["apple_pie/1005649"], "baby_back_ribs": ["baby_back_ribs/3"], "waffles": ["waffles/12"]}
    (base / "meta" / "train.json").write_text(json.dumps(train))
    test = {"apple_pie": [], "baby_back_ribs": [], "waffles": ["waffles/99"]}
    (base / "meta" / "test.json").write_text(json.dumps(test))
    for e in ("apple_pie/1005649", "waffles/12", "baby_back_ribs/3", "waffles/99"):
        _write_image(base / "images" / f"{e}.jpg")
    tr = Food101(tmp_path, "train")
    assert tr.num_classes == 3 and tr.targets == [0, 1, 2] and Food101(base, "test").targets == [2]
    assert tr.classes == ["apple_pie", "baby_back_ribs", "waffles"]
    renamed = tmp_path / "food"
    base.rename(renamed)
    with pytest.raises(FileNotFoundError) as err:
        Food101(renamed, "test")
    _one_sentence(err, "must be named 'food-101'")
    renamed.rename(base)
    (base / "images" / "apple_pie" / "1005649.jpg").unlink()
    with pytest.raises(FileNotFoundError) as err:
        Food101(base, "train")
    _one_sentence(err, "1005649.jpg", "images/<class>/<id>.jpg")


def test_flowers102_mat_files(tmp_path: Path) -> None:
    labels = np.array([[1, 2, 3, 1, 2, 3, 1, 2, 3, 3]], dtype=np.uint8)  # image k (1-based) has labels[k-1]
    savemat(tmp_path / "imagelabels.mat", {"labels": labels})
    savemat(
        tmp_path / "setid.mat",
        {"trnid": np.array([[1, 2, 3]]), "valid": np.array([[4, 5, 6]]), "tstid": np.array([[7, 8, 9, 10]])},
    )
    for k in range(1, 11):
        _write_image(tmp_path / "jpg" / f"image_{k:05d}.jpg")
    test = Flowers102(tmp_path, "test")
    assert test.num_classes == 3 and test.targets == [0, 1, 2, 2]
    assert [Path(p).name for p, _ in test.samples][0] == "image_00007.jpg"
    assert len(Flowers102(tmp_path, "train")) == 3 and Flowers102(tmp_path, "val").targets == [0, 1, 2]
    assert len(Flowers102(tmp_path, "trainval")) == 6
    x, y = build_dataset("flowers102", "test", root=str(tmp_path), input_size=8, train=True)[3]
    assert x.shape == (3, 8, 8) and y == 2
    (tmp_path / "setid.mat").unlink()
    with pytest.raises(FileNotFoundError) as err:
        Flowers102(tmp_path, "test")
    _one_sentence(err, "setid.mat")


def test_finegrained_missing_root_messages(tmp_path: Path) -> None:
    for cls, needle in (
        (FGVCAircraft, "fgvc-aircraft-2013b"),
        (OxfordIIITPet, "annotations/{trainval,test}.txt"),
        (Food101, "meta/{train,test}.json"),
        (Flowers102, "imagelabels.mat"),
    ):
        with pytest.raises(FileNotFoundError) as err:
            cls(tmp_path / "nope", "test")
        _one_sentence(err, needle, "data/README.md")
        with pytest.raises(ValueError) as err:
            cls(None, "test")
        _one_sentence(err, "root=", needle)


# ------------------------------------------------------------------------------------- dense transforms


def _block_pattern(h: int, w: int, block: int, seed: int = 0) -> np.ndarray:
    """A random 0/1 pattern of ``block x block`` squares, shape [h, w]."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 2, size=(-(-h // block), -(-w // block)))
    return np.kron(cells, np.ones((block, block), np.int64))[:h, :w]


def _pattern_image(pattern: np.ndarray) -> Image.Image:
    arr = np.zeros((*pattern.shape, 3), np.uint8)
    arr[..., 0] = pattern * 255
    arr[..., 1] = 90
    return Image.fromarray(arr)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_dense_transform_keeps_mask_and_depth_aligned_exactly(scale: float) -> None:
    pattern = _block_pattern(24, 40, 4)
    image = _pattern_image(pattern)
    outputs = set()
    for seed in range(12):
        torch.manual_seed(seed)
        img, mask = DenseTransform(24, "train", scale_range=(scale, scale))(image, pattern.astype(np.uint8))
        assert img.shape == (3, 24, 24) and mask.shape == (24, 24) and mask.dtype == torch.int64
        assert torch.equal(mask, (img[0] > 0.5).long())
        torch.manual_seed(seed)
        img_d, depth = DenseTransform(24, "train", scale_range=(scale, scale), pad_value=0.0)(
            image, 1.0 + 3.0 * pattern.astype(np.float32)
        )
        assert depth.dtype == torch.float32 and torch.equal(img_d, img)
        assert torch.equal(depth, 1.0 + 3.0 * (img[0] > 0.5).float())
        outputs.add(mask.numpy().tobytes())
    assert len(outputs) >= 4  # crops and flips really vary


def test_dense_transform_random_scale_and_padding() -> None:
    pattern = _block_pattern(30, 44, 8, seed=1)
    image = _pattern_image(pattern)
    for seed in range(10):
        torch.manual_seed(seed)
        img, mask = DenseTransform(32, "train", scale_range=(0.5, 2.0))(image, pattern.astype(np.uint8))
        assert img.shape == (3, 32, 32)
        valid = mask != 255
        agree = (mask[valid] == (img[0][valid] > 0.5).long()).float().mean()
        assert agree > 0.93, float(agree)
        assert set(mask.unique().tolist()) <= {0, 1, 255}  # NEAREST: no invented labels
        assert bool((img[:, ~valid] == 0).all())  # padding: image 0, mask 255
    img, mask = DenseTransform(16, "crop")(image, pattern.astype(np.uint8))
    assert img.shape == (3, 16, 16) and mask.shape == (16, 16)
    img, mask = DenseTransform(15, "full")(image, pattern.astype(np.uint8))
    assert img.shape == (3, 15, 22) and mask.shape == (15, 22)
    img, mask = DenseTransform(16, "resize")(image, pattern.astype(np.uint8))
    assert img.shape == (3, 16, 16)
    with pytest.raises(ValueError) as err:
        DenseTransform(16, "random")
    _one_sentence(err, "train, crop, full, resize")


# --------------------------------------------------------------------------------------------- ADE20K


def _ade_tree(root: Path) -> None:
    base = root / "ADEChallengeData2016"
    for split, prefix, n in (("training", "ADE_train", 3), ("validation", "ADE_val", 2)):
        for i in range(1, n + 1):
            pattern = _block_pattern(24, 32, 8, seed=i)
            for sub in ("images", "annotations"):
                (base / sub / split).mkdir(parents=True, exist_ok=True)
            _pattern_image(pattern).save(base / "images" / split / f"{prefix}_{i:08d}.jpg", quality=100)
            raw = (pattern * 150).astype(np.uint8)  # 0 = other, 150 = last class
            raw[0, :3] = 1
            Image.fromarray(raw).save(base / "annotations" / split / f"{prefix}_{i:08d}.png")


def test_ade_label_mapping() -> None:
    raw = np.array([[0, 1, 2], [75, 150, 151]], np.uint8)
    assert ade_labels(raw).tolist() == [[255, 0, 1], [74, 149, 255]]


def test_ade20k_official_layout_and_alignment(tmp_path: Path) -> None:
    _ade_tree(tmp_path)
    val = ADE20K(tmp_path, "val")
    assert len(val) == 2 and len(ADE20K(tmp_path / "ADEChallengeData2016", "train")) == 3
    assert ADE20K(tmp_path, "test").pairs == val.pairs
    image, mask = val.load(0)
    assert image.size == (32, 24) and mask.dtype == np.uint8
    pattern = _block_pattern(24, 32, 8, seed=1)
    expected = np.where(pattern == 1, 149, 255)
    expected[0, :3] = 0
    assert np.array_equal(mask, expected)  # png 0 -> 255, 150 -> 149, 1 -> 0
    train = build_dataset("ade20k", "train", root=str(tmp_path), input_size=16, train=True)
    for i in range(3):
        x, t = train[i]
        m = t["mask"]
        assert x.shape == (3, 16, 16) and m.shape == (16, 16) and m.dtype == torch.int64
        valid = (m != 255) & (m != 0)
        agree = ((m[valid] == 149) == (x[0][valid] > 0.5)).float().mean()
        assert agree > 0.9, float(agree)
    x, t = build_dataset("ade20k", "val", root=str(tmp_path), input_size=20, train=False, mode="full")[0]
    assert x.shape == (3, 20, 26) and t["mask"].shape == (20, 26)
    assert val.num_classes == 150 and val.ignore_index == 255


def test_ade20k_missing_messages(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        ADE20K(tmp_path, "val")
    _one_sentence(err, "ADEChallengeData2016/images/{training,validation}/*.jpg")
    _ade_tree(tmp_path)
    (tmp_path / "ADEChallengeData2016" / "annotations" / "validation" / "ADE_val_00000002.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        ADE20K(tmp_path, "val")
    _one_sentence(err, "ADE_val_00000002.png")


# --------------------------------------------------------------------------------------------- NYUd-v2

N_NYU, H_NYU, W_NYU = 6, 12, 16
TRAIN_NDXS, TEST_NDXS = [1, 3, 4], [2, 5, 6]  # 1-based, as in splits.mat


def _nyu_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Images [N, H, W, 3] uint8 (image i has red value 10 * (i + 1)) and depths [N, H, W] metres."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N_NYU, H_NYU, W_NYU, 3), dtype=np.uint8)
    images[..., 0] = (10 * (np.arange(N_NYU) + 1))[:, None, None]
    depths = rng.uniform(0.5, 9.5, size=(N_NYU, H_NYU, W_NYU)).astype(np.float32)
    depths[:, 0, 0] = 0.0  # an invalid pixel
    return images, depths


def _nyu_mat_tree(root: Path) -> tuple[np.ndarray, np.ndarray]:
    h5py = pytest.importorskip("h5py")
    images, depths = _nyu_arrays()
    root.mkdir(parents=True, exist_ok=True)
    # MATLAB v7.3 = HDF5 with a 512-byte user block; MATLAB's column-major arrays appear with reversed axes.
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w", userblock_size=512) as f:
        f["images"] = images.transpose(0, 3, 2, 1)  # [N, 3, W, H]
        f["depths"] = depths.transpose(0, 2, 1)  # [N, W, H]
        f["rawDepths"] = np.zeros_like(depths.transpose(0, 2, 1))
    savemat(
        root / "splits.mat",
        {"trainNdxs": np.array(TRAIN_NDXS, float)[:, None], "testNdxs": np.array(TEST_NDXS, float)[:, None]},
    )
    return images, depths


def test_nyud_official_mat_split_indices_and_orientation(tmp_path: Path) -> None:
    images, depths = _nyu_mat_tree(tmp_path)
    test = NYUDepthV2(tmp_path, "test")
    train = NYUDepthV2(tmp_path, "train")
    assert test.source == "mat" and test.indices == [i - 1 for i in TEST_NDXS] and len(test) == 3
    assert train.indices == [i - 1 for i in TRAIN_NDXS] and NYUDepthV2(tmp_path, "val").indices == test.indices
    for k, idx in enumerate(TEST_NDXS):
        image, depth = test.load(k)
        assert image.size == (W_NYU, H_NYU) and depth.shape == (H_NYU, W_NYU)
        assert np.array_equal(np.asarray(image), images[idx - 1])  # the test split really reads testNdxs
        assert np.array_equal(depth, depths[idx - 1])
    assert float(NYUDepthV2(tmp_path, "test", raw_depth=True).load(0)[1].max()) == 0.0
    x, t = build_dataset("nyud", "test", root=str(tmp_path), input_size=8, train=False)[1]
    assert x.shape == (3, 8, 8) and t["depth"].shape == (8, 8) and t["depth"].dtype == torch.float32
    assert abs(float(x[0].mean()) - 50 / 255) < 1e-3  # image 5 (red 50) is the second test image
    (tmp_path / "splits.mat").unlink()
    with pytest.raises(FileNotFoundError) as err:
        NYUDepthV2(tmp_path, "test")
    _one_sentence(err, "splits.mat", "trainNdxs")


def test_nyud_png_layout_matches_mat(tmp_path: Path) -> None:
    images, depths = _nyu_mat_tree(tmp_path / "mat")
    assert export_png_layout(tmp_path / "mat", tmp_path / "png") == {"train": 3, "test": 3}
    names = sorted(p.name for p in (tmp_path / "png" / "test" / "depth").iterdir())
    assert names == ["00002.png", "00005.png", "00006.png"]
    png = NYUDepthV2(tmp_path / "png", "test")
    assert png.source == "png" and png.indices == [i - 1 for i in TEST_NDXS]
    for k, idx in enumerate(TEST_NDXS):
        image, depth = png.load(k)
        assert np.array_equal(np.asarray(image), images[idx - 1])
        assert np.abs(depth - depths[idx - 1]).max() <= 0.0005 + 1e-6 and depth[0, 0] == 0.0
    with Image.open(tmp_path / "png" / "test" / "depth" / "00002.png") as im:
        assert np.array(im).dtype == np.uint16  # 16-bit PNG in millimetres
    torch.manual_seed(0)
    x, t = build_dataset("nyud", "train", root=str(tmp_path / "png"), input_size=8, train=True)[0]
    assert x.shape == (3, 8, 8) and t["depth"].shape == (8, 8)
    d = t["depth"][t["depth"] > 0]
    assert set(np.round(d.numpy(), 3).tolist()) <= set(np.round(depths[TRAIN_NDXS[0] - 1], 3).ravel().tolist())


def test_nyud_missing_messages(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        NYUDepthV2(tmp_path, "test")
    _one_sentence(err, "nyu_depth_v2_labeled.mat", "splits.mat", "{train,test}/{rgb,depth}/NNNNN.png")
    (tmp_path / "test" / "rgb").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        NYUDepthV2(tmp_path, "test")
    _one_sentence(err, "depth")
    _write_image(tmp_path / "test" / "rgb" / "00001.png")
    (tmp_path / "test" / "depth").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        NYUDepthV2(tmp_path, "test")
    _one_sentence(err, "depth/NNNNN.png")
