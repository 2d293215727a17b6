"""tools/preresize.py and mdistiller.dataset.preresize: sizes, modes, file list, resume, labels, errors (CPU, tiny)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mdistiller.dataset import build_dataset
from mdistiller.dataset.preresize import TMP_SUFFIX, resize_file, resized_size
from tests.helpers import load_tool

ROOT = Path(__file__).resolve().parents[1]
SHORT = 32


tool = load_tool("preresize.py")

# relative path -> (size, mode, format); sizes straddle SHORT so both the resize and the keep branch run
FIXTURE = {
    "train/n01/a.JPEG": ((64, 48), "RGB", "JPEG"),  # landscape, resized to 43 x 32
    "train/n01/b.png": ((40, 60), "P", "PNG"),  # portrait palette PNG, resized to 32 x 48
    "train/n01/c.jpg": ((24, 20), "L", "JPEG"),  # greyscale, smaller than SHORT: kept at 24 x 20
    "train/n02/d.jpeg": ((50, 50), "CMYK", "JPEG"),  # CMYK JPEG, resized to 32 x 32
    "train/n02/e.JPEG": ((63, 33), "RGB", "JPEG"),  # wide: 61.09 -> 61 x 32
    "val/n01/f.JPEG": ((45, 64), "RGB", "JPEG"),
    "val/n02/g.png": ((32, 40), "RGBA", "PNG"),  # short side == SHORT: kept
}


def _make_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for rel, ((w, h), mode, fmt) in FIXTURE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1) + rng.integers(0, 20, (h, w, 3))
        im = Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")
        im = im.convert(mode) if mode != "P" else im.convert("P", palette=Image.Palette.ADAPTIVE)
        im.save(path, fmt)
    (root / "train" / "n01" / "notes.txt").write_text("not an image")  # ignored by the dataset and the tool
    (root / "train" / ".hidden").mkdir()  # hidden folders are not classes


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _make_tree(src)
    return src, dst


def test_resized_size() -> None:
    assert resized_size(500, 375, 256) == (341, 256)
    assert resized_size(375, 500, 256) == (256, 341)
    assert resized_size(200, 100, 256) == (200, 100)  # never upscaled
    assert resized_size(256, 300, 256) == (256, 300)
    assert resized_size(10000, 257, 256) == (9961, 256)


def test_preresize_tree_sizes_modes_labels_and_resume(tree: tuple[Path, Path], capsys) -> None:
    src, dst = tree
    argv = ["--src", str(src), "--dst", str(dst), "--short-side", str(SHORT), "--workers", "1", "--no-progress"]
    assert tool.main(argv) == 0
    out = capsys.readouterr().out
    assert f"written {len(FIXTURE)}, skipped (already present) 0, failed 0" in out
    assert sorted(FIXTURE) == _files(dst)  # same relative paths and names; notes.txt not copied
    for rel, ((w, h), _, _) in FIXTURE.items():
        with Image.open(dst / rel) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            ow, oh = im.size
        if min(w, h) <= SHORT:
            assert (ow, oh) == (w, h), rel
        else:
            assert min(ow, oh) == SHORT, rel
            if w >= h:
                assert abs(ow - w * oh / h) <= 1, rel
            else:
                assert abs(oh - h * ow / w) <= 1, rel

    for split in ("train", "val"):
        a = build_dataset("imagenet", split, root=str(src), input_size=32, train=False)
        b = build_dataset("imagenet", split, root=str(dst), input_size=32, train=False)
        assert a.classes == b.classes and a.targets == b.targets
        assert [Path(p).relative_to(src) for p, _ in a.samples] == [Path(p).relative_to(dst) for p, _ in b.samples]
        x, y = b[0]
        assert tuple(x.shape) == (3, 32, 32) and y == a.targets[0]

    mtimes = {rel: os.stat(dst / rel).st_mtime_ns for rel in FIXTURE}
    assert tool.main(argv) == 0  # rerun: everything is skipped, nothing rewritten
    assert f"written 0, skipped (already present) {len(FIXTURE)}, failed 0" in capsys.readouterr().out
    assert mtimes == {rel: os.stat(dst / rel).st_mtime_ns for rel in FIXTURE}


def test_resume_after_partial_run_and_pool(tree: tuple[Path, Path], capsys, monkeypatch) -> None:
    src, dst = tree
    done = dst / "train" / "n01" / "a.JPEG"
    done.parent.mkdir(parents=True)
    done.write_bytes(b"placeholder")  # a file already present is skipped, not re-checked
    leftover = done.with_name(f".b.png{TMP_SUFFIX}")
    leftover.write_bytes(b"truncated")  # a temp file of a killed run is overwritten and renamed
    argv = ["--src", str(src), "--dst", str(dst), "--short-side", str(SHORT), "--no-progress", "--dry-run"]
    assert tool.main(argv) == 0
    out = capsys.readouterr().out
    assert "train: 2 classes, 5 images, 4 to write, 1 already in" in out
    assert f"would write {len(FIXTURE) - 1} of {len(FIXTURE)} images" in out
    assert not (dst / "val").exists()  # dry run writes nothing

    def no_fork():  # a fork after torch's threads started can hang the child on a copied lock
        raise AssertionError("the preresize pool must not fork")

    monkeypatch.setattr(os, "fork", no_fork)
    assert tool.main(argv[:-1] + ["--workers", "2"]) == 0
    assert f"written {len(FIXTURE) - 1}, skipped (already present) 1, failed 0" in capsys.readouterr().out
    assert done.read_bytes() == b"placeholder"
    assert not leftover.exists()
    assert sorted(FIXTURE) == _files(dst)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    bad = tmp_path / "bad.JPEG"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "out.JPEG"
    with pytest.raises(OSError):
        resize_file(bad, out, SHORT, 90)
    assert list(tmp_path.iterdir()) == [bad]


def test_unreadable_file_is_reported_and_run_goes_on(tree: tuple[Path, Path], capsys) -> None:
    src, dst = tree
    (src / "val" / "n01" / "broken.JPEG").write_bytes(b"garbage")
    argv = ["--src", str(src), "--dst", str(dst), "--short-side", str(SHORT), "--workers", "1", "--no-progress"]
    assert tool.main(argv) == 1
    out = capsys.readouterr().out
    assert f"written {len(FIXTURE)}, skipped (already present) 0, failed 1" in out
    assert "broken.JPEG" in out
    assert not (dst / "val" / "n01" / "broken.JPEG").exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "source folder '{src}-nope' not found"),
        ("nosplit", "has no train or val split folder"),
        ("same", "is the source folder itself"),
        ("inside", "lies inside the source folder"),
        ("quality", "JPEG quality 0 is invalid"),
    ],
)
def test_errors(tree: tuple[Path, Path], capsys, case: str, message: str) -> None:
    src, dst = tree
    args = {"src": str(src), "dst": str(dst), "extra": []}
    if case == "missing":
        args["src"] = f"{src}-nope"
    elif case == "nosplit":
        args["src"] = str(src / "train")  # one level too deep: its sub-folders are classes, not splits
    elif case == "same":
        args["dst"] = str(src) + "/"
    elif case == "inside":
        args["dst"] = str(src / "small")
    else:
        args["extra"] = ["--quality", "0"]
    assert tool.main(["--src", args["src"], "--dst", args["dst"], "--no-progress", *args["extra"]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.format(src=src.resolve()) in err
    assert err.count("\n") == 1
    assert not dst.exists()
