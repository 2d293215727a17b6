"""Validation before any work: every refusal of a training run is one ``error:`` sentence with the right exit code that
leaves nothing behind (no run directory, no lock file), and the failures found while running (a bad held-out image, a
full disk during the export, two probes building one feature cache, Ctrl-C while importing) are one sentence too
(docs/reliability.md, "Validation before any work")."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mdistiller.config import ConfigError, load_config
from mdistiller.engine.runlock import RunLock, RunLockedError
from tests.conftest import TINY_TEACHER
from tests.helpers import load_tool
from tests.test_train import records, tiny_yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_tool():
    return load_tool("train.py")


def _refused(train_tool, capsys, args: list[str], code: int = 2) -> str:
    """Run ``tools/train.py args`` in-process; assert exit ``code`` and one ``error:`` line, no traceback or warning;
    return that line."""
    got = train_tool.main(args)
    err = capsys.readouterr().err.strip()
    assert got == code, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------------ the LR schedule
SCHEDULES = [
    (["SOLVER.FINAL_LR", "1.0"], r"SOLVER.FINAL_LR 1 exceeds SOLVER.LR 0.001, so the schedule would raise"),
    (["SOLVER.LR", "1e999"], r"SOLVER.LR is inf but must be a finite number"),
    (["SOLVER.SCHEDULE", "multistep", "SOLVER.GAMMA", "2.0"], r"SOLVER.GAMMA is 2 but must lie in \(0, 1\]"),
    (["SOLVER.SCHEDULE", "multistep", "SOLVER.MILESTONES", "[-1, 2]"], r"SOLVER.MILESTONES is \[-1, 2\] but must list"),
    (["SOLVER.WARMUP_EPOCHS", "5.0"], r"SOLVER.WARMUP_EPOCHS 5 is longer than SOLVER.EPOCHS 3"),
    (["SOLVER.TYPE", "sgd", "SOLVER.MOMENTUM", "1.0"], r"SOLVER.MOMENTUM is 1 but must be below 1"),
]


@pytest.mark.parametrize(("opts", "message"), SCHEDULES, ids=[" ".join(o) for o, _ in SCHEDULES])
def test_a_schedule_that_climbs_or_never_warms_up_is_refused(tmp_path, opts, message):
    with pytest.raises(ConfigError, match=message):
        load_config([tiny_yaml(tmp_path)], opts)


def test_final_lr_above_lr_exits_2_before_the_run_directory_exists(tmp_path, train_tool, capsys):
    run = tmp_path / "out/run"
    line = _refused(train_tool, capsys, ["--cfg", str(tiny_yaml(tmp_path)), "--run-dir", str(run),
                                         "SOLVER.FINAL_LR", "1.0", "SOLVER.MAX_STEPS", "2"])
    assert "set SOLVER.FINAL_LR at most SOLVER.LR" in line
    assert not (tmp_path / "out").exists()
    load_config([tiny_yaml(tmp_path)], ["SOLVER.FINAL_LR", "1e-3"])  # equal to LR: a constant tail is allowed


# ------------------------------------------------------------------------------------------------ timm constructors
KWARGS = [
    (["DISTILLER.STUDENT_KWARGS.embed_dim", "50"],
     "DISTILLER.STUDENT_KWARGS: embed_dim 50 is not divisible by num_heads 3 of model 'vit_tiny'; pick an embed_dim "
     "that is a multiple of num_heads (e.g. 48 or 51)"),
    (["DISTILLER.TEACHER_KWARGS.num_heads", "5"],
     "DISTILLER.TEACHER_KWARGS: embed_dim 96 is not divisible by num_heads 5"),
    (["DISTILLER.TEACHER_KWARGS.num_heads", "0"],
     "DISTILLER.TEACHER_KWARGS: num_heads is 0 but must be a whole number of at least 1"),
    (["DISTILLER.STUDENT_KWARGS.depth", "0"], "DISTILLER.STUDENT_KWARGS: depth is 0 but must be a whole number"),
    (["DISTILLER.STUDENT_KWARGS.mlp_ratio", "-1.0"],
     "DISTILLER.STUDENT_KWARGS: mlp_ratio is -1.0 but must be a positive number"),
    (["DISTILLER.STUDENT_KWARGS.class_token", "False", "DISTILLER.STUDENT_KWARGS.global_pool", "token"],
     "DISTILLER.STUDENT_KWARGS: model 'vit_tiny' cannot be built with {"),
]


@pytest.mark.parametrize(("opts", "message"), KWARGS, ids=[" ".join(o) for o, _ in KWARGS])
def test_timm_constructor_errors_are_caught_at_validation_naming_the_key(tmp_path, opts, message):
    with pytest.raises(ConfigError) as err:
        load_config([tiny_yaml(tmp_path)], opts)
    text = str(err.value)
    assert text.startswith(message) and "\n" not in text, text


# ------------------------------------------------------------------------------------------------ before the lock
def test_run_dir_file_missing_cuda_and_offline_hub_weights_are_refused_before_any_lock(tmp_path, train_tool, capsys,
                                                                                         monkeypatch):
    y = str(tiny_yaml(tmp_path))
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    line = _refused(train_tool, capsys, ["--cfg", y, "--run-dir", str(a_file), "SOLVER.MAX_STEPS", "2"])
    assert line == (f"error: --run-dir {a_file} is a file, not a directory; pass a directory (it is created when "
                    "missing) or move the file away.")
    line = _refused(train_tool, capsys, ["--cfg", y, "--run-dir", str(a_file / "run"), "SOLVER.MAX_STEPS", "2"])
    assert f"cannot be created: {a_file} is a file" in line
    assert a_file.read_text() == "not a directory"

    run = tmp_path / "out/run"
    if not torch.cuda.is_available():
        line = _refused(train_tool, capsys, ["--device", "cuda", "--cfg", y, "--run-dir", str(run)])
        assert line.startswith("error: --device cuda was asked for but torch sees no CUDA device") and \
            line.endswith("use --device cpu (or auto).")
        line = _refused(train_tool, capsys, ["--cfg", y, "--run-dir", str(run), "EXPERIMENT.DEVICE", "cuda"])
        assert line.startswith("error: EXPERIMENT.DEVICE cuda was asked for")
    line = _refused(train_tool, capsys, ["--device", "gpu", "--cfg", y, "--run-dir", str(run)])
    assert "--device is 'gpu' but must be one of: auto, cpu, cuda" in line

    from mdistiller.models.zoo import pretrained_on_disk

    if pretrained_on_disk("vit_large"):
        pytest.skip("vit_large is in the local hub cache here: the default config would really train")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # the defaults write to ./output/mdistiller/default
    line = _refused(train_tool, capsys, ["SOLVER.MAX_STEPS", "2"])
    assert line.startswith("error: DISTILLER.TEACHER_WEIGHTS is 'pretrained' but the weights of 'vit_large' ("), line
    for words in ("HF_HUB_OFFLINE forbids downloading them", "no --cfg was given", "pass --cfg",
                  "point DISTILLER.TEACHER_WEIGHTS at a local .safetensors/.pth file"):
        assert words in line, words
    assert not (tmp_path / "output").exists() and not run.exists()


# ------------------------------------------------------------------------------------------------ weights files
def _teacher_file(path: Path, nan: bool = False) -> Path:
    from safetensors.torch import save_file

    from mdistiller.models import build_model

    model = build_model("vit_small", False, dynamic_img_size=True, **TINY_TEACHER)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if nan:
        sd["blocks.1.norm1.weight"][0] = float("nan")
    save_file(sd, str(path))
    return path


def test_weights_files_are_refused_with_exit_2_naming_what_is_wrong(tmp_path, train_tool, capsys):
    y = str(tiny_yaml(tmp_path))
    run = tmp_path / "out/run"

    def refused(weights: Path) -> str:
        line = _refused(train_tool, capsys, ["--cfg", y, "--run-dir", str(run), "SOLVER.MAX_STEPS", "2",
                                             "DISTILLER.TEACHER_WEIGHTS", str(weights)])
        assert not (tmp_path / "out").exists(), "a refused run leaves no run directory or lock file"
        return line

    missing = tmp_path / "missing.safetensors"
    assert refused(missing) == (f"error: DISTILLER.TEACHER_WEIGHTS file '{missing}' does not exist; check the "
                                "path.")
    assert refused(tmp_path) == (f"error: DISTILLER.TEACHER_WEIGHTS file '{tmp_path}' is a directory, not a weights "
                                 "file; point it at the .safetensors or .pth file inside it.")
    # found while building the trainer (after the lock): the lock file and the new directories are removed again
    nan = _teacher_file(tmp_path / "nan.safetensors", nan=True)
    line = refused(nan)
    assert f"weights file '{nan}' holds non-finite values (NaN or inf) in 1 tensor(s) (blocks.1.norm1.weight)" in line
    assert "SOLVER.LR" not in line
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x04" + bytes(range(256)) * 8)  # a pickle header: torch warns about its protocol
    line = refused(garbage)
    assert f"weights file '{garbage}' cannot be read as a .safetensors or torch state_dict (torch.load: Unsupported " \
           "operand" in line and "In PyTorch 2.6" not in line
    # a missing file is still a FileNotFoundError for library callers of build_model
    from mdistiller.models import build_model

    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model("vit_tiny", missing)


def test_the_python_api_refuses_the_same_and_leaves_nothing_behind(tmp_path):
    import mdistiller
    from mdistiller.models.weights import WeightsError

    y = tiny_yaml(tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match=r"^run_dir .* is a file, not a directory"):
        mdistiller.train(y, {"SOLVER.MAX_STEPS": 1}, run_dir=a_file)
    nan = _teacher_file(tmp_path / "nan.safetensors", nan=True)
    with pytest.raises(WeightsError, match="holds non-finite values"):  # found after the lock: the lock goes too
        mdistiller.train(y, {"SOLVER.MAX_STEPS": 1, "DISTILLER.TEACHER_WEIGHTS": str(nan)},
                         run_dir=tmp_path / "out/run")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ config wording
def test_config_mistakes_are_one_sentence_with_the_right_words(tmp_path, train_tool, capsys):
    y = tiny_yaml(tmp_path)
    with pytest.raises(ConfigError, match=r"^SiNGER.M_LAYERS \[7\]: teacher layer 7 is out of range for a 4-block "
                                          r"teacher \(valid: 0…3\)\.$"):
        load_config([y], ["SiNGER.M_LAYERS", "[7]"])
    with pytest.raises(ConfigError, match=r"^DISTILLER.STUDENT_LAYERS \[0, 9\]: student layer 9 is out of range"):
        load_config([y], ["DISTILLER.TEACHER_LAYERS", "[1, 3]", "DISTILLER.STUDENT_LAYERS", "[0, 9]"])
    with pytest.raises(ConfigError, match=r"^SOLVER.EPOCHS is -1 but must not be negative"):
        load_config([y], ["SOLVER.EPOCHS", "-1"])
    with pytest.raises(ConfigError, match=r"^override SOLVER.LR is 'abc' \(str\) but must be a float, e.g. "
                                          r"0.0001\.$"):
        load_config([y], ["SOLVER.LR", "abc"])
    for text, message in (("SOLVER: 5\n", "SOLVER must be a section of KEY: value entries"),
                          ("SOLVER:\n  LR:\n    a: 1\n", "SOLVER.LR is a single value (a float, e.g. 0.001), not a "
                                                           "section"),
                          ("SOLVER: {EPOCHS: }\n", "SOLVER.EPOCHS is empty but must be an int, e.g. 3"),
                          ("SOLVER: {LR: [}\n", "invalid YAML at line 1")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        line = _refused(train_tool, capsys, ["--cfg", str(y), str(bad), "--print-config"])
        assert line.startswith(f"error: {bad}: ") and line.count(str(bad)) == 1 and message in line, line
    fine = tmp_path / "fine.yaml"  # no mistakes: an empty section or text entry, an exponent without a dot
    fine.write_text("SOLVER:\nEXPERIMENT: {NAME: }\nSiNGER: {OUTLIER_Q: 9e-1}\n")
    cfg = load_config([y, fine])
    assert cfg.SOLVER.LR == pytest.approx(1e-3) and cfg.EXPERIMENT.NAME == "" and cfg.SiNGER.OUTLIER_Q == 0.9
    # the training set smaller than one global batch: the config key to change, not a sampler argument
    run = tmp_path / "out/run"
    line = _refused(train_tool, capsys, ["--cfg", str(y), "--run-dir", str(run), "SOLVER.MAX_STEPS", "2",
                                         "SOLVER.BATCH_SIZE", "128"])
    assert line == ("error: the training set has 64 images, fewer than one global batch of SOLVER.BATCH_SIZE 128; "
                    "lower SOLVER.BATCH_SIZE to at most 64 (a multiple of the number of processes), or raise "
                    "DATASET.TRAIN_SIZE to at least 128.")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ val/ images
def _image_folders(root: Path) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", (40, 40), (i * 30, 80 if c == "a" else 160, 0)).save(d / f"{i}.png")
    bad = root / "val/a/0_broken.jpg"  # sorts second: inside the held-out batch
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 4)
    return bad


def test_a_bad_image_in_val_is_one_sentence_or_skipped(tmp_path, train_tool, capsys):
    bad = _image_folders(tmp_path / "data")
    opts = ["--cfg", str(tiny_yaml(tmp_path)), "DATASET.TYPE", "imagenet", "DATASET.ROOT", str(tmp_path / "data"),
            "DATASET.TRAIN_SIZE", "0", "SOLVER.MAX_STEPS", "2", "SOLVER.BATCH_SIZE", "8"]
    line = _refused(train_tool, capsys, [*opts, "--run-dir", str(tmp_path / "r1")], code=1)
    assert line.startswith(f"error: held-out (val) image '{bad}' cannot be decoded (") and line.endswith(
        "); replace or delete it, or set DATASET.SKIP_BAD_IMAGES True to skip undecodable images.")
    assert not (tmp_path / "r1").exists()
    with pytest.warns(UserWarning, match=f"skipped undecodable held-out \\(val\\) image '{bad}'"):
        assert train_tool.main([*opts, "--run-dir", str(tmp_path / "r2"), "DATASET.SKIP_BAD_IMAGES", "True"]) == 0
    assert (tmp_path / "r2/student.safetensors").is_file()


def test_a_bad_image_read_by_a_probe_is_one_sentence(tmp_path, capsys):
    from mdistiller.eval.cli import main as lineval_main

    bad = _image_folders(tmp_path / "data")
    args = ["random:vit_tiny", "--data-root", str(tmp_path / "data"), "--input-size", "32", "--epochs", "1",
            "--batch-size", "4", "--eval-batch-size", "4", "--workers", "1", "--device", "cpu", "--cache-dir",
            str(tmp_path / "cache"), "--out", str(tmp_path / "r.json")]
    assert lineval_main("imagenet", args) == 1  # the test split (val/) is read by a loader worker
    err = capsys.readouterr().err.strip()
    assert err == f"error: ImageNet image '{bad}' cannot be read (Truncated File Read): replace or delete the file."


# ------------------------------------------------------------------------------------------------ full disk
def test_disk_full_during_the_export_is_one_sentence_and_the_rerun_exports(tmp_path, train_tool, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mdistiller.engine.checkpoint import load_checkpoint

    run = tmp_path / "run"
    args = ["--cfg", str(tiny_yaml(tmp_path)), "--run-dir", str(run), "SOLVER.MAX_STEPS", "3"]

    def full(tensors, filename, *a, **k):  # what safetensors raises on ENOSPC, after writing part of the file
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    line = _refused(train_tool, capsys, args, code=1)
    assert line == (f"error: no space left on device while writing {run / 'student.safetensors'}; the checkpoint "
                    f"{run / 'checkpoints/last.pth'} is intact; free space and rerun the same command.")
    assert not (run / "student.safetensors").exists() and not list(run.glob(".*.tmp"))
    steps = [r["step"] for r in records(run) if "loss" in r]
    assert steps == [1, 2, 3]
    monkeypatch.undo()
    assert train_tool.main(args) == 0  # the same command: resumes at step 3 of 3, trains nothing, exports
    capsys.readouterr()
    assert [r["step"] for r in records(run) if "loss" in r] == steps
    student = load_file(str(run / "student.safetensors"))
    model = load_checkpoint(run / "checkpoints/last.pth")["model"]
    assert student and all(torch.equal(v, model[f"student.model.{k}"]) for k, v in student.items())


# ------------------------------------------------------------------------------------------------ feature cache
def test_two_processes_building_one_feature_cache_wait_and_reuse_it(tmp_path):
    from torch.utils.data import TensorDataset

    from mdistiller.eval.cache import build_cache

    n, started, calls = 24, threading.Barrier(2), []
    images = torch.rand(n, 3, 8, 8)
    data = TensorDataset(images, torch.arange(n) % 3)

    def extractor(x: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(len(x))
        threading.Event().wait(0.02)  # slow enough that the two builds overlap
        return {"feat": x.flatten(1)[:, :5] * 2}

    logs: list[list[str]] = [[], []]
    out: list = [None, None]

    def probe(i: int) -> None:
        started.wait()
        out[i] = build_cache(tmp_path / "cache/train.npy", data, extractor, lambda hw: {"feat": (5,)},
                             lambda t: t, ("label", np.int64), fingerprint="fp", batch_size=4, dtype="float32",
                             log=logs[i].append)

    threads = [threading.Thread(target=probe, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(o is not None for o in out), logs
    assert sum(calls) == n, "the cache was extracted once, not by both"
    waited = [i for i in range(2) if any(m.startswith("waiting for another process") for m in logs[i])]
    assert len(waited) == 1 and any(m.startswith("reusing feature cache") for m in logs[waited[0]]), logs
    a, b = (o.read(np.arange(n)) for o in out)
    assert torch.equal(a["feat"], b["feat"]) and torch.equal(a["feat"], images.flatten(1)[:, :5] * 2)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["train.json", "train.npy"]  # no lock file left


def test_a_run_lock_file_removed_by_its_holder_is_never_shared(tmp_path):
    from mdistiller.fileio import names_file

    a = RunLock(tmp_path / "run").acquire()
    with pytest.raises(RunLockedError):
        RunLock(tmp_path / "run").acquire()
    stale_fd = os.open(a.path, os.O_RDWR)  # a process that opened the file just before the holder removed it
    a.release(remove_file=True)
    assert not a.path.exists() and not names_file(a.path, stale_fd)
    os.close(stale_fd)
    b = RunLock(tmp_path / "run").acquire()  # a new file at the path
    with pytest.raises(RunLockedError):
        RunLock(tmp_path / "run").acquire()
    b.release()
    assert b.path.exists()  # an ordinary release keeps the (emptied) file


# ------------------------------------------------------------------------------------------------ Ctrl-C
def _interrupted_at_import(tmp_path: Path, script: str, module: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run ``script`` as ``__main__`` with Ctrl-C arriving when ``module`` is first imported (deterministic)."""
    code = (
        "import runpy, sys\n"
        "class CtrlC:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name == {module!r}:\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, CtrlC())\n"
        f"sys.argv = [{script!r}, *{argv!r}]\n"
        f"runpy.run_path({script!r}, run_name='__main__')\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(("script", "module"), [("tools/train.py", "torch"),
                                                ("tools/train.py", "mdistiller.engine.launch"),
                                                ("tools/lineval/transfer.py", "torch"),
                                                ("tools/analyze.py", "torch")])
def test_ctrl_c_while_importing_is_one_line_and_exit_130(tmp_path, script, module):
    args = {"tools/train.py": ["--cfg", str(tiny_yaml(tmp_path)), "--run-dir", str(tmp_path / "run")],
            "tools/lineval/transfer.py": ["random:vit_tiny", "--dataset", "toy_scenes"],
            "tools/analyze.py": ["artifacts", "--model", "vit_tiny", "--weights", "random"]}[script]
    res = _interrupted_at_import(tmp_path, str(ROOT / script), module, args)
    assert res.returncode == 130, res.stderr
    assert res.stderr.strip() == "interrupted (Ctrl-C) before finishing; rerun the same command.", res.stderr
    assert not (tmp_path / "run").exists()


def test_console_entry_point_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    from mdistiller import cli
    from mdistiller.engine import launch

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "main", interrupted)
    with pytest.raises(SystemExit) as stop:
        cli.train(["--cfg", str(tiny_yaml(tmp_path))])
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted (Ctrl-C) before finishing; rerun the same command."
