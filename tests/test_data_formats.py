"""``DATASET.FORMAT`` wds / hfds / images: the same images as the class folders, training and exact resume on each
format, the stream's layout, resume and memory bound, the shard index cache, and one-sentence errors (CPU, tiny)."""

from __future__ import annotations

import io
import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mdistiller.config import ConfigError, validate_config
from mdistiller.dataset import build_dataset
from mdistiller.dataset.bad_images import BadImageError, guard_images
from mdistiller.dataset.writers import write_hfds, write_wds
from mdistiller.engine.data import build_train_loader
from mdistiller.engine.distributed import DistEnv
from mdistiller.engine.trainer import Trainer
from tests.conftest import tiny_config

pytest.importorskip("webdataset")
pytest.importorskip("datasets")

SIZE = 32
CLASSES = ("n01", "n02")


def _image(seed: int, w: int = 40, h: int = 36) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 5, yy * 6, (xx + yy) * 3], -1) + rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """The same 24 training + 8 validation images as class folders, wds shards (6 per shard), a saved
    DatasetDict, and a nested tree of 20 unlabelled images."""
    base = tmp_path_factory.mktemp("formats")
    folder = base / "folder"
    for split, n in (("train", 12), ("val", 4)):
        for c, cls in enumerate(CLASSES):
            d = folder / split / cls
            d.mkdir(parents=True)
            for k in range(n):
                ext = ".png" if k % 4 == 0 else ".jpg"
                _image(100 * c + k + (1000 if split == "val" else 0)).save(d / f"{cls}_{k}{ext}")
    train = build_dataset("imagenet", "train", root=str(folder), input_size=SIZE, train=False)
    val = build_dataset("imagenet", "val", root=str(folder), input_size=SIZE, train=False)
    write_wds(train.samples, base / "wds", "train", shard_size=6, classes=train.classes)
    write_wds(val.samples, base / "wds", "val", shard_size=6)
    write_hfds({"train": train.samples, "validation": val.samples}, base / "hfds", train.classes)
    tree = base / "tree"
    for i in range(20):  # nested, mixed extensions, plus files that are not images and a hidden one
        sub = tree / ("a/b" if i % 3 == 0 else "c" if i % 3 == 1 else "")
        sub.mkdir(parents=True, exist_ok=True)
        _image(500 + i, 44, 40).save(sub / f"frame{i}.{'png' if i % 2 else 'JPEG'}")
    (tree / "c" / "notes.txt").write_text("not an image")
    _image(0).save(tree / ".hidden.jpg")
    return {"folder": folder, "wds": base / "wds", "hfds": base / "hfds", "images": tree}


def cpu_env() -> DistEnv:
    return DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None, is_main=True)


# ---------------------------------------------------------------------------------------------- same images


def test_wds_and_hfds_hold_the_folder_images_and_labels(data) -> None:
    folder = build_dataset("imagenet", "train", root=str(data["folder"]), input_size=SIZE, train=False)
    by_stem = {Path(p).stem: (i, label) for i, (p, label) in enumerate(folder.samples)}
    wds = build_dataset("imagenet", "train", root=str(data["wds"]), input_size=SIZE, train=False, format="wds")
    assert len(wds) == len(folder) == 24 and wds.classes == folder.classes and wds.num_classes == 2
    assert len(wds.index.shards) == 4 and wds.index.counts.tolist() == [6, 6, 6, 6]
    seen = set()
    for j in range(len(wds)):
        stem = wds.index.key[j].decode().split("_", 1)[1]  # keys are <n>_<file stem>
        i, label = by_stem[stem]
        seen.add(i)
        x, y = wds[j]
        assert y == label and torch.equal(x, folder[i][0])  # byte-identical files, the same eval transform
    assert len(seen) == 24  # shuffled into shards: every image once
    hf = build_dataset("imagenet", "train", root=str(data["hfds"]), input_size=SIZE, train=False, format="hfds")
    assert len(hf) == 24 and hf.classes == list(CLASSES) and hf.targets.tolist() == folder.targets
    for i in (0, 5, 23):
        assert torch.equal(hf[i][0], folder[i][0]) and hf[i][1] == folder[i][1]
    for fmt in ("wds", "hfds"):  # the held-out split: val-*.tar and the DatasetDict's "validation"
        val = build_dataset("imagenet", "val", root=str(data[fmt]), input_size=SIZE, train=False, format=fmt)
        assert len(val) == 8 and sorted(int(val[i][1]) for i in range(8)) == [0] * 4 + [1] * 4


def test_images_format_reads_a_nested_unlabelled_tree(data) -> None:
    tree = build_dataset("imagenet", "train", root=str(data["images"]), input_size=SIZE, train=True, format="images")
    names = [Path(p).relative_to(data["images"]).as_posix() for p, _ in tree.samples]
    assert len(tree) == 20 and ".hidden.jpg" not in names and not any(n.endswith(".txt") for n in names)
    assert {n.rsplit("/", 1)[0] for n in names if "/" in n} == {"a/b", "c"} and sum("/" not in n for n in names) == 6
    assert names.index("frame2.JPEG") < names.index("frame11.png")  # natural order (timm's reader)
    x, y = tree[3]
    assert x.shape == (3, SIZE, SIZE) and y == -1 and tree.num_classes == 0
    with pytest.raises(FileNotFoundError, match="no train/ and val/ folders.*no val split"):
        build_dataset("imagenet", "val", root=str(data["images"]), input_size=SIZE, train=False, format="images")
    # a tree with train/ (and val/) uses them as the splits; the class folders' labels are not used
    split = build_dataset("imagenet", "val", root=str(data["folder"]), input_size=SIZE, train=False, format="images")
    assert len(split) == 8 and {y for _, y in split.samples} == {-1}


def test_wds_index_agrees_with_webdataset_and_is_cached(data, tmp_path, monkeypatch) -> None:
    import shutil

    import webdataset as wds

    from mdistiller.dataset import wds_index

    root = tmp_path / "shards"
    shutil.copytree(data["wds"], root, ignore=shutil.ignore_patterns(".mdistiller-index"))
    index = wds_index.load_index(root, "train")
    shards = [{"url": str(root / n)} for n in index.shards]
    streamed = list(wds.tarfile_to_samples()(iter(shards)))
    assert [s["__key__"].encode() for s in streamed] == index.key.tolist()
    ds = build_dataset("imagenet", "train", root=str(root), input_size=SIZE, train=False, format="wds")
    for j, s in enumerate(streamed):
        image = s.get("jpg", s.get("png"))
        assert ds.read(j) == image and int(s["cls"]) == int(index.label[j])
    assert (root / ".mdistiller-index" / "train.npz").is_file()

    def no_rebuild(path):
        raise AssertionError(f"index rebuilt for {path}")

    monkeypatch.setattr(wds_index, "index_shard", no_rebuild)
    assert len(wds_index.load_index(root, "train")) == 24  # the cache is read, nothing re-indexed
    monkeypatch.undo()
    with open(root / index.shards[-1], "ab") as f:  # a shard that changed (size, mtime) is indexed again
        f.write(b"\0" * 1024)
    rebuilt = []
    real = wds_index.index_shard
    monkeypatch.setattr(wds_index, "index_shard", lambda p: rebuilt.append(p) or real(p))
    assert len(wds_index.load_index(root, "train")) == 24 and len(rebuilt) == 4
    if os.geteuid() != 0:  # a read-only shard folder: the index goes to the user's cache instead
        ro = tmp_path / "ro"
        shutil.copytree(data["wds"], ro, ignore=shutil.ignore_patterns(".mdistiller-index"))
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        ro.chmod(0o555)
        try:
            assert len(wds_index.load_index(ro, "train")) == 24
        finally:
            ro.chmod(0o755)
        assert list((tmp_path / "cache" / "mdistiller" / "wds-index").glob("*/train.npz"))


def test_ranks_starting_together_index_the_shards_once(data, tmp_path, monkeypatch) -> None:
    import multiprocessing
    import shutil
    import time

    from mdistiller.dataset import wds_index

    root = tmp_path / "shards"
    shutil.copytree(data["wds"], root, ignore=shutil.ignore_patterns(".mdistiller-index"))
    log = tmp_path / "builds.txt"
    real = wds_index._build

    def slow_build(*args):
        with open(log, "a") as f:
            f.write("build\n")
        time.sleep(0.5)  # long enough for the other processes to find no cache and wait for the lock
        return real(*args)

    monkeypatch.setattr(wds_index, "_build", slow_build)
    ctx = multiprocessing.get_context("fork")  # the children inherit the patched module
    procs = [ctx.Process(target=wds_index.load_index, args=(root, "train")) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert log.read_text().count("build") == 1


# ------------------------------------------------------------------------------------ training and resume


def _cfg(fmt: str, root: Path, **overrides):
    cfg = tiny_config("SiNGER", size=SIZE, **{
        "DATASET.TYPE": "imagenet", "DATASET.ROOT": str(root), "DATASET.FORMAT": fmt, "DATASET.NUM_WORKERS": 0,
        "SOLVER.BATCH_SIZE": 4, "SOLVER.MAX_STEPS": 4, "SOLVER.AMP": "none", "LOG.PROGRESS": False, "LOG.FREQ": 1,
        "LOG.CKPT_EVERY_STEPS": 1, **overrides})
    validate_config(cfg)
    return cfg


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


STREAM = {"DATASET.WDS_MODE": "stream", "DATASET.SHUFFLE_BUFFER": 5}


@pytest.mark.parametrize("fmt,extra", [("wds", {}), ("wds", STREAM), ("hfds", {}), ("images", {})],
                         ids=["wds", "wds-stream", "hfds", "images"])
def test_each_format_trains_and_resumes_exactly(data, tmp_path, fmt, extra) -> None:
    root = data[fmt]
    full = Trainer(_cfg(fmt, root, **extra), cpu_env(), tmp_path / "full")
    full.fit()
    part = Trainer(_cfg(fmt, root, **extra), cpu_env(), tmp_path / "part")
    part.total_steps = 2  # stopped after step 2 (the schedule keeps its full length)
    part.fit()
    resumed = Trainer(_cfg(fmt, root, **extra), cpu_env(), tmp_path / "part")
    resumed.fit(resume=tmp_path / "part/checkpoints/last.pth")
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "part")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert a == b  # the same machine, the same batches: identical to the last bit
    assert (tmp_path / "full/student.safetensors").is_file()
    agree = [json.loads(line) for line in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    held_out = any(k.startswith("agree/") for r in agree for k in r)
    assert held_out == (fmt != "images")  # the unlabelled tree has no val/ here: the agreement check is skipped


def _stream_loader(root: Path, workers: int, batch: int = 2, buffer: int = 5, world_size: int = 1, rank: int = 0):
    ds = build_dataset("imagenet", "train", root=str(root), input_size=16, train=True, format="wds",
                       wds_mode="stream", shuffle_buffer=buffer)
    return build_train_loader(guard_images(ds, skip=False), world_size=world_size, rank=rank, batch_size=batch,
                              seed=3, num_workers=workers, pin_memory=False, persistent_workers=workers > 0,
                              prefetch_factor=2)


def _epoch(loader, position, epoch: int, start_step: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    position.set_epoch(epoch, start=start_step * position.batch_size)
    return list(loader)


def test_stream_resume_with_workers_gives_the_uninterrupted_batches(data) -> None:
    loader, position = _stream_loader(data["wds"], workers=2)
    assert position.steps_per_epoch == 12  # 24 samples, 2 streams x 6 batches of 2
    full = _epoch(loader, position, 1)
    assert len(full) == 12
    for k in (1, 3, 4):  # an odd step too: the workers take each other's stream role
        rest = _epoch(loader, position, 1, k)
        assert len(rest) == 12 - k
        for (xa, ya), (xb, yb) in zip(full[k:], rest, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    again = _epoch(loader, position, 1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, again, strict=True))  # a pure function of the epoch
    assert not torch.equal(_epoch(loader, position, 2)[0][0], full[0][0])  # another epoch, another order


def test_stream_epoch_layout_reads_each_sample_once(data) -> None:
    from mdistiller.dataset.wds import WdsStream

    ds = WdsStream(data["wds"], "train", shuffle_buffer=4)
    ds.configure(world_size=2, rank=0, batch_size=3, seed=0, num_workers=1)  # 2 streams, shards 0,2 / 1,3
    assert ds.steps_per_epoch == 4  # 24 // (2 streams x 3) batches per stream
    keys = []
    for stream in (0, 1):
        shards = ds.shards_of(5, stream)
        assert len(shards) == 2
        raw = ds.raw_samples(5, stream)
        keys += [next(raw)["__key__"] for _ in range(12)]
    assert len(set(keys)) == 24  # both ranks together: every sample exactly once in the epoch
    assert sorted(ds.shards_of(5, 0) + ds.shards_of(5, 1)) == ds.paths
    with pytest.raises(ValueError, match=r"8 streams.*has 4 train shard\(s\).*DATASET.WDS_MODE index"):
        ds.configure(world_size=2, rank=0, batch_size=1, seed=0, num_workers=4)
    with pytest.raises(ValueError, match="fewer than one batch of 16.*lower SOLVER.BATCH_SIZE"):
        ds.configure(world_size=1, rank=0, batch_size=16, seed=0, num_workers=2)


def test_stream_memory_is_bounded_by_the_shuffle_buffer(tmp_path) -> None:
    """Python-held bytes while streaming (tracemalloc peak) and open files: the same with 4 and 24 shards, and far
    below the data, while a larger buffer raises the peak."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(96):  # ~12 KiB noise PNGs: the buffer's bytes dominate what the stream holds
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        samples.append((str(path), i % 2))
    total = sum(os.path.getsize(p) for p, _ in samples)
    write_wds(samples[:16], tmp_path / "few", "train", shard_size=4)  # 4 shards
    write_wds(samples, tmp_path / "many", "train", shard_size=4)  # 24 shards, 6x the data

    def peak(root: Path, buffer: int) -> tuple[int, int]:
        from mdistiller.dataset.wds import WdsStream

        ds = WdsStream(root, "train", shuffle_buffer=buffer)
        ds.configure(world_size=1, rank=0, batch_size=1, seed=0, num_workers=0)
        raw = ds.raw_samples(0, 0)
        next(raw)  # imports and first opens happen once, outside the measurement
        tracemalloc.start()
        files = 0
        try:
            for _ in range(int(ds.counts.sum()) - 1):
                next(raw)
                files = max(files, len(os.listdir("/proc/self/fd")))
            return tracemalloc.get_traced_memory()[1], files
        finally:
            tracemalloc.stop()
            raw.close()

    (few, few_files), (many, many_files) = peak(tmp_path / "few", 4), peak(tmp_path / "many", 4)
    big, _ = peak(tmp_path / "many", 32)
    assert many < 1.3 * few + 16 * 1024, (few, many)  # 6x the shards and data, not 6x the memory
    assert many_files <= few_files + 1, (few_files, many_files)  # one shard open at a time
    assert many < total / 5, (many, total)
    assert big > 2 * many, (big, many)  # the buffer is what holds memory


# -------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("opts,message", [
    ({"DATASET.FORMAT": "wdss"}, r"unknown DATASET.FORMAT 'wdss'; did you mean 'wds'\?"),
    ({"DATASET.FORMAT": "wds", "DATASET.TYPE": "toy_scenes"}, r"DATASET.FORMAT wds stores ImageNet-style data.*"
                                                              "DATASET.TYPE imagenet"),
    ({"DATASET.FORMAT": "images", "DISTILLER.TYPE": "Supervised"}, r"Supervised trains on labels.*FORMAT images"),
    ({"DATASET.FORMAT": "hfds", "DATASET.DECODE": "device"}, r"DATASET.DECODE device reads image files.*DECODE cpu"),
    ({"DATASET.WDS_MODE": "streaming"}, r"DATASET.WDS_MODE is 'streaming' but must be one of: index, stream"),
    ({"DATASET.SHUFFLE_BUFFER": -1}, r"DATASET.SHUFFLE_BUFFER is -1"),
])
def test_bad_format_config_is_one_sentence(opts, message) -> None:
    cfg = tiny_config("SiNGER", size=SIZE, **opts)
    with pytest.raises(ConfigError, match=message) as e:
        validate_config(cfg)
    assert "\n" not in str(e.value)


def test_bad_data_is_one_sentence_naming_the_root(data, tmp_path) -> None:
    import datasets

    def build(fmt: str, root: Path, split: str = "train"):
        return build_dataset("imagenet", split, root=str(root), input_size=SIZE, train=True, format=fmt)

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"DATASET.ROOT '.*empty' has no train-\*.tar shards.*WebDataset"):
        build("wds", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"DATASET.ROOT '.*empty' has no val-\*.tar shards"):
        build("wds", tmp_path / "empty", "val")
    with pytest.raises(ValueError, match=r"DATASET.ROOT '.*empty' \(DATASET.FORMAT images\) holds no images"):
        build("images", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"DATASET.ROOT '.*empty' holds no dataset saved by datasets"):
        build("hfds", tmp_path / "empty")
    renamed = datasets.load_from_disk(str(data["hfds"]))["train"].rename_column("label", "fine_label")
    renamed.save_to_disk(str(tmp_path / "renamed"))
    with pytest.raises(ValueError, match=r"columns \['image', 'fine_label'\], not 'label'; rename them"):
        build("hfds", tmp_path / "renamed")
    with pytest.raises(FileNotFoundError, match="single saved Dataset.*no val split"):
        build("hfds", tmp_path / "renamed", "val")


def test_cli_reports_a_shardless_wds_root_in_one_line(tmp_path, capsys) -> None:
    from mdistiller.engine.launch import main

    (tmp_path / "none").mkdir()
    yaml = tmp_path / "c.yaml"
    yaml.write_text(tiny_config("FitNet", size=SIZE).dump())
    code = main(["--cfg", str(yaml), "--run-dir", str(tmp_path / "run"), "--device", "cpu", "DATASET.FORMAT", "wds",
                 "DATASET.ROOT", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: DATASET.ROOT") and "train-*.tar" in err[0]


def _shard_with_a_bad_image(root: Path) -> None:
    import webdataset as wds

    root.mkdir()
    with wds.TarWriter(str(root / "train-000000.tar")) as sink:
        for i in range(8):
            buf = io.BytesIO()
            _image(i).save(buf, "JPEG")
            data = b"this is not a jpeg" if i == 5 else buf.getvalue()
            sink.write({"__key__": f"s{i}", "jpg": data, "cls": i % 2})


def test_undecodable_shard_members_are_named_or_skipped(tmp_path) -> None:
    _shard_with_a_bad_image(tmp_path / "bad")
    for mode in ("index", "stream"):
        kw = {"wds_mode": "stream", "shuffle_buffer": 0} if mode == "stream" else {}
        ds = build_dataset("imagenet", "train", root=str(tmp_path / "bad"), input_size=16, train=True, format="wds",
                           **kw)
        loader, position = build_train_loader(guard_images(ds, skip=False), world_size=1, rank=0, batch_size=2,
                                              seed=0, num_workers=0, pin_memory=False, persistent_workers=False,
                                              prefetch_factor=2)
        position.set_epoch(0)
        with pytest.raises(BadImageError, match=r"training image '.*train-000000.tar' sample 's5' cannot be decoded.*"
                                                "DATASET.SKIP_BAD_IMAGES True"):
            list(loader)
        ds = build_dataset("imagenet", "train", root=str(tmp_path / "bad"), input_size=16, train=True, format="wds",
                           **kw)
        guarded = guard_images(ds, skip=True)
        loader, position = build_train_loader(guarded, world_size=1, rank=0, batch_size=2, seed=0, num_workers=0,
                                              pin_memory=False, persistent_workers=False, prefetch_factor=2)
        position.set_epoch(0)
        with pytest.warns(UserWarning, match="skipped undecodable training image .*'s5'"):
            batches = list(loader)
        assert len(batches) == 4 and guarded.skipped.value == 1, mode


# ------------------------------------------------------------------------------------------ probes and bench


def test_imagenet_probe_reads_each_labelled_format(data, tmp_path, capsys) -> None:
    from mdistiller.distillers import build_distiller
    from mdistiller.eval.cli import main as lineval_main
    from tests.conftest import TINY_STUDENT

    run = tmp_path / "run"
    run.mkdir()
    build_distiller(tiny_config("FitNet", SIZE)).export_student(run / "student.safetensors", "vit_tiny",
                                                                dict(TINY_STUDENT) | {"img_size": SIZE})
    small = ["--input-size", str(SIZE), "--epochs", "2", "--batch-size", "8", "--eval-batch-size", "8", "--workers",
             "0", "--device", "cpu", "--lrs", "1e-2,1e-1"]
    results = {}
    for fmt in ("folder", "wds", "hfds"):
        out = tmp_path / f"{fmt}.json"
        assert lineval_main("imagenet", [str(run), "--data-root", str(data[fmt]), "--format", fmt, "--out", str(out),
                                         *small]) == 0
        results[fmt] = json.loads(out.read_text())
    assert results["wds"]["dataset"]["format"] == "wds" and "format" not in results["folder"]["dataset"]
    for fmt in ("wds", "hfds"):
        d = results[fmt]["dataset"]
        assert d["num_train"] + d["num_val"] == 24 and d["num_test"] == 8
    # the Arrow rows keep the folder's order, so the probe (seeded split, same features) gives the very same result
    assert results["hfds"]["metrics"] == results["folder"]["metrics"]
    assert results["hfds"]["val_metrics"] == results["folder"]["val_metrics"]
    # ImageNet-R labels come from the ImageNet wnids: the class folders, the classes.txt beside wds shards, or a file
    from argparse import Namespace

    from mdistiller.eval.cli import _wnid_source

    args = Namespace(wnids_file=None)
    assert _wnid_source(args, str(data["wds"]), "wds") == {"wnids_file": str(data["wds"] / "classes.txt")}
    assert (data["wds"] / "classes.txt").read_text().split() == list(CLASSES)
    assert _wnid_source(args, str(data["folder"]), "folder") == {"imagenet_root": str(data["folder"])}
    assert _wnid_source(Namespace(wnids_file="w.txt"), str(data["hfds"]), "hfds") == {"wnids_file": "w.txt"}
    capsys.readouterr()
    assert lineval_main("imagenet", [str(run), "--data-root", str(data["hfds"]), "--format", "hfds",
                                     "--imagenet-r-root", str(tmp_path), *small]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: --imagenet-r-root with --format hfds needs --wnids-file (the 1000 ImageNet wnids, one "
                       "per line, in label order): only class folders or a wds classes.txt name them.")


@pytest.mark.parametrize("fmt,extra", [("folder", []), ("wds", []), ("wds", ["--stream", "--shuffle-buffer", "8"]),
                                       ("hfds", []), ("images", [])],
                         ids=["folder", "wds", "wds-stream", "hfds", "images"])
def test_bench_loader_item_reads_each_format(data, fmt, extra, capsys) -> None:
    from tests.helpers import load_tool

    bench = load_tool("bench.py")
    root = data["folder"] if fmt == "images" else data[fmt]
    threads = torch.get_num_threads()
    try:
        bench.main(["--methods", "none", "--components", "loader", "--data", str(root), "--format", fmt, *extra,
                    "--batch", "4", "--size", str(SIZE), "--steps", "3", "--warmup", "1", "--workers", "0",
                    "--omp-wait", "env", "--json"])
    finally:
        torch.set_num_threads(threads)
    loader = json.loads(capsys.readouterr().out)["results"]["loader"]
    assert loader["source"].startswith(fmt) and ("stream" in loader["source"]) == bool(extra)
    assert len(loader["times_s"]) == 3 and loader["images_per_s"] > 0 and loader["images"] == 24
    assert loader["steps_per_epoch"] == 6 and loader["cpu_s_per_image"] > 0


def test_stream_resume_after_a_skipped_image_repeats_one_sample(tmp_path) -> None:
    """The documented exception: with SKIP_BAD_IMAGES a skipped image shifts the resumed stream by one sample."""
    _shard_with_a_bad_image(tmp_path / "bad")  # s0..s7, s5 undecodable

    def epoch(start_step: int) -> tuple[list[torch.Tensor], int]:
        ds = build_dataset("imagenet", "train", root=str(tmp_path / "bad"), input_size=16, train=False, format="wds",
                           wds_mode="stream", shuffle_buffer=0)  # no shuffle, eval transform: pixels name the sample
        loader, position = build_train_loader(guard_images(ds, skip=True), world_size=1, rank=0, batch_size=2, seed=0,
                                              num_workers=0, pin_memory=False, persistent_workers=False,
                                              prefetch_factor=2)
        position.set_epoch(0, start=2 * start_step)
        images = [x for batch, _ in loader for x in batch]
        return images, ds.skipped.value

    with pytest.warns(UserWarning, match="skipped undecodable training image .*'s5'"):
        full, skipped = epoch(0)  # s0 s1 | s2 s3 | s4 s6 | s7 s0 (s5 skipped; a second pass fills the epoch)
    resumed, skipped_resumed = epoch(3)  # reads past 6 raw samples (s0..s5) without decoding them: s6 s7
    assert len(full) == 8 and len(resumed) == 2 and (skipped, skipped_resumed) == (1, 0)
    assert torch.equal(resumed[0], full[5]) and torch.equal(resumed[1], full[6])  # one sample (s6) seen twice
    assert torch.equal(full[7], full[0])
