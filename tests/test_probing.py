"""The probe library (``mdistiller.eval.probe``): the same result as the command, errors as exceptions carrying the
command's sentence, progress through logging and a callback, the process-pool job, and an API without argv."""

from __future__ import annotations

import ast
import inspect
import json
import logging
from pathlib import Path

import pytest
import torch

import mdistiller
from mdistiller.eval import ProbeError, ProbeResult, probe
from mdistiller.eval.cli import build_parser
from mdistiller.eval.cli import main as lineval_main
from mdistiller.eval.probing import probe_job

ROOT = Path(__file__).resolve().parents[1]
# tests/test_lineval.py's SMALL as keyword arguments (strings for numbers, as the command line gives them: accepted)
SMALL = {"input_size": 32, "num_train": 24, "num_test": 12, "epochs": 2, "batch_size": 8, "eval_batch_size": 8,
         "workers": 0, "device": "cpu"}


def _argv(options: dict) -> list[str]:
    return [x for k, v in options.items() for x in (f"--{k.replace('_', '-')}", str(v))]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The exported student of a 3-block, width-48 FitNet distiller (a tools/train.py run directory's files)."""
    from mdistiller.distillers import build_distiller
    from tests.conftest import TINY_STUDENT, tiny_config

    d = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    build_distiller(tiny_config("FitNet", 32)).export_student(d / "student.safetensors", "vit_tiny",
                                                              dict(TINY_STUDENT) | {"img_size": 32})
    return d


def test_probe_returns_what_the_command_writes(tiny_run: Path, tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache"
    common = {**SMALL, "lrs": [0.01, 0.1], "cache_dir": str(cache)}
    cli_out, lib_out = tmp_path / "cli.json", tmp_path / "lib.json"
    assert lineval_main("ade20k", [str(tiny_run), "--dataset", "toy_scenes", *_argv(common | {"lrs": "0.01,0.1"}),
                                   "--out", str(cli_out)]) == 0
    printed = capsys.readouterr().out.strip()
    res = probe(tiny_run, "ade20k", "toy_scenes", **common, out=lib_out)
    assert isinstance(res, ProbeResult) and res.path == lib_out and res.task == "toy_scenes_seg"
    assert capsys.readouterr().out == ""  # the library prints nothing
    written = json.loads(cli_out.read_text())
    got = res.to_dict()
    # the same probe in the same process: every field equal but the clock's (the second reuses the first's cache)
    assert list(got) == list(written)
    assert {k: v for k, v in got.items() if k not in ("time", "created")} == \
           {k: v for k, v in written.items() if k not in ("time", "created")}
    assert res.metrics == written["metrics"] and res.chosen_lr == written["chosen_lr"] in (0.01, 0.1)
    assert res.protocol["cache"]["train"]["path"].startswith(str(cache))
    # the file the library writes is the result's dict, key for key, and reads back into an equal result
    assert json.loads(lib_out.read_text()) == got and list(json.loads(lib_out.read_text())) == list(got)
    back = ProbeResult.load(lib_out)
    assert back == res and back.to_dict() == got and back.path == lib_out
    # the command's summary line is its result's own
    assert printed == ProbeResult.from_dict(written, cli_out).summary() and str(cli_out) in printed


def test_probe_takes_a_built_backbone(tiny_run: Path, tmp_path: Path) -> None:
    from mdistiller.eval.features import load_backbone

    common = {**SMALL, "lrs": [0.1], "cache_dir": str(tmp_path / "cache")}
    by_path = probe(tiny_run, "transfer", "toy_scenes", **common, out=tmp_path / "a.json")
    built = probe(load_backbone(tiny_run), "transfer", "toy_scenes", **common, out=tmp_path / "b.json")
    assert built.model == by_path.model and built.metrics == by_path.metrics
    assert built.val_metrics == by_path.val_metrics and built.train_loss == by_path.train_loss


def test_result_round_trips_unknown_and_missing_keys() -> None:
    data = {"metrics": {"top1": 70.0}, "future_key": [1, 2], "task": "imagenet"}
    res = ProbeResult.from_dict(data)
    assert res.metrics == {"top1": 70.0} and res.task == "imagenet" and res.other == {"future_key": [1, 2]}
    assert res.to_dict() == data and list(res.to_dict()) == list(data)  # no invented keys, the file's order
    fresh = ProbeResult(task="t", metrics={"rmse": 1.0})
    assert list(fresh.to_dict())[:3] == ["task", "command", "argv"] and "path" not in fresh.to_dict()


@pytest.mark.parametrize(("task", "options", "code", "sentence"), [
    ("transfer", {"layers": "99"}, 2, "--layers: layers [99] fall outside the model's 3 blocks; use 0..2."),
    ("transfer", {"layers": "final"}, 2, "lastN"),
    ("nyud", {"data_root": "/nonexistent/nyud"}, 1, ".mat"),
])
def test_errors_are_probe_errors_with_the_command_s_sentence(tiny_run: Path, tmp_path: Path, capsys, task, options,
                                                            code, sentence) -> None:
    dataset = "toy_scenes" if task == "transfer" else None
    with pytest.raises(ProbeError) as caught:
        probe(tiny_run, task, dataset, **SMALL, **options, out=tmp_path / "r.json")
    err = caught.value
    assert err.exit_code == code and sentence in str(err) and "\n" not in str(err)
    assert not str(err).startswith("error") and isinstance(err, RuntimeError)
    assert capsys.readouterr().err == ""  # nothing printed by the library
    argv = [str(tiny_run), *(["--dataset", dataset] if dataset else []), *_argv(SMALL | options),
            "--out", str(tmp_path / "r.json")]
    assert lineval_main(task, argv) == code
    assert capsys.readouterr().err == f"error: {err}\n"
    assert not (tmp_path / "r.json").exists()


def test_options_the_parser_would_refuse_exit_2(tiny_run: Path) -> None:
    cases = [({"slide": 16}, "slide= is an option of the ade20k probe, not of transfer"),
             ({"tokens": "patch"}, "tokens='patch' is not one of cls, avg, cls+avg"),
             ({"dataset": "cifar"}, "dataset='cifar' is not one of"),
             ({"epochs": "two"}, "epochs='two' is not an integer"),
             ({"lrs": []}, "at least one learning rate")]
    for options, sentence in cases:
        with pytest.raises(ProbeError, match=sentence.replace("+", r"\+")) as caught:
            probe(tiny_run, "transfer", **({"dataset": "toy_scenes"} | options))
        assert caught.value.exit_code == 2
    with pytest.raises(ProbeError, match="needs a dataset"):
        probe(tiny_run, "transfer")
    with pytest.raises(ValueError, match="unknown task 'cifar'"):
        probe(tiny_run, "cifar")


def test_evaluate_reports_progress_and_leaves_stderr_alone(tiny_run: Path, tmp_path: Path, capsys) -> None:
    seen: list[str] = []
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("mdistiller.eval")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        res = mdistiller.evaluate(tiny_run, task="transfer", dataset="toy_scenes", lrs=[0.01], verbose=True,
                                  out=tmp_path / "r.json", cache_dir=tmp_path / "cache", log=seen.append,
                                  **{k: str(v) for k, v in SMALL.items()})  # strings, as evaluate always took
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert res == json.loads((tmp_path / "r.json").read_text()) and isinstance(res, dict)
    assert "epoch 2/2: mean head loss" in seen[-1] and any(m.startswith("cached 24 items of 'train'") for m in seen)
    assert [r.getMessage() for r in records] == seen and all(r.levelno == logging.INFO for r in records)
    err = capsys.readouterr().err  # verbose=True reaches the caller's stderr: nothing redirects it any more
    assert f"[lineval] {seen[-1]}\n" in err
    with pytest.raises(ProbeError, match="unknown option.*num_trian") as caught:
        mdistiller.evaluate(tiny_run, task="transfer", dataset="toy_scenes", num_trian=5)
    assert caught.value.exit_code == 2


def test_api_builds_no_argv_and_captures_no_stderr() -> None:
    tree = ast.parse((ROOT / "mdistiller/api.py").read_text())
    evaluate = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "evaluate")
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
            {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | \
            {a.name for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names}
    assert not names & {"redirect_stderr", "redirect_stdout", "StringIO", "main", "_argv", "argv"}
    assert not [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_argv"]
    calls = {n.func.id for n in ast.walk(evaluate) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "probe" in calls


def test_probe_job_reports_like_the_command(tiny_run: Path, tmp_path: Path, capsys) -> None:
    from mdistiller.jobs import Job, run_job

    options = {"dataset": "toy_scenes", **SMALL, "lrs": (0.01,), "out": str(tmp_path / "r.json")}
    assert probe_job(str(tiny_run), "transfer", options | {"layers": "99"}) == 2
    assert capsys.readouterr().err.startswith("error: --layers: layers [99]")
    job = Job("probe", "mdistiller.eval.probing:probe_job", (str(tiny_run), "transfer", options),
              str(tmp_path / "probe.log"))
    code, last, _ = run_job(job)
    res = ProbeResult.load(tmp_path / "r.json")
    assert code == 0 and last == res.summary()


def test_study_probe_options_are_the_former_command_lines() -> None:
    """The demo's and the study's probes take the very settings their command lines gave: the keyword arguments
    equal what the parser makes of the former arguments, and every other parsed option is probe()'s default."""
    from mdistiller.study import CLS_LRS, DEMO_DENSE_LRS, probe_options

    signature = inspect.signature(probe).parameters
    for command, kwargs, former in [
        ("transfer", {"seed": 1}, ["--tokens", "cls+avg", "--batch-size", "32", "--epochs", "100", "--lrs", CLS_LRS]),
        ("nyud", {"dense_epochs": 5, "loss_size": 12, "dense_lrs": DEMO_DENSE_LRS},
         ["--epochs", "5", "--loss-size", "12", "--lrs", DEMO_DENSE_LRS]),
    ]:
        options = {"dataset": "toy_scenes", "out": "o.json", **probe_options(command, 112, 400, 200, Path("c"),
                                                                           **kwargs)}
        argv = ["run", "--dataset", "toy_scenes", "--out", "o.json", "--input-size", "112", "--protocol", "cached",
                "--num-train", "400", "--num-test", "200", "--cache-dir", "c", "--workers", "0",
                "--seed", str(kwargs.get("seed", 0)), *former]
        parsed = vars(build_parser(command).parse_args(argv))
        assert {k: parsed[k] for k in options} == options
        for k, v in parsed.items():
            if k not in options and k != "target":
                assert signature[k].default in (v, None), (command, k, v)
