"""A run is what its config says: sweeps get their own run directories, a resume that changes what is trained is
refused in one sentence (nothing written), history is never restarted, and derived results name the student they
measured (docs/reliability.md, "Run identity, history and derived results")."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from mdistiller.config import load_config
from mdistiller.engine import checkpoint as ckpt
from mdistiller.engine.fingerprint import student_fingerprint, weights_fingerprint
from mdistiller.engine.identity import config_changes, flat_config, permitted, refusal, run_name
from mdistiller.engine.trainer import Trainer
from tests.helpers import load_tool
from tests.test_lineval import SMALL
from tests.test_train import cpu_env, records, tiny_yaml


@pytest.fixture(scope="module")
def train_tool():
    return load_tool("train.py")


def _files(tmp_path: Path, **solver) -> list[str]:
    """The tiny config plus a file that names the run (``OUT/sweep/tiny``) and sets ``solver`` keys."""
    extra = tmp_path / "extra.yaml"
    body = ", ".join(f"{k}: {v}" for k, v in ({"MAX_STEPS": 2} | solver).items())
    extra.write_text(f"EXPERIMENT: {{OUTPUT_DIR: '{tmp_path / 'out'}', PROJECT: sweep, NAME: tiny}}\n"
                     f"SOLVER: {{{body}}}\n")
    return [str(tiny_yaml(tmp_path)), str(extra)]


def _cli(tool, capsys, args: list[str]) -> tuple[int, str]:
    """``(exit status, stdout + stderr)`` of an in-process ``tools/train.py``."""
    code = tool.main(args)
    out = capsys.readouterr()
    return code, (out.out + out.err).strip()


def _error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def _loss_steps(run: Path) -> list[int]:
    return [r["step"] for r in records(run) if "loss" in r]


# ------------------------------------------------------------------------------------------------ naming
def test_run_name_carries_the_overrides_that_change_what_is_trained(tmp_path):
    files = _files(tmp_path)
    base = load_config(files, validate=False)

    def name(*opts: str) -> str:
        return run_name(load_config(files, list(opts), validate=False), base, list(opts[0::2]))

    assert name() == "tiny"
    assert name("SOLVER.LR", "2e-3") == "tiny,SOLVER.LR=0.002"
    assert name("SOLVER.LR", "1e-3") == "tiny"  # the value the files already give: the same run
    assert name("SiNGER.OUTLIER_Q", "0.9", "EXPERIMENT.SEED", "3") == "tiny,SiNGER.OUTLIER_Q=0.9,EXPERIMENT.SEED=3"
    assert name("LOG.FREQ", "5", "DATASET.NUM_WORKERS", "2", "DATASET.ROOT", "/x", "LOG.WANDB", "True") == "tiny"
    assert name("SiNGER.M_LAYERS", "[1, 2]") == "tiny,SiNGER.M_LAYERS=[1,2]"
    assert name("EXPERIMENT.NAME", "mine", "SOLVER.LR", "2e-3") == "mine"  # an explicit name is taken as given
    weights = name("DISTILLER.STUDENT_WEIGHTS", str(tmp_path / "init.safetensors"))
    assert re.fullmatch(r"tiny,DISTILLER\.STUDENT_WEIGHTS=@[0-9a-f]{8}", weights)
    assert name("SOLVER.LR", "3e-3") != name("SOLVER.LR", "4e-3")
    many = name(*[x for k in ("LR", "FINAL_LR", "WEIGHT_DECAY", "GAMMA", "EPS", "MOMENTUM", "GRAD_CLIP")
                  for x in (f"SOLVER.{k}", "0.123456789")])
    assert re.fullmatch(r"tiny,@[0-9a-f]{12}", many)
    # the README's dashboard command lands where the README says (output/demo/singer)
    demo = ["configs/demo/singer.yaml"]
    opts = ["LOG.WANDB", "True", "LOG.TENSORBOARD", "True"]
    assert run_name(load_config(demo, opts, validate=False), load_config(demo, validate=False), opts[0::2]) == "singer"


def test_config_changes_sort_keys_into_free_allowable_and_never():
    from tests.conftest import tiny_config

    old = flat_config(tiny_config())
    new_cfg = tiny_config(**{"LOG.FREQ": 3, "DATASET.NUM_WORKERS": 7, "EXPERIMENT.NAME": "x", "SOLVER.LR": 1.0,
                             "SOLVER.TYPE": "sgd", "SiNGER.OUTLIER_Q": 0.5})
    new_cfg.DISTILLER.TEACHER_KWARGS["mlp_ratio"] = 2.0
    changes = config_changes(old, flat_config(new_cfg))
    assert {str(c) for c in changes} == {"SiNGER.OUTLIER_Q 0.95 → 0.5", "SOLVER.TYPE adamw → sgd",
                                         "SOLVER.LR 0.0001 → 1.0", "DISTILLER.TEACHER_KWARGS.mlp_ratio (unset) → 2.0"}
    ok, refused = permitted(changes, ["SOLVER.LR", "SOLVER.TYPE"])  # TYPE is never allowable
    assert [c.key for c in ok] == ["SOLVER.LR"] and "SOLVER.TYPE" in [c.key for c in refused]
    text = refusal("checkpoint x", 7, refused)
    assert "\n" not in text and text.count(". ") == 0 and "(step 7)" in text
    assert "cannot change within a run" in text and "the state of one optimizer cannot drive another" in text
    text = refusal("checkpoint x", 7, ok)
    assert "EXPERIMENT.RESUME_ALLOW_CHANGES \"['SOLVER.LR']\"" in text and "from step 7" in text
    # a teacher file may move (its bytes are checked separately); a switch to another kind of weights may not
    moved = config_changes({"DISTILLER.TEACHER_WEIGHTS": "/a/t.pth"}, {"DISTILLER.TEACHER_WEIGHTS": "/b/t.pth"})
    assert moved == []
    # keys added to or removed from the defaults since a checkpoint was written are not changes; open-node keys are
    assert config_changes({"SOLVER.OLD_KEY": 1}, {"SOLVER.LR": 0.0001}) == []
    assert [c.key for c in config_changes({"DISTILLER.STUDENT_KWARGS.depth": 3}, {})] == \
        ["DISTILLER.STUDENT_KWARGS.depth"]
    assert config_changes({"DISTILLER.TEACHER_WEIGHTS": "random"}, {"DISTILLER.TEACHER_WEIGHTS": "pretrained"})


def test_loader_workers_are_free_except_for_a_streamed_dataset():
    from tests.conftest import tiny_config

    def workers_change(**data) -> list[str]:
        old = tiny_config(**{f"DATASET.{k}": v for k, v in data.items()} | {"DATASET.NUM_WORKERS": 2})
        new = tiny_config(**{f"DATASET.{k}": v for k, v in data.items()} | {"DATASET.NUM_WORKERS": 4})
        return [c.key for c in config_changes(flat_config(old), flat_config(new))]

    assert workers_change() == [] and workers_change(FORMAT="wds", WDS_MODE="index") == []
    assert workers_change(FORMAT="wds", WDS_MODE="stream") == ["DATASET.NUM_WORKERS"]
    old = tiny_config(**{"DATASET.FORMAT": "wds", "DATASET.WDS_MODE": "stream"})
    new = tiny_config(**{"DATASET.FORMAT": "wds", "DATASET.WDS_MODE": "stream", "DATASET.NUM_WORKERS": 3})
    text = refusal("checkpoint x", 4, config_changes(flat_config(old), flat_config(new)))
    assert "DATASET.NUM_WORKERS" in text and "sets the sample order" in text


def test_lr_sweep_gives_one_run_dir_per_value_and_a_rerun_resumes_its_own(tmp_path, train_tool, capsys):
    files = _files(tmp_path)
    for lr in ("1e-3", "2e-3"):
        assert _cli(train_tool, capsys, ["--cfg", *files, "SOLVER.LR", lr])[0] == 0
    base, other = tmp_path / "out/sweep/tiny", tmp_path / "out/sweep/tiny,SOLVER.LR=0.002"
    for run, lr in ((base, 1e-3), (other, 2e-3)):
        assert load_config([run / "config.yaml"], validate=False).SOLVER.LR == lr
        assert _loss_steps(run) == [1, 2]
    assert load_config([other / "config.yaml"], validate=False).EXPERIMENT.NAME == other.name
    before = _snapshot(other)
    code, err = _cli(train_tool, capsys, ["--cfg", *files, "SOLVER.LR", "2e-3"])  # the same command again
    after = _snapshot(other)
    assert code == 0 and f"resuming from {other / 'checkpoints/last.pth'}" in err
    assert _loss_steps(other) == [1, 2]  # resumed its own run: nothing retrained
    assert {k: after[k] for k in ("config.yaml", "checkpoints/last.pth", "metrics.jsonl")} == \
        {k: before[k] for k in ("config.yaml", "checkpoints/last.pth", "metrics.jsonl")}
    # an explicit name is taken as given, and then another LR is refused naming old → new; nothing is written
    before = _snapshot(base)
    code, err = _cli(train_tool, capsys, ["--cfg", *files, "EXPERIMENT.NAME", "tiny", "SOLVER.LR", "2e-3"])
    line = _error(err)
    assert code == 2 and "SOLVER.LR 0.001 → 0.002" in line and "RESUME_ALLOW_CHANGES" in line
    assert _snapshot(base) == before
    # the Python API names its runs the same way
    import mdistiller

    run = mdistiller.train(files, overrides={"SOLVER.LR": 3e-3})
    assert run["run_dir"] == tmp_path / "out/sweep/tiny,SOLVER.LR=0.003" and run["step"] == 2


# ------------------------------------------------------------------------------------------------ identity on resume
@pytest.mark.parametrize(("opts", "shown", "advice"), [
    (["SOLVER.WEIGHT_DECAY", "0.5"], "SOLVER.WEIGHT_DECAY 0.05 → 0.5", "RESUME_ALLOW_CHANGES"),
    (["SiNGER.OUTLIER_Q", "0.9"], "SiNGER.OUTLIER_Q 0.95 → 0.9", "cannot change within a run"),
    (["EXPERIMENT.SEED", "1", "SOLVER.LR", "2e-3"], "EXPERIMENT.SEED 0 → 1; SOLVER.LR 0.001 → 0.002",
     "EXPERIMENT.SEED cannot change within a run"),
], ids=["weight_decay", "outlier_q", "seed_and_lr"])
def test_a_resume_that_changes_what_is_trained_is_one_sentence_and_writes_nothing(tmp_path, train_tool, capsys, opts,
                                                                                   shown, advice):
    files, run = _files(tmp_path), tmp_path / "run"
    assert _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run)])[0] == 0
    before = _snapshot(run)
    code, err = _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run), *opts])
    line = _error(err)
    assert code == 2 and shown in line and advice in line and "(step 2)" in line
    assert _snapshot(run) == before  # config.yaml is never rewritten to values the weights were not trained with


def test_an_allowed_change_takes_effect_and_is_recorded_with_its_step(tmp_path, train_tool, capsys):
    files, run = _files(tmp_path, SCHEDULE="constant", WARMUP_EPOCHS=0), tmp_path / "run"
    assert _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run)])[0] == 0
    # a longer MAX_STEPS under a constant schedule leaves every trained step's LR as it was: free, and recorded
    allow = ["EXPERIMENT.RESUME_ALLOW_CHANGES", "['SOLVER.WEIGHT_DECAY']"]
    code, err = _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run), "SOLVER.MAX_STEPS", "3",
                                          "SOLVER.WEIGHT_DECAY", "0.5", *allow])
    assert code == 0 and "continuing from step 2 with SOLVER.MAX_STEPS 2 → 3, SOLVER.WEIGHT_DECAY 0.05 → 0.5" in err
    assert _loss_steps(run) == [1, 2, 3]
    expected = [{"step": 2, "key": "SOLVER.MAX_STEPS", "old": 2, "new": 3},
                {"step": 2, "key": "SOLVER.WEIGHT_DECAY", "old": 0.05, "new": 0.5}]
    assert json.loads((run / "run_info.json").read_text())["changes"] == expected
    state = ckpt.load_checkpoint(run / "checkpoints/last.pth")
    assert state["changes"] == expected and state["step"] == 3
    decays = {g["weight_decay"] for g in state["optimizer"]["param_groups"]}
    assert 0.5 in decays and 0.05 not in decays  # the optimizer really uses the new weight decay
    assert load_config([run / "config.yaml"], validate=False).SOLVER.WEIGHT_DECAY == 0.5
    # the next resume keeps the history (and adds nothing when nothing changes)
    code, _ = _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run), "SOLVER.MAX_STEPS", "3",
                                        "SOLVER.WEIGHT_DECAY", "0.5", *allow])
    assert code == 0 and json.loads((run / "run_info.json").read_text())["changes"] == expected


def test_a_longer_cosine_needs_permission_and_a_shorter_total_is_refused(tmp_path, train_tool, capsys):
    files, run = _files(tmp_path, WARMUP_EPOCHS=0), tmp_path / "run"
    assert _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run)])[0] == 0
    before = _snapshot(run)
    code, err = _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run), "SOLVER.MAX_STEPS", "4"])
    assert code == 2 and "SOLVER.MAX_STEPS 2 → 4" in _error(err) and "RESUME_ALLOW_CHANGES" in err
    code, err = _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run), "SOLVER.MAX_STEPS", "1"])
    line = _error(err)
    assert code == 2 and "is at step 2, beyond the 1 steps this config trains (SOLVER.MAX_STEPS 1)" in line
    assert "done" not in err and _snapshot(run) == before
    # a checkpoint without its config is compared with the run's config.yaml
    last = run / "checkpoints/last.pth"
    state = ckpt.load_checkpoint(last)
    del state["config"]
    with pytest.raises(ckpt.CheckpointMismatchError, match="SOLVER.LR 0.001 → 0.005"):
        Trainer(load_config(files, ["SOLVER.LR", "5e-3"]), cpu_env(), run).check_resumable(state, last)


def test_resume_path_of_a_finished_run_into_a_new_dir(tmp_path, train_tool, capsys):
    files, run = _files(tmp_path, MAX_STEPS=3, SCHEDULE="constant", WARMUP_EPOCHS=0), tmp_path / "run"
    assert _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run)])[0] == 0
    last = run / "checkpoints/last.pth"
    new = tmp_path / "new"
    code, err = _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(new), "--resume", str(last),
                                          "SOLVER.MAX_STEPS", "2"])
    line = _error(err)
    assert code == 2 and f"checkpoint {last} is at step 3, beyond the 2 steps" in line and "done" not in err
    assert not new.exists()  # refused before anything was written, the directory it created included
    code, err = _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(new), "--resume", str(last),
                                          "SOLVER.LR", "5e-3"])
    assert code == 2 and "SOLVER.LR 0.001 → 0.005" in _error(err) and not new.exists()
    # the same config continues, the history says where it came from
    code, _ = _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(new), "--resume", str(last),
                                        "SOLVER.MAX_STEPS", "4"])
    assert code == 0 and _loss_steps(new) == [4]
    changes = json.loads((new / "run_info.json").read_text())["changes"]
    assert {"step": 3, "resumed_from": str(last.resolve())} in changes
    # another run's checkpoint is never resumed into a directory that holds a run
    before = _snapshot(new)
    code, err = _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(new), "--resume", str(last)])
    assert code == 2 and "would mix the two histories" in _error(err) and _snapshot(new) == before


# ------------------------------------------------------------------------------------------------ history
def test_a_missing_or_unreadable_last_checkpoint_resumes_from_prev_and_loses_nothing(tmp_path, train_tool, capsys):
    files, run = _files(tmp_path, MAX_STEPS=4), tmp_path / "run"
    assert _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run)])[0] == 0
    student = student_fingerprint(run)
    ckpts = run / "checkpoints"
    assert ckpt.load_checkpoint(ckpts / "prev.pth")["step"] == 3
    (ckpts / "last.pth").unlink()
    code, err = _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run)])
    assert code == 0 and f"{ckpts / 'last.pth'} is missing; resuming from the checkpoint before it" in err
    assert _loss_steps(run) == [1, 2, 3, 4]  # each step once; nothing before step 3 was wiped
    assert ckpt.load_checkpoint(ckpts / "prev.pth")["step"] == 3  # not overwritten by a restart
    assert student_fingerprint(run) == student  # step 4 replayed exactly (same machine)
    # a truncated last.pth: the same, and the unreadable file is kept aside (never becomes the fallback)
    (ckpts / "last.pth").write_bytes((ckpts / "last.pth").read_bytes()[:1000])
    code, err = _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run)])
    assert code == 0 and "is corrupt or truncated; resuming from" in err and "last.pth.unreadable" in err
    assert (ckpts / "last.pth.unreadable").is_file() and ckpt.load_checkpoint(ckpts / "prev.pth")["step"] == 3
    assert _loss_steps(run) == [1, 2, 3, 4] and student_fingerprint(run) == student
    # neither readable: refused, the history stays as it is
    (ckpts / "last.pth").unlink()
    (ckpts / "prev.pth").write_bytes(b"garbage")
    before = _snapshot(run)
    code, err = _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run)])
    line = _error(err)
    assert code == 2 and "holds a run" in line and "no readable checkpoint (last.pth missing, prev.pth corrupt" in line
    assert "--resume none --overwrite" in line and _snapshot(run) == before
    # the library refuses too: a fresh fit() over a history
    from mdistiller.engine.rundir import RunDirError

    with pytest.raises(RunDirError, match="already holds a run"):
        Trainer(load_config(files), cpu_env(), run).fit()
    assert _snapshot(run) == before


# ------------------------------------------------------------------------------------------------ derived results
def test_overwrite_moves_derived_results_aside_and_the_table_marks_stale_results(tmp_path, train_tool, capsys):
    from mdistiller.eval.cli import main as lineval_main
    from mdistiller.eval.table import collect_results, current_result, render_markdown
    from mdistiller.eval.table import main as table_main

    files, run = _files(tmp_path), tmp_path / "run"
    assert _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run)])[0] == 0
    probe = [str(run), "--dataset", "toy_scenes", *SMALL, "--lrs", "1e-2"]
    assert lineval_main("transfer", probe) == 0
    result = json.loads((run / "lineval/toy_scenes_cls.json").read_text())
    first = student_fingerprint(run)
    assert result["model"]["student_fingerprint"] == first
    outside = tmp_path / "probes/run"  # results kept elsewhere (the demo's --out layout)
    assert lineval_main("transfer", [*probe, "--out", str(outside / "toy_scenes_cls.json")]) == 0
    assert collect_results([run])[0].cells["toy cls top-1"][0] == pytest.approx(result["metrics"]["top1"])
    assert current_result(outside / "toy_scenes_cls.json")  # what tools/demo.py and tools/study.py skip on a rerun
    capsys.readouterr()

    code, err = _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run), "--resume", "none", "--overwrite",
                                          "EXPERIMENT.SEED", "1"])
    assert code == 0 and "moved the previous run's lineval to" in err
    assert student_fingerprint(run) != first and not (run / "lineval").exists()
    aside = list(run.glob(".overwritten-*/lineval/toy_scenes_cls.json"))
    assert len(aside) == 1 and json.loads(aside[0].read_text()) == result  # moved, not lost

    rows = collect_results([outside])
    assert rows[0].cells["toy cls top-1"] == (None, {"stale"}) and "toy_scenes_cls" in rows[0].stale
    assert not current_result(outside / "toy_scenes_cls.json")  # a rerun of the demo probes the new student
    assert "| run | stale |" in render_markdown(rows)
    assert table_main([str(outside)]) == 0
    out = capsys.readouterr()
    assert "stale" in out.out and f"{result['metrics']['top1']:.2f}" not in out.out
    assert "warning: run: the toy_scenes_cls result is stale" in out.err
    # a fresh probe of the new student is shown again
    assert lineval_main("transfer", [*probe, "--out", str(outside / "toy_scenes_cls.json")]) == 0
    assert collect_results([outside])[0].stale == {}


def test_wandb_rows_mark_results_of_another_student(monkeypatch):
    from mdistiller.eval import table

    cell = {"metrics": {"top1": 50.0}, "protocol": "cached", "student_fingerprint": "aaaa"}
    runs = [("same", {"student_fingerprint": "aaaa", "lineval/toy_scenes_cls": cell}),
            ("trained_on", {"student_fingerprint": "bbbb", "lineval/toy_scenes_cls": cell})]
    monkeypatch.setattr(table, "wandb_summaries", lambda source: runs)
    same, moved = table.collect_wandb("x")
    assert same.cells["toy cls top-1"][0] == 50.0 and not same.stale
    assert moved.cells["toy cls top-1"] == (None, {"stale"}) and "bbbb" in moved.stale["toy_scenes_cls"]


def test_analysis_and_refinement_results_name_the_student_they_measured(tmp_path, train_tool, capsys):
    from mdistiller.study import refinement_run

    files, run = _files(tmp_path), tmp_path / "run"
    assert _cli(train_tool, capsys, ["--cfg", *files, "--run-dir", str(run)])[0] == 0
    analyze = load_tool("analyze.py")
    assert analyze.main(["adapter", str(run), "--num-images", "2", "--no-figures"]) == 0
    report = json.loads((run / "analysis/adapter.json").read_text())
    assert report["student_weights"] == {str(run.resolve()): student_fingerprint(run)}
    # the cached refinement table is recomputed when it measured another student
    images = torch.rand(2, 3, 32, 32)
    stats = refinement_run(run, images)
    cached = json.loads((run / "refinement.json").read_text())
    assert cached["student_fingerprint"] == student_fingerprint(run)
    cached["student_fingerprint"], cached["layers"] = "another", {"0": {"bogus": 1.0}}
    (run / "refinement.json").write_text(json.dumps(cached))
    assert refinement_run(run, images) == stats
    assert json.loads((run / "refinement.json").read_text())["student_fingerprint"] == student_fingerprint(run)


def test_the_fingerprint_is_the_same_from_memory_checkpoint_and_export(tmp_path):
    cfg = load_config(_files(tmp_path))
    trainer = Trainer(cfg, cpu_env(), tmp_path / "run")
    trainer.fit()
    in_memory = weights_fingerprint(trainer.distiller.student.model.state_dict())
    from mdistiller.engine.load import load_run

    _, loaded = load_run(tmp_path / "run")
    assert in_memory == trainer.student_fingerprint == student_fingerprint(tmp_path / "run") == \
        weights_fingerprint(loaded.student.model.state_dict())
    shutil.copy(tmp_path / "run/student.safetensors", tmp_path / "copy.safetensors")
    assert student_fingerprint(tmp_path / "copy.safetensors") == in_memory


def test_the_key_table_of_the_docs_mirrors_the_code():
    from mdistiller.config import RESUME_ALLOWABLE_KEYS, RESUME_FREE_KEYS, RESUME_SCHEDULE_KEYS

    doc = (Path(__file__).resolve().parents[1] / "docs/reliability.md").read_text()
    section = doc.split("### Which keys a resume may change", 1)[1].split("\n### ", 1)[0]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in section.splitlines()
            if line.startswith("| ") and " | " in line and not line.startswith("| ---")}

    def keys(cell: str) -> set[str]:
        out = set()
        for prefix, names, plain in re.findall(r"`([A-Za-z]+)\.\{([A-Z_,]+)\}`|`([A-Za-z_]+\.[A-Za-z_.]+)`", cell):
            out |= {f"{prefix}.{n}" for n in names.split(",")} if prefix else {plain}
        return out

    free = keys(rows["free: may differ, nothing recorded"]) - {"DISTILLER.TEACHER_WEIGHTS"}
    assert free == {k for k in RESUME_FREE_KEYS if not k.endswith(".")} and "every `LOG.*` key" in section
    assert keys(rows["free when the past is unchanged, recorded"]) == set(RESUME_SCHEDULE_KEYS)
    allowable = keys(rows["allowable: refused unless `EXPERIMENT.RESUME_ALLOW_CHANGES` lists them, then recorded"])
    assert allowable | set(RESUME_SCHEDULE_KEYS) == set(RESUME_ALLOWABLE_KEYS)
