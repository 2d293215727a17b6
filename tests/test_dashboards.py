"""wandb as the dashboard of record, read back from the offline run files: flat config, provenance, every
metrics.jsonl scalar, a resumed training continues the same run, and a probe result lands in the training run (and
in tools/lineval/table.py --wandb). Also TensorBoard scalars + hyper-parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdistiller.config import load_config
from mdistiller.engine.dashboards import ID_FILE, offline_runs
from mdistiller.engine.dashboards import read_offline_run as _read
from mdistiller.engine.trainer import Trainer
from tests.test_lineval import SMALL
from tests.test_train import cpu_env, records, tiny_yaml

pytest.importorskip("wandb")


def read_offline_run(folder: Path) -> dict:
    return _read(folder, wait=20.0)  # wandb's service writes the last records a moment after finish() returns


def _runs(run_dir: Path) -> dict[str, list[Path]]:
    return offline_runs(run_dir / "wandb")


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory) -> Path:
    """A tiny SiNGER run with LOG.WANDB on: 2 steps, then resumed to 4 (SGD recipe: no clipping)."""
    tmp = tmp_path_factory.mktemp("wb")
    opts = ["LOG.WANDB", "True", "LOG.TENSORBOARD", "True", "SOLVER.GRAD_CLIP", "0", "LOG.GRAD_TERMS_EVERY_STEPS", "2",
            "EXPERIMENT.NAME", "tiny-singer"]
    run, cfg = tmp / "run", load_config([tiny_yaml(tmp)], [*opts, "SOLVER.MAX_STEPS", "4"])
    first = Trainer(cfg, cpu_env(), run)
    first.total_steps = 2  # stops half-way, schedule unchanged (as an interrupted run)
    first.fit()
    Trainer(cfg, cpu_env(), run).fit(resume=run / "checkpoints/last.pth")
    return run


def test_flat_config_provenance_and_every_metric(wandb_run: Path) -> None:
    runs = _runs(wandb_run)
    assert len(runs) == 1, runs  # one wandb run id for the first session and the resumed one
    (run_id, folders), = runs.items()
    assert len(folders) == 2 and json.loads((wandb_run / ID_FILE).read_text())["id"] == run_id
    first = read_offline_run(folders[0])
    assert first["id"] == run_id and first["name"] == "tiny-singer"
    cfg = first["config"]
    assert cfg["SiNGER.RANK"] == 8 and cfg["SOLVER.LR"] == pytest.approx(1e-3) and cfg["DISTILLER.TYPE"] == "SiNGER"
    assert cfg["SiNGER.M_LAYERS"] == [1] and "git" in cfg and cfg["host"] and cfg["world_size"] == 1
    history = [row for f in folders for row in read_offline_run(f)["history"]]
    logged = {k for row in history for k in row}
    jsonl = {k for r in records(wandb_run) for k in r if k not in ("step", "time")
             and isinstance(r[k], int | float) and not isinstance(r[k], bool)}
    assert jsonl <= logged, jsonl - logged  # everything MetricsWriter logs reaches wandb
    assert {"loss", "loss_kd", "lr", "grad_norm", "img_per_s", "mem/rss_max_gb"} <= logged
    assert any(k.startswith("grad/") for k in logged) and any(k.startswith("agree/") for k in logged)
    assert all(row["grad_norm"] > 0 for row in history if "grad_norm" in row)  # logged although clipping is off
    assert any(k.startswith("figures/") for k in logged)  # feature maps at the end of each session
    summary = read_offline_run(folders[1])["summary"]
    assert summary["final_step"] == 4 and "wall_s" in summary and "final/loss" in summary


def test_tensorboard_scalars_and_hparams(wandb_run: Path) -> None:
    events = list((wandb_run / "tb").rglob("events.out.tfevents.*"))
    assert events and any("hparams" in str(p) for p in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(wandb_run / "tb"))
    acc.Reload()
    assert {"loss", "lr", "grad_norm"} <= set(acc.Tags()["scalars"])


def test_probe_result_lands_in_the_training_run_and_the_table(wandb_run: Path, capsys) -> None:
    from mdistiller.eval.cli import main as lineval_main
    from mdistiller.eval.table import main as table_main

    assert lineval_main("transfer", [str(wandb_run), "--dataset", "toy_scenes", *SMALL, "--lrs", "1e-2",
                                     "--wandb"]) == 0
    runs = _runs(wandb_run)
    assert len(runs) == 1  # still the training run's id
    last = read_offline_run(list(runs.values())[0][-1])
    cell = last["summary"]["lineval/toy_scenes_cls"]
    result = json.loads((wandb_run / "lineval/toy_scenes_cls.json").read_text())
    assert cell["metrics"]["top1"] == pytest.approx(result["metrics"]["top1"])
    assert any("lineval/toy_scenes_cls/top1" in row for row in last["history"])
    capsys.readouterr()
    assert table_main(["--wandb", str(wandb_run)]) == 0
    out = capsys.readouterr().out
    assert "tiny-singer" in out and f"{result['metrics']['top1']:.2f}" in out


def test_probe_wandb_without_a_wandb_run_warns(tmp_path: Path) -> None:
    from mdistiller.engine.dashboards import log_to_run

    with pytest.warns(UserWarning, match="has no wandb run"):
        assert log_to_run(tmp_path, {"x": 1.0}) is False


def test_analysis_lands_in_the_training_run(wandb_run: Path, capsys) -> None:
    from tests.helpers import load_tool

    assert load_tool("analyze.py").main(["adapter", str(wandb_run), "--num-images", "2", "--wandb"]) == 0
    folders = list(_runs(wandb_run).values())[0]
    last = read_offline_run(folders[-1])
    assert any(k.startswith("analysis/adapter/") for k in last["summary"]), sorted(last["summary"])[:20]
    figures = json.loads((wandb_run / "analysis/adapter.json").read_text())["figures"]
    assert figures and any(k.startswith("analysis/adapter/") for row in last["history"] for k in row)
