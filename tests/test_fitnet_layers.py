"""FitNet's layers come from ``FITNET.LAYERS``; configs and checkpoints written before the key existed still load,
train the same layers and resume."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from mdistiller.config import load_config
from mdistiller.distillers import plan_layers

ROOT = Path(__file__).resolve().parents[1]
TINY = """
DATASET: {TYPE: toy_scenes, INPUT_SIZE: 32, NUM_WORKERS: 0, TRAIN_SIZE: 32, VAL_SIZE: 8}
DISTILLER:
  TYPE: FitNet
  TEACHER: vit_small
  STUDENT: vit_tiny
  TEACHER_WEIGHTS: random
  TEACHER_KWARGS: {depth: 4, embed_dim: 96, num_heads: 3}
  STUDENT_KWARGS: {depth: 3, embed_dim: 48, num_heads: 3}
SiNGER: {M_LAYERS: [1], RANK: 8}
SOLVER: {LR: 1.0e-3, MAX_STEPS: 1, EPOCHS: 0, BATCH_SIZE: 8, AMP: none}
LOG: {FREQ: 1, PROGRESS: false, CKPT_EVERY_STEPS: 1, WANDB_FIGURES: false, GRAD_TERMS_EVERY_STEPS: 0}
"""


def test_shipped_fitnet_configs_train_the_layers_they_trained_before():
    """Every shipped FitNet config names FITNET.LAYERS, equal to the SiNGER.M_LAYERS FitNet used to read."""
    files = [p for p in (ROOT / "configs").rglob("*.yaml")
             if str(load_config([p], validate=False).DISTILLER.TYPE) == "FitNet"]
    assert len(files) >= 7
    for p in files:
        cfg = load_config([p], validate=False)
        assert list(cfg.FITNET.LAYERS) == list(cfg.SiNGER.M_LAYERS), p
    demo = load_config([ROOT / "configs/demo/fitnet.yaml"], validate=False)
    assert plan_layers(demo, 12, 12).teacher == [8, 11]


def test_a_config_without_fitnet_layers_keeps_fitnet_on_singer_m_layers(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(TINY)
    cfg = load_config([old])
    assert list(cfg.FITNET.LAYERS) == [1] and plan_layers(cfg, 4, 3).teacher == [1, 3]
    own = load_config([old], ["FITNET.LAYERS", "[2]"])
    assert plan_layers(own, 4, 3).teacher == [2, 3]


def _make_old(run_dir: Path) -> None:
    """Rewrite a run as if written before FITNET.LAYERS existed: no such key in config.yaml or the checkpoint."""
    from mdistiller.engine import checkpoint as ckpt

    def strip(text: str) -> str:
        node = yaml.safe_load(text)
        del node["FITNET"]["LAYERS"]
        return yaml.safe_dump(node)

    (run_dir / "config.yaml").write_text(strip((run_dir / "config.yaml").read_text()))
    path = run_dir / "checkpoints" / "last.pth"
    state = ckpt.load_checkpoint(path)
    state = {k: v for k, v in state.items() if not k.startswith("__")}
    assert "config" in state and "LAYERS" in yaml.safe_load(state["config"])["FITNET"]
    state["config"] = strip(state["config"])
    ckpt.save_checkpoint(path, state)


def test_a_fitnet_checkpoint_from_before_fitnet_layers_resumes_and_loads(tmp_path):
    import mdistiller
    from mdistiller.engine.load import load_run

    cfg_file = tmp_path / "tiny_fitnet.yaml"
    cfg_file.write_text(TINY)
    run_dir = tmp_path / "run"
    assert mdistiller.train(cfg_file, run_dir=run_dir, device="cpu")["step"] == 1
    _make_old(run_dir)
    _, d = load_run(run_dir)  # the old config.yaml: FitNet's layers from SiNGER.M_LAYERS, as trained
    assert d.plan.teacher == [1, 3] and set(d.proj) == {"1", "3"}
    before = {k: v.clone() for k, v in d.state_dict().items()}
    result = mdistiller.train(cfg_file, overrides={"SOLVER.MAX_STEPS": 2}, run_dir=run_dir, device="cpu")
    assert result["step"] == 2
    _, after = load_run(run_dir)
    assert set(after.state_dict()) == set(before)
    assert not torch.equal(after.state_dict()["proj.1.weight"], before["proj.1.weight"])  # it trained on
