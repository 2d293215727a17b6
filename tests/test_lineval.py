"""Linear-probe evaluation: memmap caches, validation-only selection, the four commands and the table (CPU, tiny)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from mdistiller.dataset import build_dataset
from mdistiller.eval import runner as runner_mod
from mdistiller.eval.cache import CachedSplit, build_cache
from mdistiller.eval.cli import main as lineval_main
from mdistiller.eval.features import FeatureExtractor, FeatureSpec, load_backbone, parse_layers
from mdistiller.eval.protocols import ClassificationTask, SegmentationTask, paired_random_crop
from mdistiller.eval.runner import ProbeData, ProbeSettings, carve_validation, run_probe
from mdistiller.eval.table import collect_results, render_csv, render_markdown

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--input-size", "32", "--num-train", "24", "--num-test", "12", "--epochs", "2", "--batch-size", "8",
         "--eval-batch-size", "8", "--workers", "0", "--device", "cpu"]
REQUIRED_KEYS = {"task", "metrics", "protocol", "features", "head", "epochs", "lr_grid", "chosen_lr", "seed", "time",
                 "dataset", "val_metrics", "model"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny distilled run directory: the exported student of a 3-block, width-48 FitNet distiller."""
    from mdistiller.distillers import build_distiller
    from tests.conftest import TINY_STUDENT, tiny_config

    d = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    distiller = build_distiller(tiny_config("FitNet", 32))
    distiller.export_student(d / "student.safetensors", "vit_tiny", dict(TINY_STUDENT) | {"img_size": 32})
    return d


def _tiny_backbone(run_dir: Path):
    return load_backbone(run_dir)


# ------------------------------------------------------------------------------------------------- features


def test_parse_layers_and_spec() -> None:
    assert parse_layers("last") == (-1,) and parse_layers("last4") == (-4, -3, -2, -1)
    assert parse_layers("8,11") == (8, 11)
    with pytest.raises(ValueError, match="lastN"):
        parse_layers("final")
    assert FeatureSpec((-2, -1), True, "cls+avg").resolve(3) == (1, 2)
    with pytest.raises(ValueError, match="outside"):
        FeatureSpec((5,)).resolve(3)


def test_feature_layouts(run_dir: Path) -> None:
    bb = _tiny_backbone(run_dir)
    x = torch.rand(2, 3, 32, 32)
    for tokens, layers, dim in (("cls", "last", 48), ("cls+avg", "last2", 48 * 3), ("avg", "last", 48)):
        ex = FeatureExtractor(bb.features, FeatureSpec(parse_layers(layers), True, tokens))
        assert ex(x)["feat"].shape == (2, dim) == (2, ex.dim)
    ex = FeatureExtractor(bb.features, FeatureSpec((-2, -1), False, "patch"))
    out = ex(x)
    assert out["patch"].shape == (2, 96, 2, 2) and out["cls"].shape == (2, 96)
    # pre-norm CLS of the last block equals the model's own forward_features (pre-norm) CLS
    toks = bb.features(x, [2])[2]
    torch.testing.assert_close(out["cls"][:, 48:], toks[:, 0])


# ------------------------------------------------------------------------------------------------- cache


def test_memmap_cache_one_file_per_split_and_reload(run_dir: Path, tmp_path: Path) -> None:
    bb = _tiny_backbone(run_dir)
    ds = build_dataset("toy_scenes", "train", root=None, input_size=32, train=False, num_images=10)
    for task, spec in ((ClassificationTask(8), FeatureSpec()), (SegmentationTask(9), FeatureSpec(tokens="patch"))):
        ex = FeatureExtractor(bb.features, spec)
        folder = tmp_path / task.kind
        for dtype in ("float32", "float16"):
            path = folder / f"train_{dtype}.npy"
            c = build_cache(path, ds, ex, ex.field_shapes, task.target_of, task.target_field(), fingerprint="fp",
                            batch_size=4, dtype=dtype)
            arr = np.load(path, mmap_mode="r")
            assert arr.shape == (10,) and set(arr.dtype.names) >= {"index", task.target_field()[0]}
            assert (arr["index"] == np.arange(10)).all()
            images = torch.stack([ds[i][0] for i in range(10)])
            parts = [ex(images[s : s + 4]) for s in (0, 4, 8)]  # the extraction's own batches: bitwise comparable
            want = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            got = CachedSplit(path).read(np.arange(10))
            for k, v in want.items():
                ref = v if dtype == "float32" else v.half().float()
                assert torch.equal(got[k], ref), (task.kind, dtype, k)
            tname = task.target_field()[0]
            ref_t = task.target_of(torch.utils.data.default_collate([ds[i][1] for i in range(10)]))
            assert torch.equal(got[tname].long() if tname == "mask" else got[tname], ref_t)
            # a second build reuses the finished file (same fingerprint): nothing is rewritten
            mtime = path.stat().st_mtime_ns
            c2 = build_cache(path, ds, ex, ex.field_shapes, task.target_of, task.target_field(), fingerprint="fp",
                             batch_size=4, dtype=dtype)
            assert path.stat().st_mtime_ns == mtime and len(c2) == len(c) == 10
        # one .npy (+ its json sidecar) per split, never one file per image
        assert sorted(p.name for p in folder.iterdir()) == [
            "train_float16.json", "train_float16.npy", "train_float32.json", "train_float32.npy"]
        meta = json.loads((folder / "train_float16.json").read_text())
        assert meta["complete"] and meta["num_items"] == 10 and meta["fingerprint"] == "fp"


# ------------------------------------------------------------------------------------------------- selection


class _TwoTone(Dataset):
    """Black images are class 0 and white ones class 1; ``flip`` swaps the labels (a deliberately shifted test)."""

    num_classes = 2

    def __init__(self, n: int, flip: bool = False) -> None:
        self.n, self.flip = n, flip

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        white = i % 2
        return torch.full((3, 32, 32), float(white)), int(white) ^ int(self.flip)


def test_selection_uses_validation_split_never_test(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Head ``lr_1e-06`` is initialised as the *flipped* classifier and barely moves: it is perfect on the shifted
    test set and wrong on validation, so selecting on test would pick it; the runner must pick a trained head."""
    bb = _tiny_backbone(run_dir)
    spec = FeatureSpec()
    ex = FeatureExtractor(bb.features, spec)
    f = ex(torch.stack([_TwoTone(2)[0][0], _TwoTone(2)[1][0]]))["feat"]  # [black, white]

    class Rigged(ClassificationTask):
        def build_heads(self, in_dim, lrs):
            grid = super().build_heads(in_dim, lrs)
            with torch.no_grad():
                grid.weights[0].copy_(10 * f.flip(0))  # class 0 <- white, class 1 <- black: the flipped mapping
            return grid

    calls: list[tuple[str, list[str]]] = []
    real_evaluate = runner_mod.evaluate

    def spy(task, heads, batches, names, device, class_mask=None):
        split = Path(batches.split.path).stem
        calls.append((split, list(names), len(batches.rows)))
        return real_evaluate(task, heads, batches, names, device, class_mask)

    monkeypatch.setattr(runner_mod, "evaluate", spy)
    data = ProbeData("two_tone", train=_TwoTone(40), test=_TwoTone(10, flip=True), augment="none")
    settings = ProbeSettings(epochs=5, batch_size=8, eval_batch_size=8, lrs=(1e-6, 0.5, 1.0), val_fraction=0.25,
                             cache_dir=str(tmp_path / "cache"), cache_dtype="float32")
    res = run_probe(bb, spec, Rigged(2), data, settings)
    # all three heads were compared on validation rows of the *train* cache, the test cache saw one head only
    assert calls[0] == ("train", ["lr_1e-06", "lr_0.5", "lr_1"], 10)
    assert calls[1:] == [("test", [res["chosen_head"]], 10)]
    assert res["val_metrics"]["lr_1e-06"]["top1"] == 0.0
    assert res["chosen_head"] != "lr_1e-06" and res["val_metrics"][res["chosen_head"]]["top1"] == 100.0
    assert res["metrics"]["top1"] == 0.0  # the honest (shifted) test result of the selected head
    test_logits = 10 * ex(torch.stack([_TwoTone(10, True)[i][0] for i in range(10)]))["feat"] @ f.flip(0).T
    assert (test_logits.argmax(1) == torch.tensor([_TwoTone(10, True)[i][1] for i in range(10)])).all()
    assert "never" in res["protocol"]["selection"]


def test_carve_validation_is_seeded_and_disjoint() -> None:
    tr, va = carve_validation(50, 0.1, seed=3)
    tr2, va2 = carve_validation(50, 0.1, seed=3)
    assert (tr == tr2).all() and (va == va2).all() and len(va) == 5
    assert not set(tr) & set(va) and set(tr) | set(va) == set(range(50))
    assert not (carve_validation(50, 0.1, seed=4)[1] == va).all()


def test_paired_crop_keeps_labels_and_geometry() -> None:
    g = torch.Generator().manual_seed(0)
    mask = torch.arange(16).repeat(16, 1)  # column index
    img = (mask.float() / 15)[None].expand(3, 16, 16)[None].repeat(4, 1, 1, 1)
    out_i, out_t = paired_random_crop(img, mask[None].repeat(4, 1, 1), g)
    assert out_i.shape == img.shape and out_t.shape == (4, 16, 16)
    assert set(out_t.unique().tolist()) <= set(range(16))
    # image and target went through the same crop and flip: columns stay ordered the same way
    for i in range(4):
        di, dt = np.sign(np.diff(out_i[i, 0, 0].numpy())).sum(), np.sign(np.diff(out_t[i, 0].numpy())).sum()
        assert di * dt >= 0


# ------------------------------------------------------------------------------------------------- commands


def _read(path: Path) -> dict:
    res = json.loads(path.read_text())
    assert REQUIRED_KEYS <= set(res), REQUIRED_KEYS - set(res)
    return res


def test_commands_end_to_end_on_toy_scenes(run_dir: Path, capsys) -> None:
    out = run_dir / "lineval"
    assert lineval_main("imagenet", [str(run_dir), "--dataset", "toy_scenes", *SMALL, "--lrs", "1e-3,1e-2,1e-1"]) == 0
    assert lineval_main("transfer", [str(run_dir), "--dataset", "toy_scenes", *SMALL, "--protocol", "online",
                                     "--lrs", "1e-2,1e-1"]) == 0
    assert lineval_main("ade20k", [str(run_dir), "--dataset", "toy_scenes", *SMALL, "--lrs", "1e-3,1e-2"]) == 0
    assert lineval_main("ade20k", [str(run_dir), "--dataset", "toy_scenes", *SMALL, "--lrs", "1e-3,1e-2",
                                   "--protocol", "online", "--slide", "16", "--eval-size", "48"]) == 0
    assert lineval_main("nyud", [str(run_dir), "--dataset", "toy_scenes", *SMALL, "--lrs", "1e-3,1e-2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all("->" in ln for ln in lines)

    cls = _read(out / "toy_scenes_cls.json")
    assert cls["protocol"]["name"] == "cached" and cls["lr_grid"] == [1e-3, 1e-2, 1e-1]
    assert cls["chosen_lr"] in cls["lr_grid"] and 0 <= cls["metrics"]["top1"] <= 100
    assert cls["features"] == {"layers": [-1], "final_norm": True, "tokens": "cls", "resolved_layers": [2], "dim": 48}
    assert cls["dataset"]["num_train"] + cls["dataset"]["num_val"] == 24 and cls["dataset"]["num_test"] == 12
    assert len(list((out / "cache").glob("*/*.npy"))) == 6  # train + test for cls, seg and depth
    online = _read(out / "toy_scenes_cls.online.json")
    assert online["protocol"]["name"] == "online" and "RandomResizedCrop" in online["protocol"]["augmentation"]
    seg = _read(out / "toy_scenes_seg.json")
    assert 0 <= seg["metrics"]["miou"] <= 1 and seg["metrics"]["num_present_classes"] >= 1
    slide = _read(out / "toy_scenes_seg.online.json")
    assert slide["protocol"]["test_inference"].startswith("sliding window 32")
    depth = _read(out / "toy_scenes_depth.json")
    assert depth["metrics"]["rmse"] > 0 and depth["metrics"]["aggregation"] == "pixel"
    assert depth["head"]["use_cls"] and depth["head"]["bins"] == 256

    # table: Markdown and CSV with the toy-scene columns (online results preferred and marked)
    rows = collect_results([run_dir])
    md, csv_text = render_markdown(rows), render_csv(rows)
    assert "toy cls top-1" in md and "toy seg mIoU" in md and "toy depth RMSE" in md and "†" in md
    header, row = csv_text.strip().splitlines()
    assert header.startswith("model,toy cls top-1") and row.startswith(run_dir.name)
    assert f"{online['metrics']['top1']:.4f}" in row and f"{depth['metrics']['rmse']:.6f}" in row
    rows_cached = collect_results([run_dir], ["tiny"], protocol="cached")
    assert rows_cached[0].cells["toy cls top-1"][0] == pytest.approx(cls["metrics"]["top1"])


def test_table_tool_writes_markdown_and_csv(tmp_path: Path) -> None:
    runs = []
    for name, top1 in (("a", 70.0), ("b", 60.0)):
        d = tmp_path / name / "lineval"
        d.mkdir(parents=True)
        (d / "imagenet.json").write_text(json.dumps({"metrics": {"top1": top1}, "extra_tests": {
            "imagenet_r": {"top1": 30.0}, "imagenet_v2": {"top1": 50.0}}}))
        (d / "nyud.json").write_text(json.dumps({"metrics": {"rmse": 0.9}}))
        for t in ("aircraft", "pets", "food101"):
            (d / f"transfer_{t}.json").write_text(json.dumps({"metrics": {"top1": 80.0}}))
        runs.append(str(tmp_path / name))
    md, csv_path = tmp_path / "t.md", tmp_path / "t.csv"
    proc = subprocess.run([sys.executable, str(ROOT / "tools/lineval/table.py"), *runs, "--names", "A", "B",
                           "--out", str(md), "--out", str(csv_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = md.read_text()
    assert "| A | 70.00 | — | 0.9000 | — | 40.00 | — |" in text  # DS = mean(30, 50); FG needs all four sets
    assert "toy" not in text
    assert csv_path.read_text().splitlines()[1].startswith("A,70.0000,,0.900000,,40.0000,")


def test_model_name_random_init(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert lineval_main("transfer", ["random:vit_tiny", "--dataset", "toy_scenes", *SMALL, "--lrs", "1e-2"]) == 0
    res = _read(tmp_path / "output/lineval/random-vit_tiny/toy_scenes_cls.json")
    assert res["model"]["source"] == "random" and res["model"]["name"] == "vit_tiny"
    assert res["features"]["dim"] == 192 and "random:vit_tiny" in capsys.readouterr().out


def test_missing_data_and_bad_target_are_one_sentence(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert lineval_main("imagenet", [str(run_dir), "--data-root", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "train/" in err
    assert lineval_main("nyud", [str(run_dir), "--data-root", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and ".mat" in err
    assert lineval_main("transfer", ["no_such_model", "--dataset", "pets"]) == 1
    assert "neither a run directory nor a model name" in capsys.readouterr().err


def test_tools_help() -> None:
    for tool in ("imagenet", "ade20k", "nyud", "transfer", "table"):
        proc = subprocess.run([sys.executable, str(ROOT / f"tools/lineval/{tool}.py"), "--help"], capture_output=True,
                              text=True, cwd="/")
        assert proc.returncode == 0 and "usage:" in proc.stdout, (tool, proc.stderr)


def test_class_mask_restricts_the_argmax() -> None:
    """ImageNet-R style: with a mask the prediction can only be a masked-in class."""
    task = ClassificationTask(4)
    logits = torch.tensor([[5.0, 1.0, 2.0, 0.0], [0.0, 3.0, 1.0, 9.0]])
    target = torch.tensor([2, 1])
    plain = task.new_meter(["h"], torch.device("cpu"))
    plain.update({"h": logits}, target)
    masked = task.new_meter(["h"], torch.device("cpu"), class_mask=torch.tensor([False, True, True, False]))
    masked.update({"h": logits}, target)
    assert plain.compute()["h"]["top1"] == 0.0 and masked.compute()["h"]["top1"] == 100.0


def test_depth_probe_copies_the_segmentation_features_of_the_same_scenes(run_dir: Path, tmp_path: Path,
                                                                          monkeypatch) -> None:
    """Segmentation and depth on toy scenes see the same images through the same backbone and tokens: the second
    cache copies the first one's features instead of running the backbone, and the probe's result is exactly the
    one a fresh extraction gives."""
    calls = {"n": 0}
    real_forward = FeatureExtractor.forward

    def counting(self, images):
        calls["n"] += 1
        return real_forward(self, images)

    monkeypatch.setattr(FeatureExtractor, "forward", counting)
    shared = tmp_path / "shared"
    args = [str(run_dir), "--dataset", "toy_scenes", *SMALL, "--lrs", "0.1", "--cache-dir"]
    assert lineval_main("ade20k", [*args, str(shared), "--out", str(tmp_path / "seg.json")]) == 0
    assert calls["n"] > 0
    calls["n"] = 0
    assert lineval_main("nyud", [*args, str(shared), "--out", str(tmp_path / "depth.json")]) == 0
    assert calls["n"] == 0  # no backbone forward: the features came from the segmentation cache
    seg_dir, depth_dir = (next(p.parent for p in shared.glob("*/train.json")
                               if json.loads(p.read_text())["task"] == kind) for kind in ("seg", "depth"))
    for split in ("train", "test"):
        seg, depth = CachedSplit(seg_dir / f"{split}.npy"), CachedSplit(depth_dir / f"{split}.npy")
        assert depth.meta["features_from"] == str(seg.path) and "depth" in depth.fields and "mask" in seg.fields
        for field in ("patch", "cls"):
            assert np.array_equal(seg.array[field], depth.array[field])
    assert lineval_main("nyud", [*args, str(tmp_path / "alone"), "--out", str(tmp_path / "alone.json")]) == 0
    assert calls["n"] > 0  # extracted afresh: no sibling cache there
    reused, fresh = (json.loads((tmp_path / f).read_text()) for f in ("depth.json", "alone.json"))
    assert reused["metrics"] == fresh["metrics"] and reused["val_metrics"] == fresh["val_metrics"]
