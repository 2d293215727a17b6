"""wandb as the dashboard of record, read back from the offline run files (the transaction logs): flat config,
provenance, every metrics.jsonl scalar; a run resumed twice (once after a kill that replays a step) continues the same
run with every training step exactly once across its segments, each at its own step; probe and analysis results go
to runs of their own in the training run's group, never into its step axis (and still reach tools/lineval/table.py
--wandb); mdistiller-sync uploads the segments in order with the options that append. Also TensorBoard scalars,
figures and hyper-parameters."""

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


STEPS = 5


def _session(run: Path, cfg, stop_at: int, resume: Path | None = None) -> None:
    trainer = Trainer(cfg, cpu_env(), run)
    trainer.total_steps = stop_at  # stops early, schedule unchanged (as an interrupted run)
    trainer.fit(resume=resume)


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory) -> Path:
    """A tiny SiNGER run with LOG.WANDB on (SGD recipe: no clipping), in three offline sessions: steps 1-3; then
    resumed from the step-2 checkpoint (prev.pth: as after a kill between step 3's log line and its checkpoint),
    replaying step 3, to step 4; then resumed to step 5."""
    tmp = tmp_path_factory.mktemp("wb")
    opts = ["LOG.WANDB", "True", "LOG.TENSORBOARD", "True", "SOLVER.GRAD_CLIP", "0", "LOG.GRAD_TERMS_EVERY_STEPS", "2",
            "EXPERIMENT.NAME", "tiny-singer"]
    run, cfg = tmp / "run", load_config([tiny_yaml(tmp)], [*opts, "SOLVER.MAX_STEPS", str(STEPS)])
    _session(run, cfg, 3)
    _session(run, cfg, 4, resume=run / "checkpoints/prev.pth")
    _session(run, cfg, STEPS, resume=run / "checkpoints/last.pth")
    return run


def _training(run_dir: Path) -> tuple[str, list[Path]]:
    run_id = json.loads((run_dir / ID_FILE).read_text())["id"]
    return run_id, _runs(run_dir)[run_id]


def test_every_step_once_across_the_resumed_segments(wandb_run: Path) -> None:
    run_id, folders = _training(wandb_run)
    assert len(folders) == 3  # one offline segment per session, one run id
    segments = [read_offline_run(f) for f in folders]
    assert all(seg["id"] == run_id and seg["closed"] for seg in segments)
    loss_steps = [step for seg in segments for step, row in zip(seg["steps"], seg["history"]) if "loss" in row]
    assert loss_steps == list(range(1, STEPS + 1))  # each step once, in order, at its own step (none at 0)
    per_segment = [seg["steps"] for seg in segments]
    assert per_segment[0][-1] == 3 and 3 not in per_segment[1]  # the replayed step 3 is not logged a second time
    flat = [s for steps in per_segment for s in steps]
    assert flat == sorted(set(flat)) and None not in flat  # strictly increasing across segments: nothing to drop
    assert [r["step"] for r in records(wandb_run) if "loss" in r] == list(range(1, STEPS + 1))  # metrics.jsonl too


def test_flat_config_provenance_and_every_metric(wandb_run: Path) -> None:
    run_id, folders = _training(wandb_run)
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
    summary = read_offline_run(folders[-1])["summary"]
    assert summary["final_step"] == STEPS and "wall_s" in summary and "final/loss" in summary
    assert summary["img_per_s"] > 0


def test_tensorboard_scalars_figures_and_hparams(wandb_run: Path) -> None:
    events = list((wandb_run / "tb").rglob("events.out.tfevents.*"))
    assert events and any("hparams" in str(p) for p in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(wandb_run / "tb"))
    acc.Reload()
    assert {"loss", "lr", "grad_norm"} <= set(acc.Tags()["scalars"])
    figures = [t for t in acc.Tags()["images"] if t.startswith("figures/")]
    assert figures  # the feature maps wandb gets, in TensorBoard's IMAGES tab
    assert {e.step for e in acc.Images(figures[0])} >= {3, STEPS}
    hp_tags = set()
    for folder in {p.parent for p in (wandb_run / "tb").rglob("events.out.tfevents.*") if "hparams" in str(p)}:
        hp = EventAccumulator(str(folder))
        hp.Reload()
        hp_tags |= set(hp.Tags()["scalars"])
    assert {"final/loss", "final_step", "wall_s"} <= hp_tags
    assert not any(t.startswith("final/final") for t in hp_tags), sorted(hp_tags)


def _side_runs(run_dir: Path, job_type: str) -> list[dict]:
    run_id = json.loads((run_dir / ID_FILE).read_text())["id"]
    found = [read_offline_run(f) for rid, folders in _runs(run_dir).items() if rid != run_id for f in folders]
    return [r for r in found if r["job_type"] == job_type]


def _training_untouched(run_dir: Path, prefix: str) -> None:
    """The training run still has its three segments, and none holds a key of ``prefix`` (no row below its step)."""
    _, folders = _training(run_dir)
    assert len(folders) == 3
    for seg in map(read_offline_run, folders):
        assert not any(k.startswith(prefix) for row in seg["history"] for k in row)
        assert not any(k.startswith(prefix) for k in seg["summary"])


def test_probe_result_is_its_own_run_in_the_group_and_reaches_the_table(wandb_run: Path, capsys) -> None:
    from mdistiller.eval.cli import main as lineval_main
    from mdistiller.eval.table import main as table_main

    assert lineval_main("transfer", [str(wandb_run), "--dataset", "toy_scenes", *SMALL, "--lrs", "1e-2",
                                     "--wandb"]) == 0
    _training_untouched(wandb_run, "lineval/")
    probe, = _side_runs(wandb_run, "eval")
    training = read_offline_run(_training(wandb_run)[1][0])
    assert probe["group"] == training["group"] and training["job_type"] == "train" and training["group"]
    assert probe["config"]["train_run_id"] == training["id"] and probe["config"]["train_step"] == STEPS
    assert not probe["history"]  # results are summary entries, on no step axis
    cell = probe["summary"]["lineval/toy_scenes_cls"]
    result = json.loads((wandb_run / "lineval/toy_scenes_cls.json").read_text())
    assert cell["metrics"]["top1"] == pytest.approx(result["metrics"]["top1"])
    assert probe["summary"]["lineval/toy_scenes_cls/top1"] == pytest.approx(result["metrics"]["top1"])
    capsys.readouterr()
    assert table_main(["--wandb", str(wandb_run)]) == 0
    out = capsys.readouterr().out
    assert "tiny-singer" in out and f"{result['metrics']['top1']:.2f}" in out  # one row: the group, by its name


def test_probe_wandb_without_a_wandb_run_warns(tmp_path: Path) -> None:
    from mdistiller.engine.dashboards import log_to_run

    with pytest.warns(UserWarning, match="has no wandb run"):
        assert log_to_run(tmp_path, {"x": 1.0}) is False


def test_analysis_is_its_own_run_in_the_group(wandb_run: Path, capsys) -> None:
    from tests.helpers import load_tool

    assert load_tool("analyze.py").main(["adapter", str(wandb_run), "--num-images", "2", "--wandb"]) == 0
    _training_untouched(wandb_run, "analysis/")
    run, = _side_runs(wandb_run, "analysis")
    assert any(k.startswith("analysis/adapter/") for k in run["summary"]), sorted(run["summary"])[:20]
    assert run["name"] == "tiny-singer/adapter"
    figures = json.loads((wandb_run / "analysis/adapter.json").read_text())["figures"]
    assert figures and run["steps"] == [0]  # its figures: the one row of its own step axis
    assert any(k.startswith("analysis/adapter/") for k in run["history"][0])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(wandb_run / "tb/analysis"))  # and the run's TensorBoard, at its last step
    acc.Reload()
    tags = [t for t in acc.Tags()["images"] if t.startswith("analysis/adapter/")]
    assert len(tags) == len(figures) and acc.Images(tags[0])[0].step == STEPS


# ------------------------------------------------------------------------------------------------ mdistiller-sync
FAKE_WANDB = """
import sys
HELP = "Usage: wandb sync [OPTIONS] [PATHS]...\\n  --id TEXT  Upload to an existing run ID."
if sys.argv[1:] == ["sync", "--help"]:
    print(HELP + ("\\n  --append  Append run" if LEGACY else ""))
else:
    with open(LOG, "a") as f:
        f.write(repr(sys.argv[1:]) + "\\n")
"""


def _fake_wandb(tmp_path: Path, legacy: bool) -> tuple[str, Path]:
    """A stand-in ``wandb`` command line: answers ``sync --help`` (the older one lists ``--append``) and records
    every other call in a file."""
    import sys

    log = tmp_path / f"calls_{int(legacy)}.txt"
    script = tmp_path / f"fake_wandb_{int(legacy)}.py"
    script.write_text(f"LEGACY = {legacy}\nLOG = {str(log)!r}\n" + FAKE_WANDB)
    return f"{sys.executable} {script}", log


def test_sync_plans_every_segment_in_order_with_appending_options(wandb_run: Path) -> None:
    from mdistiller.engine.wandb_sync import segments, sync_commands

    run_id, folders = _training(wandb_run)
    runs = segments(wandb_run)
    assert next(iter(runs)) == run_id and [s.folder for s in runs[run_id]] == folders  # training run first
    assert [(s.steps[0], s.steps[-1]) for s in runs[run_id]] == [(1, 3), (4, 4), (STEPS, STEPS)]
    modern = sync_commands(runs, ["wandb"], "Usage: wandb sync [OPTIONS] [PATHS]...\n  --id TEXT")
    assert modern[0] == ["wandb", "sync", *map(str, folders)]  # one call: wandb syncs them in start-time order
    assert not any("--append" in c for c in modern)
    legacy = sync_commands(runs, ["wandb"], "  --append  Append run")
    assert legacy[:3] == [["wandb", "sync", str(folders[0])],
                          ["wandb", "sync", "--id", run_id, "--append", str(folders[1])],
                          ["wandb", "sync", "--id", run_id, "--append", str(folders[2])]]


def test_sync_runs_the_planned_commands_and_skips_synced_folders(wandb_run: Path, tmp_path: Path, capsys) -> None:
    from mdistiller.engine.wandb_sync import main

    run_id, folders = _training(wandb_run)
    for legacy in (False, True):
        cmd, log = _fake_wandb(tmp_path, legacy)
        assert main([str(wandb_run), "--dry-run", "--wandb", cmd]) == 0
        assert not log.exists()  # a dry run syncs nothing
        out = capsys.readouterr().out
        assert "training run" in out and "history steps 1–3" in out and "would run" in out
        marker = next(folders[0].glob("*.wandb")).with_suffix(".wandb.synced")
        marker.touch()  # as wandb marks a folder it uploaded
        try:
            assert main([str(wandb_run), "--wandb", cmd, "--project", "p"]) == 0
        finally:
            marker.unlink()
        calls = [eval(line) for line in log.read_text().splitlines()]  # noqa: S307 - our own repr lines
        first = calls[0]
        assert str(folders[0]) not in first and first[:3] == ["sync", "--project", "p"]
        if legacy:  # the second segment still continues the run: it is not the run's first
            assert first[3:] == ["--id", run_id, "--append", str(folders[1])]
            assert calls[1][3:] == ["--id", run_id, "--append", str(folders[2])]
        else:
            assert first[3:] == [str(folders[1]), str(folders[2])]
    assert main([str(tmp_path)]) == 2 and "no wandb/ folder" in capsys.readouterr().err


def test_sync_dry_run_with_the_installed_wandb(wandb_run: Path, capsys) -> None:
    from mdistiller.cli import sync

    assert sync([str(wandb_run), "--dry-run"]) == 0
    out = capsys.readouterr().out
    _, folders = _training(wandb_run)
    assert f"-m wandb sync {folders[0]}" in out.replace("'", "")
