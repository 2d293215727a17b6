"""The engine's seams: the command line and :func:`mdistiller.train` claim a run directory through one helper
(``engine/rundir.py:claim_run_dir``), the engine tests no dataset's name (a dataset says how it is sized:
``size_arg`` / :func:`mdistiller.dataset.size_kwargs`), ``DATASET.TRAIN_SIZE`` on a dataset read from files is one
config error, and ``load_run`` lives in ``engine/load.py`` (its old path in ``engine/trainer.py`` still works)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mdistiller
from mdistiller.config import ConfigError, load_config
from mdistiller.dataset import DATASETS, build_dataset, size_kwargs, takes_size
from mdistiller.engine import launch, rundir
from mdistiller.engine.rundir import RunDirError
from mdistiller.engine.runlock import RunLock
from tests.test_train import tiny_yaml

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "mdistiller" / "engine"


def _calls(path: Path) -> set[str]:
    """The names of every function called in ``path`` (``f(...)`` and ``obj.f(...)``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            f = node.func
            out.add(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
    return out


def test_api_imports_no_private_name() -> None:
    tree = ast.parse((ROOT / "mdistiller" / "api.py").read_text(encoding="utf-8"))
    private = [f"{node.module}.{a.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for a in node.names if a.name.startswith("_")]
    private += [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names
                if any(part.startswith("_") for part in a.name.split("."))]
    assert private == []


def test_cli_and_api_claim_the_run_dir_through_one_helper() -> None:
    for path in (ENGINE / "launch.py", ROOT / "mdistiller" / "api.py"):
        calls = _calls(path)
        assert "claim_run_dir" in calls and "open_run_dir" not in calls and "broadcast_object" not in calls, path


def test_cli_and_api_both_call_the_helper(tmp_path: Path, monkeypatch, capsys) -> None:
    """Both entry points stop with the helper's refusal: the CLI as ``error: ...`` and exit 2, the API by raising it;
    neither builds a trainer after it."""
    seen: list[tuple[Path, str, bool]] = []

    def refuse(run_dir, resume="auto", overwrite=False, *, is_main=True):
        seen.append((Path(run_dir), resume, overwrite))
        raise RunDirError(f"refused {Path(run_dir).name} by the helper")

    monkeypatch.setattr(rundir, "claim_run_dir", refuse)
    cfg = tiny_yaml(tmp_path, "FitNet")
    assert launch.main(["--cfg", str(cfg), "--run-dir", str(tmp_path / "cli"), "--resume", "none"]) == 2
    assert capsys.readouterr().err == "error: refused cli by the helper.\n"
    with pytest.raises(RunDirError, match="refused api by the helper"):
        mdistiller.train(cfg, run_dir=tmp_path / "api", resume="none", overwrite=True)
    assert seen == [(tmp_path / "cli", "none", False), (tmp_path / "api", "none", True)]
    assert not (tmp_path / "cli").exists() and not (tmp_path / "api").exists()


def test_claim_run_dir_returns_the_checkpoint_and_releases(tmp_path: Path) -> None:
    run = tmp_path / "a" / "run"
    start = rundir.claim_run_dir(run, "auto")
    assert start.checkpoint is None and (run / ".lock").is_file()
    with pytest.raises(Exception, match="lock|another"):  # one process at a time
        rundir.claim_run_dir(run, "auto")
    start.release()
    assert not (tmp_path / "a").exists()  # a run that never started leaves nothing behind
    ckpt = run / "checkpoints" / "last.pth"
    ckpt.parent.mkdir(parents=True)
    (run / "config.yaml").write_text("x")
    with pytest.raises(RunDirError, match="already holds a run"):
        rundir.claim_run_dir(run, "none")
    assert (run / "config.yaml").read_text() == "x"  # the refused start left the run alone ...
    lock = RunLock(run)
    lock.acquire()  # ... and released its lock
    lock.release()


def _dataset_name_literals(path: Path) -> list[str]:
    """String constants in ``path`` (docstrings excepted) that name a registered dataset."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    names = set(DATASETS.names())
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs and n.value.lower() in names]


def test_the_engine_tests_no_dataset_name(tmp_path: Path) -> None:
    found = {p.name: hits for p in sorted(ENGINE.glob("*.py")) if (hits := _dataset_name_literals(p))}
    assert found == {}
    bad = tmp_path / "bad.py"
    bad.write_text('"""toy_scenes in a docstring is fine."""\nx = cfg.TYPE == "toy_scenes"\n')
    assert _dataset_name_literals(bad) == ["toy_scenes"]  # the check sees a name test


def test_datasets_say_how_they_are_sized() -> None:
    assert takes_size("toy_scenes") and not takes_size("imagenet") and not takes_size("fashion_mnist")
    assert size_kwargs("toy_scenes", 0) == {} and size_kwargs("imagenet", 12) == {}
    kwargs = size_kwargs("TOY_SCENES", 12)
    assert kwargs == {"num_images": 12}
    assert len(build_dataset("toy_scenes", "train", root=None, input_size=32, train=False, **kwargs)) == 12


@pytest.mark.parametrize("dataset", ["imagenet", "fashion_mnist"])
def test_train_size_on_a_dataset_read_from_files_is_a_config_error(tmp_path: Path, dataset: str, capsys) -> None:
    with pytest.raises(ConfigError) as e:
        load_config([tiny_yaml(tmp_path)], ["DATASET.TYPE", dataset, "DATASET.TRAIN_SIZE", 100])
    text = str(e.value)
    assert "DATASET.TRAIN_SIZE 100" in text and f"'{dataset}'" in text and "toy_scenes" in text
    assert text.count(". ") == 0 and "\n" not in text  # one sentence
    cfg = load_config([tiny_yaml(tmp_path)], ["DATASET.TYPE", dataset, "DATASET.TRAIN_SIZE", 0])
    assert cfg.DATASET.TRAIN_SIZE == 0  # the default stays accepted
    run = tmp_path / "run"
    code = launch.main(["--cfg", str(tiny_yaml(tmp_path)), "--run-dir", str(run), "DATASET.TYPE", dataset,
                        "DATASET.TRAIN_SIZE", "100"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: DATASET.TRAIN_SIZE 100") and err.count("\n") == 1
    assert not run.exists()


def test_load_run_has_its_own_module() -> None:
    from mdistiller.engine import load, trainer

    assert callable(load.load_run) and not hasattr(trainer, "load_run")
    assert "def load_run" not in (ENGINE / "trainer.py").read_text(encoding="utf-8")


def test_the_process_group_accepts_the_device_in_any_case_as_the_preflight_does() -> None:
    """``--device CPU`` passes the config and the preflight check, so the process group must accept it too (it used
    to raise a traceback after the preflight had said yes)."""
    import torch

    from mdistiller.engine.distributed import _resolve_device
    from mdistiller.engine.preflight import check_device

    check_device("CPU")
    assert _resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ValueError, match="is not one of"):
        _resolve_device("tpu")
