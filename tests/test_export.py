"""``mdistiller-export``: a student from any checkpoint, timm-loadable; foreign, corrupt or non-finite ones refused."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mdistiller.config import load_config
from mdistiller.engine import checkpoint as ckpt
from mdistiller.engine.export import ExportError, export_checkpoint, main
from mdistiller.engine.trainer import Trainer
from tests.test_train import cpu_env, tiny_yaml


def _train(tmp_path: Path, name: str, *opts: str, interrupt: bool = False) -> tuple[Path, Trainer]:
    cfg = load_config([tiny_yaml(tmp_path, "SiNGER")], ["SOLVER.MAX_STEPS", "3", *opts])
    run = tmp_path / name
    trainer = Trainer(cfg, cpu_env(), run)
    if interrupt:  # a real SIGTERM during the first step: one step, a checkpoint, no student file
        first_step = trainer.train_step

        def step_then_signal(*args, **kwargs):
            out = first_step(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)
            return out

        trainer.train_step = step_then_signal
    trainer.fit()
    return run, trainer


def _timm_student(path: Path) -> torch.nn.Module:
    import timm

    meta = json.loads(Path(str(path) + ".json").read_text())
    return timm.create_model(meta["timm_name"], pretrained=True, num_classes=0,
                             pretrained_cfg_overlay={"file": str(path)}, **meta["create_kwargs"]).eval()


def test_interrupted_run_exports_a_student_that_timm_loads(tmp_path):
    run, trainer = _train(tmp_path, "cut", interrupt=True)
    assert not (run / "student.safetensors").exists() and trainer.step == 1
    out = tmp_path / "student.safetensors"
    assert main([str(run), "--out", str(out)]) == 0
    model = _timm_student(out)
    s = trainer.distiller.student.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(s.normalize(x)), s.model.forward_features(s.normalize(x)),
                                   rtol=0, atol=0)
    assert json.loads((tmp_path / "student.safetensors.json").read_text())["source"]["step"] == 1


def test_last_equals_the_trainers_own_export_and_prev_is_the_step_before(tmp_path):
    run, _ = _train(tmp_path, "run")
    done = export_checkpoint(run, "last")
    assert done.step == 3 and done.student == run / "exports/student_step3.safetensors"
    mine, trainers = load_file(str(done.student)), load_file(str(run / "student.safetensors"))
    assert mine.keys() == trainers.keys() and all(torch.equal(mine[k], trainers[k]) for k in mine)
    prev = export_checkpoint(run, "prev", tmp_path / "prev.safetensors", extras=True)
    assert prev.step == 2
    older = load_file(str(prev.student))
    assert any(not torch.equal(older[k], mine[k]) for k in mine)  # a trained step apart
    extras = load_file(str(prev.extras))
    assert any(k.startswith("adapters.") for k in extras) and any(k.startswith("proj.") for k in extras)
    assert not any(k.startswith(("student.", "teacher")) for k in extras)


def test_refusals_are_one_sentence_with_exit_2(tmp_path, capsys):
    run, _ = _train(tmp_path, "run")
    foreign = tmp_path / "foreign.pth"
    torch.save({"weight": torch.zeros(3)}, foreign)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint" * 10)
    state = ckpt.load_checkpoint(run / "checkpoints/last.pth")
    key = next(k for k in state["model"] if k.startswith("student.model.blocks"))
    state["model"][key] = torch.full_like(state["model"][key], float("nan"))
    nan = tmp_path / "nan.pth"
    ckpt.save_checkpoint(nan, state)
    cases = {str(foreign): "not a checkpoint written by tools/train.py", str(garbage): "corrupt or truncated",
             str(nan): "non-finite values", str(tmp_path / "missing.pth"): "does not exist"}
    for path, words in cases.items():
        assert main([str(run), "--checkpoint", path, "--out", str(tmp_path / "x.safetensors")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.safetensors").exists()


def test_a_checkpoint_without_config_is_checked_against_the_run_dirs_architecture(tmp_path):
    run, _ = _train(tmp_path, "run")
    other, _ = _train(tmp_path, "wide", "DISTILLER.STUDENT_KWARGS.embed_dim", "96")
    state = ckpt.load_checkpoint(other / "checkpoints/last.pth")
    del state["config"]
    stray = tmp_path / "stray.pth"
    ckpt.save_checkpoint(stray, state)
    with pytest.raises(ExportError, match="does not match its config's vit_tiny.*wrong shape"):
        export_checkpoint(run, str(stray), tmp_path / "y.safetensors")
