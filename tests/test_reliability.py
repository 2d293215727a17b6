"""Nothing silent, nothing lost: each corruption path of training, probing and analysis either works or stops with
one sentence (see docs/reliability.md, which names these tests)."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdistiller.config import ConfigError, load_config
from mdistiller.engine import checkpoint as ckpt
from mdistiller.engine.runlock import RunLock, RunLockedError
from mdistiller.engine.trainer import NonFiniteLossError, Trainer
from tests.conftest import TINY_TEACHER
from tests.helpers import load_tool
from tests.test_train import cpu_env, records, tiny_yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_tool():
    return load_tool("train.py")


def _cli(train_tool, capsys, args: list[str]) -> tuple[int, str]:
    code = train_tool.main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _teacher_file(path: Path, **kwargs) -> Path:
    """A tiny teacher's weights as the user would pass them (timm names, safetensors)."""
    from safetensors.torch import save_file

    from mdistiller.models import build_model

    torch.manual_seed(kwargs.pop("seed", 1))
    model = build_model("vit_small", False, dynamic_img_size=True, **(TINY_TEACHER | kwargs))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path))
    return path


# ------------------------------------------------------------------------------------------------ 1. weights
def test_strict_weights_name_missing_unexpected_and_wrong_shape(tmp_path):
    from safetensors.torch import load_file, save_file

    from mdistiller.models import build_model
    from mdistiller.models.weights import WeightsError

    good = _teacher_file(tmp_path / "t.safetensors")
    model = build_model("vit_small", good, dynamic_img_size=True, **TINY_TEACHER)
    ref = load_file(str(good))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref.items())

    sd = dict(ref)
    del sd["blocks.3.mlp.fc2.weight"]
    save_file(sd, str(tmp_path / "missing.safetensors"))
    with pytest.raises(WeightsError, match=r"missing from the file \(blocks\.3\.mlp\.fc2\.weight\).*STRICT_WEIGHTS"):
        build_model("vit_small", tmp_path / "missing.safetensors", **TINY_TEACHER)
    with pytest.warns(UserWarning, match="partial load"):
        build_model("vit_small", tmp_path / "missing.safetensors", strict=False, **TINY_TEACHER)

    save_file({f"foo.{k}": v for k, v in ref.items()}, str(tmp_path / "prefixed.safetensors"))
    with pytest.raises(WeightsError, match=r"carry the prefix 'foo\.'"):
        build_model("vit_small", tmp_path / "prefixed.safetensors", **TINY_TEACHER)

    deeper = _teacher_file(tmp_path / "deeper.safetensors", depth=6)  # a student file of a deeper model
    with pytest.raises(WeightsError, match=r"unexpected file tensor.*blocks\.4"):
        build_model("vit_small", deeper, **TINY_TEACHER)

    wide = _teacher_file(tmp_path / "wide.safetensors", embed_dim=48)
    with pytest.raises(WeightsError, match="wrong shape"):
        build_model("vit_small", wide, **TINY_TEACHER)

    (tmp_path / "garbage.pth").write_bytes(b"\x80\x04this is no torch file" * 10)
    with pytest.raises(WeightsError, match="cannot be read"):
        build_model("vit_small", tmp_path / "garbage.pth", **TINY_TEACHER)


def test_cli_refuses_bad_teacher_files_with_exit_2(tmp_path, train_tool, capsys):
    wide = _teacher_file(tmp_path / "wide.safetensors", embed_dim=48)
    (tmp_path / "garbage.pth").write_bytes(b"garbage" * 20)
    for bad in (wide, tmp_path / "garbage.pth"):
        code, err = _cli(train_tool, capsys, ["--cfg", str(tiny_yaml(tmp_path)), "--run-dir", str(tmp_path / "r"),
                                              "DISTILLER.TEACHER_WEIGHTS", str(bad)])
        assert code == 2 and bad.name in _one_error_line(err)
        assert not (tmp_path / "r/metrics.jsonl").exists()  # refused before any compute


def test_resume_refuses_another_teacher_file_batch_precision_and_optimizer(tmp_path):
    a = _teacher_file(tmp_path / "a.safetensors", seed=1)
    b = _teacher_file(tmp_path / "b.safetensors", seed=2)  # same architecture, other weights
    opts = ["DISTILLER.TEACHER_WEIGHTS", str(a), "SOLVER.MAX_STEPS", "1"]
    Trainer(load_config([tiny_yaml(tmp_path)], opts), cpu_env(), tmp_path / "run").fit()
    last = tmp_path / "run/checkpoints/last.pth"
    assert ckpt.load_checkpoint(last)["teacher_file"]["hash"]

    def resume(*extra):
        cfg = load_config([tiny_yaml(tmp_path)], [*opts, *extra])
        Trainer(cfg, cpu_env(), tmp_path / "x").resume(last)

    copy = tmp_path / "moved.safetensors"
    copy.write_bytes(a.read_bytes())
    resume("DISTILLER.TEACHER_WEIGHTS", str(copy))  # the same file elsewhere is fine
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"teacher weights .*a\.safetensors.*different file") as e:
        resume("DISTILLER.TEACHER_WEIGHTS", str(b))
    assert e.value.exit_code == 2
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"SOLVER.BATCH_SIZE 16 → 8\).*RESUME_ALLOW_CHANGES"):
        resume("SOLVER.BATCH_SIZE", "8")
    resume("SOLVER.BATCH_SIZE", "8", "EXPERIMENT.RESUME_ALLOW_CHANGES", "['SOLVER.BATCH_SIZE']")
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"SOLVER.AMP none → bf16"):
        resume("SOLVER.AMP", "bf16")
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"SOLVER.TYPE adamw → sgd.*cannot change within a run"):
        resume("SOLVER.TYPE", "sgd")


# ------------------------------------------------------------------------------------------------ 2. non-finite
def test_lr300_stops_keeps_finite_checkpoints_and_resumes_with_sane_lr(tmp_path):
    y = tiny_yaml(tmp_path)
    common = ["LOG.CKPT_EVERY_STEPS", "1", "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.MAX_STEPS", "6"]
    trainer = Trainer(load_config([y], ["SOLVER.LR", "300", "SOLVER.GRAD_CLIP", "0", *common]), cpu_env(),
                      tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match=r"non-finite (update|loss) at step \d .*--resume \S*prev\.pth") as e:
        trainer.fit()
    advised = Path(str(e.value).rsplit("--resume ", 1)[1].rstrip("."))
    for name in ("last.pth", "prev.pth"):  # every checkpoint on disk is finite
        state = ckpt.load_checkpoint(tmp_path / "run/checkpoints" / name)
        assert ckpt.nonfinite_tensors({"model": state["model"], "optimizer": state["optimizer"]}) == []
    assert "EXPERIMENT.RESUME_ALLOW_CHANGES" in str(e.value)  # a deliberate change of a run, recorded
    allow = ["EXPERIMENT.RESUME_ALLOW_CHANGES", "['SOLVER.LR', 'SOLVER.GRAD_CLIP']"]
    sane = Trainer(load_config([y], ["SOLVER.LR", "1e-3", "SOLVER.GRAD_CLIP", "1.0", *common, *allow]), cpu_env(),
                   tmp_path / "run")
    result = sane.fit(advised)
    assert sane.step == 6 and torch.isfinite(torch.tensor(result["loss"]))
    steps = [r["step"] for r in records(tmp_path / "run") if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # the diverged steps' records were dropped
    assert max(r["lr"] for r in records(tmp_path / "run") if "lr" in r) <= 1e-3


def test_non_finite_state_is_never_checkpointed(tmp_path):
    cfg = load_config([tiny_yaml(tmp_path)], ["SOLVER.MAX_STEPS", "2"])
    trainer = Trainer(cfg, cpu_env(), tmp_path / "run")
    trainer.save()
    with torch.no_grad():
        next(iter(trainer.distiller.trainable_parameters()))[1].fill_(float("inf"))
    with pytest.raises(NonFiniteLossError, match="refusing to checkpoint step 0: 1 non-finite"):
        trainer.save()
    assert not ckpt.nonfinite_tensors(ckpt.load_checkpoint(trainer.ckpt_path)["model"])


# ------------------------------------------------------------------------------------------------ 3. lock
def test_run_lock_refuses_a_second_run_and_is_released_on_any_exit(tmp_path, train_tool, capsys):
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            RunLock(run).acquire()
        code, err = _cli(train_tool, capsys, ["--cfg", str(tiny_yaml(tmp_path)), "--run-dir", str(run)])
        assert code == 2 and "is in use by another run" in _one_error_line(err)
    RunLock(run).acquire().release()  # released
    # a holder killed with SIGKILL leaves a stale lock file: the next run takes it over
    code = (f"import sys, os, signal; sys.path.insert(0, {str(ROOT)!r}); from mdistiller.engine.runlock import "
            f"RunLock; RunLock({str(run)!r}).acquire(); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    lock = RunLock(run).acquire()
    assert lock.stale and lock.stale["pid"] != os.getpid()
    lock.release()


# ------------------------------------------------------------------------------------------------ 4. checksum, prev
def test_flipped_bytes_fail_the_checksum_and_name_the_fallback(tmp_path):
    path = tmp_path / "checkpoints/last.pth"
    marker = torch.full((4096,), 1.2345)
    ckpt.save_checkpoint(path, {"step": 1, "optimizer": {"exp_avg": marker}}, keep_previous=True)
    ckpt.save_checkpoint(path, {"step": 2, "optimizer": {"exp_avg": marker}}, keep_previous=True)
    assert ckpt.load_checkpoint(tmp_path / "checkpoints/prev.pth")["step"] == 1
    data = bytearray(path.read_bytes())
    at = data.find(marker[:4].numpy().tobytes()) + 2000
    data[at:at + 64] = bytes(64)  # 64 bytes in the middle of the optimizer state
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=r"fails its checksum.*--resume \S+prev\.pth"):
        ckpt.load_checkpoint(path)


def test_truncated_checkpoint_names_prev_or_says_none_exists(tmp_path):
    path = tmp_path / "last.pth"
    ckpt.save_checkpoint(path, {"step": 1})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ckpt.CheckpointError, match="no older checkpoint exists: start over with --resume none"):
        ckpt.load_checkpoint(path)
    ckpt.save_checkpoint(tmp_path / "prev.pth", {"step": 0})
    with pytest.raises(ckpt.CheckpointError, match=r"--resume \S+prev\.pth"):
        ckpt.load_checkpoint(path)


def test_stale_temp_files_are_cleaned_at_start(tmp_path):
    stale = tmp_path / "run/checkpoints/.last.pth.abc123.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a checkpoint")
    Trainer(load_config([tiny_yaml(tmp_path)], ["SOLVER.MAX_STEPS", "1"]), cpu_env(), tmp_path / "run").fit()
    assert not stale.exists() and not list(stale.parent.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------------ 5. disk full
def test_disk_full_while_saving_is_one_sentence_and_exit_1(tmp_path, train_tool, capsys, monkeypatch):
    run = tmp_path / "run"
    code, _ = _cli(train_tool, capsys, ["--cfg", str(tiny_yaml(tmp_path)), "--run-dir", str(run),
                                        "SOLVER.MAX_STEPS", "1"])
    assert code == 0
    before = (run / "checkpoints/last.pth").read_bytes()

    def full(obj, f):
        f.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0") from None

    monkeypatch.setattr(ckpt, "_write_payload", full)
    code, err = _cli(train_tool, capsys, ["--cfg", str(tiny_yaml(tmp_path)), "--run-dir", str(run),
                                          "SOLVER.MAX_STEPS", "2", "EXPERIMENT.RESUME_ALLOW_CHANGES",
                                          "['SOLVER.MAX_STEPS']"])
    line = _one_error_line(err)
    assert code == 1 and "Traceback" not in err
    assert line.startswith(f"error: no space left on device while writing {run / 'checkpoints/last.pth'}; the "
                           "previous checkpoint") and "is intact; free space and rerun" in line
    assert (run / "checkpoints/last.pth").read_bytes() == before
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_io_error_while_saving_names_the_cause(tmp_path, monkeypatch):
    def broken(obj, f):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ckpt, "_write_payload", broken)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"I/O error while writing .*\(Input/output error\); no "):
        ckpt.save_checkpoint(tmp_path / "last.pth", {"step": 1})


# ------------------------------------------------------------------------------------------------ 6. history
def test_resume_keeps_each_step_once_in_metrics(tmp_path):
    y = tiny_yaml(tmp_path)
    cfg = load_config([y], ["SOLVER.MAX_STEPS", "6", "LOG.CKPT_EVERY_STEPS", "1"])
    Trainer(cfg, cpu_env(), tmp_path / "run").fit()
    ckpts = tmp_path / "run/checkpoints"
    os.replace(ckpts / "prev.pth", ckpts / "last.pth")  # as if killed after step 6 was logged, before its save
    with open(tmp_path / "run/metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 1.0')  # and a torn last line
    Trainer(cfg, cpu_env(), tmp_path / "run").fit(ckpts / "last.pth")
    steps = [r["step"] for r in records(tmp_path / "run") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_none_into_a_used_run_dir_needs_overwrite(tmp_path, train_tool, capsys):
    run, y = tmp_path / "run", str(tiny_yaml(tmp_path))
    assert _cli(train_tool, capsys, ["--cfg", y, "--run-dir", str(run), "SOLVER.MAX_STEPS", "2"])[0] == 0
    code, err = _cli(train_tool, capsys, ["--cfg", y, "--run-dir", str(run), "--resume", "none",
                                          "SOLVER.MAX_STEPS", "1"])
    assert code == 2 and "already holds a run" in _one_error_line(err) and "--overwrite" in err
    assert [r["step"] for r in records(run) if "loss" in r] == [1, 2]
    code, _ = _cli(train_tool, capsys, ["--cfg", y, "--run-dir", str(run), "--resume", "none", "--overwrite",
                                        "SOLVER.MAX_STEPS", "1"])
    assert code == 0 and [r["step"] for r in records(run) if "loss" in r] == [1]


# ------------------------------------------------------------------------------------------------ 7. config
BAD_OVERRIDES = [
    (["LOG.FREQ", "0"], "LOG.FREQ is 0"),
    (["SOLVER.BETAS", "[0.9]"], r"SOLVER.BETAS is \[0.9\] but must be two numbers"),
    (["DISTILLER.TEACHER_KWARGS.deptth", "4"], "'deptth' is not an argument.*did you mean 'depth'"),
    (["DATASET.TYPE", "imagenett"], "unknown DATASET.TYPE 'imagenett'; did you mean 'imagenet'"),
    (["SOLVER.WEIGHT_DECAY", "-0.1"], "SOLVER.WEIGHT_DECAY is -0.1 but must not be negative"),
    (["SOLVER.GRAD_CLIP", "-1.0"], "SOLVER.GRAD_CLIP is -1.0 but must not be negative"),
    (["LOG.CKPT_EVERY_STEPS", "-5"], "LOG.CKPT_EVERY_STEPS is -5 but must not be negative"),
    (["DATASET.PREFETCH_FACTOR", "0"], "DATASET.PREFETCH_FACTOR is 0 but must be an integer of at least 1"),
    (["SiNGER.M_LAYERS", "[-1]"], r"SiNGER.M_LAYERS \[-1\] names only the teacher's last block \(3\)"),
    (["EXPERIMENT.RESUME_ALLOW_CHANGES", "['SiNGER.OUTLIER_Q']"], "may only list"),
]


@pytest.mark.parametrize(("opts", "message"), BAD_OVERRIDES, ids=[o[0] for o, _ in BAD_OVERRIDES])
def test_meaningless_config_values_are_one_sentence(tmp_path, opts, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config([tiny_yaml(tmp_path)], opts)
    assert "\n" not in str(e.value)


def test_bad_yaml_files_name_the_file_and_exit_2(tmp_path, train_tool, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("SOLVER:\n  LR: [1,\n")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("5\n")
    for path, message in ((broken, r"invalid YAML at line \d+, column \d+"), (scalar, "holds a int, not a mapping")):
        code, err = _cli(train_tool, capsys, ["--cfg", str(path), "--run-dir", str(tmp_path / "r")])
        line = _one_error_line(err)
        assert code == 2 and str(path) in line and "unicode string" not in line
        assert re.search(message, line), line
    code, err = _cli(train_tool, capsys, ["--cfg", str(tiny_yaml(tmp_path)), "LOG.FREQ", "0",
                                          "--run-dir", str(tmp_path / "r")])
    assert code == 2 and not (tmp_path / "r").exists()  # before the run directory is written


def test_resume_after_optimizer_change_exits_2(tmp_path, train_tool, capsys):
    run, y = str(tmp_path / "run"), str(tiny_yaml(tmp_path))
    assert _cli(train_tool, capsys, ["--cfg", y, "--run-dir", run, "SOLVER.MAX_STEPS", "1"])[0] == 0
    code, err = _cli(train_tool, capsys, ["--cfg", y, "--run-dir", run, "SOLVER.MAX_STEPS", "2",
                                          "SOLVER.TYPE", "sgd"])
    assert code == 2 and "SOLVER.TYPE adamw → sgd" in _one_error_line(err)


# ------------------------------------------------------------------------------------------------ 7. images
def _image_tree(root: Path) -> Path:
    from PIL import Image

    for c in ("a", "b"):
        d = root / "train" / c
        d.mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (40, 40), (i * 30, 80 if c == "a" else 160, 0)).save(d / f"{i}.png")
    bad = root / "train/b/broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 4)
    return bad


def test_undecodable_training_image_stops_naming_it_or_is_skipped(tmp_path, train_tool, capsys):
    bad = _image_tree(tmp_path / "data")
    y = str(tiny_yaml(tmp_path))
    opts = ["DATASET.TYPE", "imagenet", "DATASET.ROOT", str(tmp_path / "data"), "DATASET.TRAIN_SIZE", "0",
            "DATASET.NUM_WORKERS", "1", "DATASET.PERSISTENT_WORKERS", "False", "SOLVER.MAX_STEPS", "2",
            "DATASET.WORKER_START", "forkserver"]
    code, err = _cli(train_tool, capsys, ["--cfg", y, "--run-dir", str(tmp_path / "r1"), *opts])
    line = _one_error_line(err)
    assert code == 1 and "Traceback" not in err
    assert line.startswith(f"error: training image '{bad}' cannot be decoded (") and line.endswith(
        "); replace or delete it, or set DATASET.SKIP_BAD_IMAGES True to skip undecodable images.")
    code, err = _cli(train_tool, capsys, ["--cfg", y, "--run-dir", str(tmp_path / "r2"), *opts,
                                          "DATASET.SKIP_BAD_IMAGES", "True"])
    assert code == 0 and "skipped" in err
    assert any(r.get("bad_images", 0) >= 1 for r in records(tmp_path / "r2"))


# ------------------------------------------------------------------------------------------------ 8. probes
def test_probe_result_does_not_depend_on_the_cache_history(tmp_path):
    from mdistiller.distillers import build_distiller
    from mdistiller.eval.features import FeatureSpec, load_backbone
    from mdistiller.eval.protocols import ClassificationTask
    from mdistiller.eval.runner import ProbeData, ProbeSettings, run_probe
    from tests.conftest import TINY_STUDENT, tiny_config
    from tests.test_lineval import _TwoTone

    distiller = build_distiller(tiny_config("FitNet", 32))
    distiller.export_student(tmp_path / "student.safetensors", "vit_tiny", dict(TINY_STUDENT) | {"img_size": 32})
    backbone = load_backbone(tmp_path)
    data = ProbeData("two_tone", train=_TwoTone(24), test=_TwoTone(8), augment="none")
    settings = ProbeSettings(epochs=2, batch_size=8, eval_batch_size=8, lrs=(0.01, 0.1), val_fraction=0.25,
                             cache_dir=str(tmp_path / "cache"), cache_dtype="float32")
    keys = ("metrics", "val_metrics", "train_loss", "chosen_lr")
    fresh = run_probe(backbone, FeatureSpec(), ClassificationTask(2), data, settings)
    torch.manual_seed(123)  # whatever ran before must not matter either
    reused = run_probe(backbone, FeatureSpec(), ClassificationTask(2), data, settings)
    assert reused["protocol"]["cache"]["train"]["path"] == fresh["protocol"]["cache"]["train"]["path"]
    assert {k: reused[k] for k in keys} == {k: fresh[k] for k in keys}


def test_probe_cli_interrupt_and_layer_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from mdistiller.eval import runner
    from mdistiller.eval.cli import main as lineval_main
    from tests.test_lineval import SMALL

    args = ["random:vit_tiny", "--dataset", "toy_scenes", *SMALL, "--out", str(tmp_path / "r.json"),
            "--cache-dir", str(tmp_path / "cache")]
    assert lineval_main("transfer", [*args, "--layers", "99"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: --layers: layers [99] fall outside the model's 12 blocks")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "build_cache", interrupted)
    assert lineval_main("transfer", args) == 130
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("interrupted;") and "rerun the same command" in err


def test_analysis_option_errors_exit_2_and_truncated_run_uses_analysis_wording(tmp_path, capsys):
    analyze = load_tool("analyze.py")
    model = ["--model", "vit_small", "--weights", "random", "--model-kwargs", "depth=2", "embed_dim=32",
             "num_heads=2", "--images", "toy", "--num-images", "2", "--no-figures", "--out", str(tmp_path / "a")]
    for argv, message in ((["nullspace", *model, "--rank", "9999"], "--rank 9999 exceeds the width 32"),
                          (["artifacts", *model, "--size", "-5"], "--size is -5 but must be a positive integer"),
                          (["subspace", *model, "--layers", "99"], r"layer\(s\) \[99\] fall outside")):
        assert analyze.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and re.search(message, err), err
    cfg = load_config([tiny_yaml(tmp_path)], ["SOLVER.MAX_STEPS", "1"])
    Trainer(cfg, cpu_env(), tmp_path / "run").fit()
    last = tmp_path / "run/checkpoints/last.pth"
    last.write_bytes(last.read_bytes()[:1000])
    assert analyze.main(["adapter", str(tmp_path / "run"), "--num-images", "2", "--no-figures"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot analyse run {tmp_path / 'run'}") and "start without resuming" not in err


def test_reliability_doc_names_existing_tests():
    doc = (ROOT / "docs/reliability.md").read_text()
    names = set(re.findall(r"`(test_\w+)`", doc))
    here = {n for n in globals() if n.startswith("test_")}
    other = set()
    for f in (ROOT / "tests").glob("test_*.py"):
        other |= set(re.findall(r"^def (test_\w+)", f.read_text(), flags=re.M))
    assert names and names <= here | other, names - here - other
    assert here - {"test_reliability_doc_names_existing_tests"} <= names, "every test here has a row in the doc"
