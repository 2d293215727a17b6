"""The training engine end to end on tiny models and toy scenes (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mdistiller.config import load_config
from mdistiller.engine.checkpoint import CheckpointError, load_checkpoint
from mdistiller.engine.distributed import DistEnv
from mdistiller.engine.trainer import NonFiniteLossError, Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = """
DATASET: {TYPE: toy_scenes, INPUT_SIZE: 32, NUM_WORKERS: 0, TRAIN_SIZE: 64, VAL_SIZE: 8}
DISTILLER:
  TYPE: %(kind)s
  TEACHER: vit_small
  STUDENT: vit_tiny
  TEACHER_WEIGHTS: random
  TEACHER_KWARGS: {depth: 4, embed_dim: 96, num_heads: 3}
  STUDENT_KWARGS: {depth: 3, embed_dim: 48, num_heads: 3}
SiNGER: {M_LAYERS: [1], RANK: 8}
SOLVER: {LR: 1.0e-3, EPOCHS: 3, BATCH_SIZE: 16, AMP: none, WARMUP_EPOCHS: 0.5}
LOG: {FREQ: 1, PROGRESS: false, CKPT_EVERY_STEPS: 1}
"""


def tiny_yaml(tmp_path: Path, kind: str = "SiNGER") -> Path:
    p = tmp_path / f"tiny_{kind}.yaml"
    p.write_text(TINY % {"kind": kind})
    return p


def cpu_env() -> DistEnv:
    return DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None, is_main=True)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def loss_curve(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir) if "loss" in r}


def run_train(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "tools/train.py"), *args], env=env, capture_output=True,
                          text=True, **kw)


def test_in_process_run_writes_everything_and_no_teacher(tmp_path):
    cfg = load_config([tiny_yaml(tmp_path)], ["SOLVER.EPOCHS", "1"])
    trainer = Trainer(cfg, cpu_env(), tmp_path / "run")
    result = trainer.fit()
    run = tmp_path / "run"
    assert {"config.yaml", "run_info.json", "metrics.jsonl", "student.safetensors"} <= {p.name for p in run.iterdir()}
    assert trainer.step == 4 and any(k.startswith("agree/cos_target") for k in result)
    state = load_checkpoint(run / "checkpoints/last.pth")
    teacher_numels = {p.numel() for p in trainer.distiller.teacher.parameters()}
    assert not any(k.startswith("teacher") for k in state["model"])
    # no tensor of teacher-block shape leaks in under another name (the adapters are [96, 8] / [8, 96])
    assert not any(v.numel() in teacher_numels and v.shape == p.shape for k, v in state["model"].items()
                   for p in trainer.distiller.teacher.parameters() if p.ndim == 2 and p.shape[0] == p.shape[1] == 96)
    assert state["step"] == 4 and state["meta"]["distiller"] == "SiNGER"
    lrs = [r["lr"] for r in records(run) if "lr" in r]
    assert lrs[-1] == pytest.approx(1e-8)  # the cosine reaches FINAL_LR at the last step


def test_exported_student_loads_in_timm_and_matches(tmp_path):
    import timm

    cfg = load_config([tiny_yaml(tmp_path, "FitNet")], ["SOLVER.MAX_STEPS", "2"])
    trainer = Trainer(cfg, cpu_env(), tmp_path / "run")
    trainer.fit()
    meta = json.loads((tmp_path / "run/student.safetensors.json").read_text())
    m = timm.create_model(meta["timm_name"], pretrained=True, num_classes=0,
                          pretrained_cfg_overlay={"file": str(tmp_path / "run/student.safetensors")},
                          **meta["create_kwargs"]).eval()
    x = torch.rand(2, 3, 32, 32)
    s = trainer.distiller.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(m.forward_features(s.normalize(x)), s.model.forward_features(s.normalize(x)))


def test_resume_in_process_matches_uninterrupted(tmp_path):
    cfg = load_config([tiny_yaml(tmp_path)])
    full = Trainer(cfg, cpu_env(), tmp_path / "full")
    full.fit()
    cut = load_config([tiny_yaml(tmp_path)], ["SOLVER.MAX_STEPS", "0"])
    part = Trainer(cut, cpu_env(), tmp_path / "part")
    part.total_steps = 6  # stop mid-epoch 1 (4 steps per epoch), schedule length unchanged below
    part.scheduler.total_steps = full.scheduler.total_steps
    part.fit()
    resumed = Trainer(cfg, cpu_env(), tmp_path / "part")
    resumed.fit(resume=tmp_path / "part/checkpoints/last.pth")
    a, b = loss_curve(tmp_path / "full"), loss_curve(tmp_path / "part")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_same_final_metrics(tmp_path):
    cfg = tiny_yaml(tmp_path)
    ref = run_train(["--cfg", str(cfg), "--run-dir", str(tmp_path / "ref"), "--resume", "none"], timeout=300)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools/train.py"), "--cfg", str(cfg), "--run-dir", str(run),
                             "--resume", "none"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints/last.pth"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and load_step(ckpt) >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = load_step(ckpt)
    assert 5 <= killed_at < 12
    res = run_train(["--cfg", str(cfg), "--run-dir", str(run)], timeout=300)  # --resume auto
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stdout
    a, b = loss_curve(tmp_path / "ref"), loss_curve(run)
    assert b[12] == pytest.approx(a[12], rel=1e-6)
    from safetensors.torch import load_file

    sa, sb = load_file(tmp_path / "ref/student.safetensors"), load_file(run / "student.safetensors")
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-6, atol=1e-7)


def load_step(path: Path) -> int:
    try:
        return int(load_checkpoint(path)["step"])
    except CheckpointError:
        return -1


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process_same_global_batch(tmp_path):
    cfg = tiny_yaml(tmp_path, "FitNet")
    opts = ["SOLVER.MAX_STEPS", "6", "LOG.CKPT_EVERY_STEPS", "0"]
    one = run_train(["--cfg", str(cfg), "--run-dir", str(tmp_path / "one"), "--resume", "none", *opts], timeout=300)
    assert one.returncode == 0, one.stderr
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(ROOT / "tools/train.py"), "--cfg", str(cfg), "--run-dir", str(tmp_path / "two"),
                          "--resume", "none", *opts], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = loss_curve(tmp_path / "one"), loss_curve(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), (step, a, b)
    assert json.loads((tmp_path / "two/run_info.json").read_text())["world_size"] == 2


def test_corrupt_checkpoint_gives_one_sentence(tmp_path):
    cfg = load_config([tiny_yaml(tmp_path)])
    trainer = Trainer(cfg, cpu_env(), tmp_path / "run")
    bad = tmp_path / "last.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"last.pth is corrupt or truncated"):
        trainer.resume(bad)


def test_mismatched_checkpoint_names_the_mismatch(tmp_path):
    cfg = load_config([tiny_yaml(tmp_path)], ["SOLVER.MAX_STEPS", "1"])
    Trainer(cfg, cpu_env(), tmp_path / "run").fit()
    other = load_config([tiny_yaml(tmp_path)], ["SiNGER.RANK", "4"])
    with pytest.raises(CheckpointError, match=r"does not match this run.*adapters"):
        Trainer(other, cpu_env(), tmp_path / "x").resume(tmp_path / "run/checkpoints/last.pth")


def test_non_finite_loss_stops_with_step_and_term_keeping_checkpoint(tmp_path):
    cfg = load_config([tiny_yaml(tmp_path)], ["SOLVER.MAX_STEPS", "6"])
    trainer = Trainer(cfg, cpu_env(), tmp_path / "run")
    orig = trainer.distiller.forward

    def poisoned(images):
        out = orig(images)
        if trainer.step == 3:
            out["loss_outlier"] = out["loss_outlier"] * float("nan")
            out["loss"] = out["loss"] + out["loss_outlier"]
        return out

    trainer.distiller.forward = poisoned
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 4 \(term\(s\): loss, loss_outlier\)"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pth")["step"] == 3  # last good one intact


def test_sigterm_writes_checkpoint_and_stops(tmp_path):
    cfg = load_config([tiny_yaml(tmp_path)], ["LOG.CKPT_EVERY_STEPS", "0"])
    trainer = Trainer(cfg, cpu_env(), tmp_path / "run")
    orig = trainer.distiller.forward

    def forward(images):
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to the trainer's handler, not fatal
        return orig(images)

    trainer.distiller.forward = forward
    old = signal.getsignal(signal.SIGTERM)
    try:
        result = trainer.fit()
    finally:
        signal.signal(signal.SIGTERM, old)
    assert result["interrupted"] == signal.SIGTERM
    assert load_checkpoint(tmp_path / "run/checkpoints/last.pth")["step"] == 3  # mid-epoch, nothing lost
    assert not (tmp_path / "run/student.safetensors").exists()


def test_epoch_summary_records(tmp_path):
    cfg = load_config([tiny_yaml(tmp_path)], ["SOLVER.EPOCHS", "2"])
    Trainer(cfg, cpu_env(), tmp_path / "run").fit()
    ends = [r for r in records(tmp_path / "run") if "epoch_end" in r]
    assert [r["epoch_end"] for r in ends] == [0, 1] and all(r["steps"] == 4 for r in ends)
    steps = [r for r in records(tmp_path / "run") if "loss" in r and r["epoch"] == 0]
    assert ends[0]["epoch/loss"] == pytest.approx(sum(r["loss"] for r in steps) / 4)


def test_missing_data_folder_message(tmp_path):
    cfg = tiny_yaml(tmp_path)
    res = run_train(["--cfg", str(cfg), "--run-dir", str(tmp_path / "r"), "DATASET.TYPE", "imagenet",
                     "DATASET.TRAIN_SIZE", "0", "DATASET.ROOT", str(tmp_path / "nowhere")], timeout=120)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "nowhere" in last and "train/" in last


def test_cli_help_and_config_error():
    res = run_train(["--help"], timeout=60)
    assert res.returncode == 0 and "--cfg" in res.stdout
    res = run_train(["SOLVER.LRR", "1"], timeout=60)
    assert res.returncode == 2 and "did you mean 'SOLVER.LR'" in res.stderr
