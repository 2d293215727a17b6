"""The dataset readers against ``torchvision.datasets`` on the official file formats (tiny fixture trees).

FGVC-Aircraft and Food-101 are parsed by torchvision itself; these tests prove the samples and labels are the ones
the official text files define (what the hand-written parsers gave). Oxford-IIIT Pet, Flowers-102, the iNat2019
paper split and Fashion-MNIST stay hand-written (docs/handwritten.md says why); here they give exactly the samples,
labels and pixels torchvision gives when the same files sit in torchvision's own folder names.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from scipy.io import savemat

from mdistiller.dataset.fashion_mnist import DEFAULT_ROOT, FILES, FashionMNIST, write_idx
from mdistiller.dataset.finegrained import FGVCAircraft, Flowers102, Food101, OxfordIIITPet
from mdistiller.dataset.inat2019 import INaturalist2019
from tests.test_eval_datasets import _inat_tree, _one_sentence, _write_image


def _paths(samples: list[tuple[str, int]]) -> list[str]:
    return [os.path.realpath(p) for p, _ in samples]


def test_aircraft_is_torchvisions_parse_of_the_official_files(tmp_path: Path) -> None:
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    variants = ["707-320", "A340-500", "Cessna 172", "F/A-18"]  # names with spaces and slashes, as in the archive
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    rows = {"train": [("0034309", 3), ("1000002", 2)], "val": [("2222", 0)], "test": [("7", 1), ("0056978", 2)]}
    rows["trainval"] = rows["train"] + rows["val"]
    for split, entries in rows.items():
        (data / f"images_variant_{split}.txt").write_text("".join(f"{i} {variants[c]}\n" for i, c in entries))
        for i, _ in entries:
            _write_image(data / "images" / f"{i}.jpg")
    for split, entries in rows.items():
        ds = FGVCAircraft(tmp_path, split)
        # what the official files define: label = line of variants.txt, image = data/images/<id>.jpg, file order
        assert ds.samples == [(str(data / "images" / f"{i}.jpg"), c) for i, c in entries], split
        assert ds.classes == variants and ds.targets == [c for _, c in entries]
    (data / "images_variant_test.txt").write_text("7 Boeing 999\n")
    with pytest.raises(ValueError) as err:
        FGVCAircraft(tmp_path, "test")
    _one_sentence(err, "'Boeing 999'", "variants.txt")
    (data / "images_variant_val.txt").unlink()
    with pytest.raises(FileNotFoundError) as err:
        FGVCAircraft(tmp_path, "val")
    _one_sentence(err, "images_variant_val.txt")


def test_food101_json_gives_what_the_text_files_give(tmp_path: Path) -> None:
    """The official archive has meta/{classes,train,test}.txt and the same lists as .json; torchvision reads the
    json. Label = line of classes.txt and the order of train.txt, as the text-file parser gave."""
    base = tmp_path / "food-101"
    (base / "meta").mkdir(parents=True)
    classes = ["apple_pie", "baby_back_ribs", "beef_carpaccio", "waffles"]
    rng = np.random.default_rng(0)
    lists = {s: {c: [f"{c}/{int(i)}" for i in sorted(rng.choice(10**6, 3, replace=False))] for c in classes}
             for s in ("train", "test")}
    (base / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    for split, per_class in lists.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(per_class))
        lines = [e for c in classes for e in per_class[c]]
        (base / "meta" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        for e in lines:
            _write_image(base / "images" / f"{e}.jpg")
    for split in ("train", "test"):
        ds = Food101(base, split)
        text = (base / "meta" / f"{split}.txt").read_text().split()
        assert ds.samples == [(str(base / "images" / f"{e}.jpg"), classes.index(e.split("/")[0])) for e in text]
        assert ds.classes == (base / "meta" / "classes.txt").read_text().split()


def test_pets_equals_torchvision(tmp_path: Path) -> None:
    base = tmp_path / "oxford-iiit-pet"  # torchvision's own folder name; our reader accepts it or its contents
    (base / "annotations").mkdir(parents=True)
    lines = {"trainval": ["Abyssinian_100 1 1 1", "american_bulldog_10 2 2 1", "Bengal_8 3 1 2"],
             "test": ["Bengal_7 3 1 2", "Abyssinian_2 1 1 1", "american_bulldog_1 2 2 1"]}  # every class in both
    for split, rows in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
        for row in rows:
            _write_image(base / "images" / f"{row.split()[0]}.jpg")
    for split in lines:
        ours, ref = OxfordIIITPet(tmp_path, split), tvd.OxfordIIITPet(str(tmp_path), split=split)
        assert _paths(ours.samples) == [os.path.realpath(p) for p in ref._images]
        assert ours.targets == ref._labels
        # torchvision title-cases the names ("American Bulldog"); the labels they index are the same
        assert [" ".join(w.title() for w in ours.classes[t].split("_")) for t in ours.targets] == [
            ref.classes[t] for t in ref._labels]


def test_flowers102_equals_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "flowers-102"
    base.mkdir()
    rng = np.random.default_rng(1)
    labels = rng.integers(1, 103, size=(1, 30)).astype(np.uint8)
    ids = rng.permutation(np.arange(1, 31))
    savemat(base / "imagelabels.mat", {"labels": labels})
    savemat(base / "setid.mat", {"trnid": ids[None, :8], "valid": ids[None, 8:16], "tstid": ids[None, 16:]})
    for k in range(1, 31):
        _write_image(base / "jpg" / f"image_{k:05d}.jpg")
    # torchvision checks the .mat files' MD5 against the official ones; these are fixtures
    monkeypatch.setattr(tvd.Flowers102, "_check_integrity", lambda self: True)
    for split in ("train", "val", "test"):
        ours, ref = Flowers102(base, split), tvd.Flowers102(str(tmp_path), split=split)
        assert _paths(ours.samples) == [os.path.realpath(p) for p in ref._image_files], split
        assert ours.targets == [int(t) for t in ref._labels], split
    trainval = Flowers102(base, "trainval")  # torchvision has no trainval: it is train then val
    assert trainval.samples == Flowers102(base, "train").samples + Flowers102(base, "val").samples


def test_inat2019_paper_order_is_torchvisions_index(tmp_path: Path) -> None:
    """The paper split permutes torchvision's INaturalist(version="2019") index; ours is that index with the file
    names sorted inside each category (torchvision keeps os.listdir's file-system order)."""
    everything = _inat_tree(tmp_path, n_train=40, n_val=12, n_cat=4)
    assert {c for _, c in everything} == set(range(4))  # torchvision needs every category id present
    (tmp_path / "2019").symlink_to(tmp_path / "train_val2019", target_is_directory=True)
    ref = tvd.INaturalist(str(tmp_path), version="2019")
    ref_order = sorted(ref.index, key=lambda e: (e[0], e[1]))  # stable within category once names are sorted
    ours = INaturalist2019(tmp_path, "train")
    test = INaturalist2019(tmp_path, "test")
    n = len(ref_order)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1234))
    n_train = int(0.8 * n)
    expect = [ref_order[i] for i in perm.tolist()]
    got = [(t, Path(p).name) for p, t in ours.samples + test.samples]
    assert got == expect and len(ours) == n_train
    ref_paths = [os.path.realpath(os.path.join(ref.root, ref.all_categories[c], f)) for c, f in expect]
    assert _paths(ours.samples + test.samples) == ref_paths


def _fashion_tree(root: Path, n: int = 37, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        write_idx(root / f"{FILES[split][0]}{suffix}", images)
        write_idx(root / f"{FILES[split][1]}{suffix}", labels)
    return images, labels


def _torchvision_fashion(files: Path, tmp: Path, train: bool) -> tvd.FashionMNIST:
    """torchvision's FashionMNIST over the same idx files, decompressed into its own ``FashionMNIST/raw/``."""
    raw = tmp / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem in (*FILES["train"], *FILES["test"]):  # torchvision wants all four files present
        if (raw / stem).is_file():
            continue
        src = files / f"{stem}.gz"
        with (gzip.open(src) if src.is_file() else open(files / stem, "rb")) as f, open(raw / stem, "wb") as out:
            shutil.copyfileobj(f, out)
    return tvd.FashionMNIST(str(tmp / "tv"), train=train)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_reader_equals_torchvision(tmp_path: Path, gz: bool) -> None:
    images, labels = _fashion_tree(tmp_path / "files", gz=gz)
    for split, train in (("train", True), ("test", False)):
        ours = FashionMNIST(tmp_path / "files", split)
        ref = _torchvision_fashion(tmp_path / "files", tmp_path, train)
        assert torch.equal(ours.images, ref.data) and ours.targets == ref.targets.tolist()
        assert ours.classes == tuple(ref.classes)
        x, y = ours[5]
        assert torch.equal(x, ref.data[5].float().div(255).expand(3, -1, -1)) and y == int(ref.targets[5])
    assert torch.equal(FashionMNIST(tmp_path / "files", "train", limit=7).images, torch.from_numpy(images[:7]))


@pytest.mark.skipif(not Path(DEFAULT_ROOT, FILES["test"][0] + ".gz").is_file(),
                    reason="the real Fashion-MNIST files are absent (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_real_test_split_equals_torchvision(tmp_path: Path) -> None:
    ours = FashionMNIST(split="test")
    ref = _torchvision_fashion(Path(DEFAULT_ROOT), tmp_path, train=False)
    assert len(ours) == 10_000 and torch.equal(ours.images, ref.data) and ours.targets == ref.targets.tolist()


def test_renamed_torchvision_internals_stop_with_one_sentence() -> None:
    from types import SimpleNamespace

    from mdistiller.dataset.finegrained import torchvision_samples

    assert torchvision_samples(SimpleNamespace(_f=[Path("a.jpg")], _l=[np.int64(3)]), "_f", "_l", "X") == [("a.jpg", 3)]
    with pytest.raises(RuntimeError) as err:
        torchvision_samples(SimpleNamespace(files=[]), "_image_files", "_labels", "FGVC-Aircraft")
    _one_sentence(err, "_image_files", "constraints.txt")
