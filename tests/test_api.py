"""The Python API in two calls, the console entry points, packaging metadata and what a run tells its user
(summary block, plain log lines, train.log, file modes)."""

from __future__ import annotations

import ast
import os
import re
import signal
import stat
from pathlib import Path

import pytest

import mdistiller
from mdistiller.config import ConfigError, configs_dir, load_config
from tests.test_lineval import SMALL
from tests.test_train import tiny_yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def api_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("api")
    old = os.umask(0o022)
    try:
        return mdistiller.train(tiny_yaml(tmp, "FitNet"), overrides={"SOLVER.MAX_STEPS": 2, "LOG.FREQ": 1},
                                run_dir=tmp / "run")
    finally:
        os.umask(old)


def test_train_returns_the_run_and_restores_signal_handlers(tmp_path: Path) -> None:
    def mine(signum, frame):  # noqa: ARG001
        pass

    before = {s: signal.signal(s, mine) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        res = mdistiller.train(tiny_yaml(tmp_path), overrides={"SOLVER.MAX_STEPS": 1}, run_dir=tmp_path / "r")
        assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    assert res["step"] == 1 and res["student"] == tmp_path / "r/student.safetensors" and res["interrupted"] is None
    assert "loss" in res["metrics"]
    with pytest.raises(FileExistsError, match="already holds a run"):
        mdistiller.train(tiny_yaml(tmp_path), run_dir=tmp_path / "r", resume="none")


def test_train_accepts_a_config_node(tmp_path: Path) -> None:
    cfg = load_config([tiny_yaml(tmp_path, "FitNet")])
    res = mdistiller.train(cfg, overrides=["SOLVER.MAX_STEPS", 1], run_dir=tmp_path / "n")
    assert res["step"] == 1
    with pytest.raises(ConfigError, match="INPUT_SIZE 40"):
        mdistiller.train(cfg, overrides={"DATASET.INPUT_SIZE": 40}, run_dir=tmp_path / "bad")
    # overrides on a node go through the same rules as load_config's: an int for a float key, a one-sentence error
    with pytest.raises(ConfigError, match="SOLVER.LRR"):
        mdistiller.train(cfg, overrides={"SOLVER.LRR": 1}, run_dir=tmp_path / "typo")
    res = mdistiller.train(cfg, overrides={"SOLVER.MAX_STEPS": 1, "SOLVER.LR": 1}, run_dir=tmp_path / "int_lr")
    assert res["step"] == 1


def test_evaluate_returns_the_result_dict(api_run: dict) -> None:
    opts = dict(zip((a.lstrip("-").replace("-", "_") for a in SMALL[0::2]), SMALL[1::2], strict=True))
    res = mdistiller.evaluate(api_run["run_dir"], task="transfer", dataset="toy_scenes", lrs=[1e-2], **opts)
    assert 0.0 <= res["metrics"]["top1"] <= 100.0 and res["task"] == "toy_scenes_cls"
    assert (api_run["run_dir"] / "lineval/toy_scenes_cls.json").is_file()
    with pytest.raises(RuntimeError, match="NYUd-v2 folder '/nonexistent/nyud' not found") as failed:
        mdistiller.evaluate(api_run["run_dir"], task="nyud", data_root="/nonexistent/nyud", device="cpu")
    assert failed.value.exit_code == 1  # a ProbeError: the command's sentence and exit status
    with pytest.raises(ValueError, match="unknown task"):
        mdistiller.evaluate(api_run["run_dir"], task="cifar")


def test_summary_block_log_lines_train_log_and_file_modes(api_run: dict, capsys) -> None:
    run = api_run["run_dir"]
    log = (run / "train.log").read_text()
    assert "step 1/2" in log and "step 2/2" in log and "grad_norm" in log and "img/s" in log
    assert "done, step 2/2" in log and re.search(r"final losses +loss [\d.]", log) and "wall time" in log
    for name in ("config.yaml", "run_info.json", "metrics.jsonl", "checkpoints/last.pth", "student.safetensors"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name  # umask 022, not mkstemp's 0600


def test_plain_lines_on_the_console_when_the_bar_is_off(tmp_path: Path, capsys) -> None:
    mdistiller.train(tiny_yaml(tmp_path), overrides={"SOLVER.MAX_STEPS": 2, "LOG.FREQ": 1, "LOG.PROGRESS": False},
                     run_dir=tmp_path / "p")
    out = capsys.readouterr().out
    assert re.search(r"^step 1/2 \(epoch 0\) \| loss [\d.]+ .*\| lr .* img/s$", out, flags=re.M), out
    assert "== SiNGER vit_small → vit_tiny: done, step 2/2 ==" in out


def test_input_size_must_suit_the_student_patch(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"INPUT_SIZE 56 is not a multiple of the patch size 16 of student "
                                          r"'vit_tiny'; use a multiple of 16"):
        load_config([configs_dir() / "demo/singer.yaml"], ["DATASET.INPUT_SIZE", "56"])


def test_configs_resolve_from_any_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(["configs/demo/singer.yaml"])
    assert cfg.DISTILLER.TYPE == "SiNGER" and (configs_dir() / "imagenet/vit/singer.yaml").is_file()


def test_console_entry_points(tmp_path: Path, capsys, monkeypatch) -> None:
    from mdistiller import cli

    setup = (ROOT / "setup.py").read_text()
    for name, func in (("train", cli.train), ("lineval", cli.lineval), ("analyze", cli.analyze)):
        assert f"mdistiller-{name}=mdistiller.cli:{name}" in setup
        with pytest.raises(SystemExit) as e:
            func(["--help"] if name != "lineval" else ["transfer", "--help"])
        assert e.value.code == 0
        assert f"usage: mdistiller-{name}" in capsys.readouterr().out
    assert cli.lineval(["nope"]) == 2
    monkeypatch.chdir(tmp_path)
    assert cli.train(["--cfg", "configs/demo/singer.yaml", "--print-config"]) == 0
    assert "TYPE: SiNGER" in capsys.readouterr().out


def _requirements() -> tuple[list[str], dict[str, list[str]]]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords
          if k.arg in ("install_requires", "extras_require")}
    return kw["install_requires"], kw["extras_require"]


def test_ranges_in_setup_and_pins_in_constraints() -> None:
    core, extras = _requirements()
    assert not [r for r in core if "==" in r], "setup.py must declare ranges; exact pins go to constraints.txt"
    names = {re.split(r"[<>=!~ ]", r)[0].lower() for r in core}
    assert {"torch", "torchvision", "wandb", "scikit-image", "tensorboard"} <= names
    assert not {"h5py", "scipy"} & names and {"h5py>=3.8", "scipy>=1.10"} <= set(extras["data"])
    assert "pytest-timeout>=2.3" in extras["dev"]
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    for r in core + extras["dev"] + extras["data"] + extras["formats"]:
        assert re.split(r"[<>=!~ ]", r)[0].lower() in {k.lower() for k in pins}, r
    assert {"webdataset", "datasets"} <= {re.split(r"[<>=!~ ]", r)[0] for r in extras["formats"]}
    import torch

    assert pins["torch"] == torch.__version__.split("+")[0]
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile and "--timeout=" in makefile
    assert re.search(r"-e \"\.\[[^]]*\bformats\b", makefile), "make install must install the formats extra"
    assert "timeout " in (ROOT / ".ci/run").read_text()
