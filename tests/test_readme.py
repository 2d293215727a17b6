"""The README is a user guide whose commands work: quick-start targets exist, every tools/ command takes --help."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quick_start_commands_are_makefile_targets():
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    targets = set(re.findall(r"^make (\w+)", quick, flags=re.M))
    assert {"demo", "test"} <= targets
    makefile = (ROOT / "Makefile").read_text()
    for t in targets:
        assert re.search(rf"^{t}:", makefile, flags=re.M), f"Makefile has no '{t}' target"
    assert "make test" in (ROOT / ".ci/run").read_text()


TOOLS = sorted(set(re.findall(r"(tools/[\w/]+\.py)", README)))


def test_readme_mentions_tools():
    assert "tools/train.py" in TOOLS and len(TOOLS) >= 4


@pytest.mark.parametrize("tool", TOOLS)
def test_every_readme_tool_accepts_help(tool):
    path = ROOT / tool
    assert path.is_file(), f"README mentions {tool}, which does not exist"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage" in res.stdout.lower()


# ---------------------------------------------------------------------------------------------------------------
# The README's commands on its runs, executed as written (plus tiny-budget options) on a miniature of the layout the
# README's own commands leave: the run directories of its CPU training commands (output/demo/singer, ...) and, for
# the blocks that say "After `make demo`", output/demo/runs/<name> and output/demo/probes/<name>/*.json. Each run is
# a real ViT-Ti student of a tiny teacher at 112 px.
# ---------------------------------------------------------------------------------------------------------------
TINY_BUDGET = {  # appended to the README command: same command, a budget for a test
    "tools/lineval/transfer.py": ["--num-train", "24", "--num-test", "12", "--epochs", "2", "--batch-size", "8",
                                  "--eval-batch-size", "8", "--workers", "0", "--device", "cpu", "--lrs", "1e-2"],
    "tools/lineval/table.py": [],
    "tools/analyze.py adapter": ["--num-images", "2"],
    "tools/analyze.py similarity": ["--num-images", "2"],
    "tools/analyze.py figures": [],
    "mdistiller-sync": ["--dry-run"],  # no server here: the plan, the exact wandb commands, and nothing uploaded
}
DEMO_PATH = re.compile(r"output/demo/[\w./-]+")


def _blocks() -> list[tuple[str, str, str]]:
    """``(language, code, the prose just before it)`` of every fenced block, in README order."""
    return [(m.group(1), m.group(2), README[max(0, m.start() - 300):m.start()])
            for m in re.finditer(r"```(bash|python)\n(.*?)```", README, flags=re.S)]


def _bash_commands() -> list[list[str]]:
    import shlex

    cmds = []
    for lang, block, _ in _blocks():
        for line in block.replace("\\\n", " ").splitlines() if lang == "bash" else []:
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("python tools/"):
                cmds.append(shlex.split(line)[1:])
            elif line.startswith("mdistiller-sync "):
                cmds.append(shlex.split(line))
    return cmds


def _key(argv: list[str]) -> str:
    return f"{argv[0]} {argv[1]}" if argv[0] == "tools/analyze.py" else argv[0]


def _train_run_dirs() -> list[tuple[list[str], Path]]:
    """``(argv, run directory)`` of the README's CPU training commands (``--cfg configs/demo/...``), in order."""
    from mdistiller.config import load_config
    from mdistiller.engine.launch import parse_args
    from mdistiller.engine.trainer import run_dir_for

    out = []
    for argv in _bash_commands():
        if argv[0] == "tools/train.py" and any(c.startswith("configs/demo/") for c in argv):
            args = parse_args(argv[1:])
            out.append((argv, Path(args.run_dir) if args.run_dir else run_dir_for(load_config(args.cfg, args.opts))))
    return out


def test_readme_run_paths_are_made_by_the_readme() -> None:
    """Every output/demo path of a command or snippet lies in the run directory of a README training command shown
    before it, or (output/demo/runs, output/demo/probes) in a block the prose introduces with `make demo`."""
    made: list[str] = []
    trained = {" ".join(argv): str(d) for argv, d in _train_run_dirs()}
    assert "output/demo/singer" in trained.values()
    for _lang, code, before in _blocks():
        for line in code.splitlines():
            argv = line.split()
            if argv[:2] == ["python", "tools/train.py"]:
                made += [d for a, d in trained.items() if a.split() == argv[1:len(a.split()) + 1]]
            for path in DEMO_PATH.findall(re.sub(r"#.*$", "", line)):
                path = path.rstrip(".")
                if path.startswith(("output/demo/runs/", "output/demo/probes/")):
                    assert "make demo" in before, f"say 'After `make demo`' before the block using {path}"
                elif path != "output/demo/report.md":
                    assert any(path == d or path.startswith(d + "/") for d in made), (
                        f"{path} is not the run directory of a training command shown before it ({made})")


@pytest.fixture(scope="module")
def demo_tree(tmp_path_factory) -> Path:
    import torch

    from mdistiller.config import load_config
    from mdistiller.engine.distributed import DistEnv
    from mdistiller.engine.launch import parse_args
    from mdistiller.engine.trainer import Trainer
    from mdistiller.eval.cli import main as probe_main
    from tests.conftest import TINY_TEACHER, tiny_config

    root = tmp_path_factory.mktemp("demo")
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None, is_main=True)
    tiny = {"SOLVER.MAX_STEPS": 1, "SOLVER.BATCH_SIZE": 4, "DATASET.TYPE": "toy_scenes", "DATASET.TRAIN_SIZE": 8,
            "DATASET.VAL_SIZE": 2, "DATASET.NUM_WORKERS": 0, "LOG.PROGRESS": False, "LOG.GRAD_TERMS_EVERY_STEPS": 0}

    def train(kind: str, run: Path, **extra) -> None:
        cfg = tiny_config(kind, 112, **tiny, **extra)
        cfg.DISTILLER.STUDENT_KWARGS.clear()  # the real ViT-Ti, so the README's timm snippet loads it as written
        assert dict(cfg.DISTILLER.TEACHER_KWARGS) == TINY_TEACHER
        torch.manual_seed(0)
        Trainer(cfg, env, run).fit()

    for name, kind in (("fitnet", "FitNet"), ("singer", "SiNGER")):  # what `make demo` leaves
        run = root / "output/demo/runs" / name
        train(kind, run)
        out = root / "output/demo/probes" / name / "toy_scenes_cls.json"
        assert probe_main("transfer", [str(run), "--dataset", "toy_scenes", "--out", str(out),
                                       *TINY_BUDGET["tools/lineval/transfer.py"]]) == 0
    for argv, run in _train_run_dirs():  # the README's CPU training commands: their keys, a tiny model and budget
        args = parse_args(argv[1:])
        wanted = load_config(args.cfg, args.opts).LOG
        train("SiNGER", root / run, **{"LOG.WANDB": wanted.WANDB, "LOG.TENSORBOARD": wanted.TENSORBOARD})
    return root


def test_readme_commands_on_the_demo_runs_work_as_written(demo_tree: Path, monkeypatch, capsys) -> None:
    from mdistiller.cli import sync
    from mdistiller.eval.cli import main as probe_main
    from mdistiller.eval.table import main as table_main
    from tests.helpers import load_tool

    monkeypatch.chdir(demo_tree)
    on_demo = [c for c in _bash_commands() if any("output/demo/" in a for a in c)]
    assert {_key(c) for c in on_demo} <= set(TINY_BUDGET), "give the new README command a tiny budget here"
    assert len(on_demo) >= 6
    analyze = load_tool("analyze.py")
    for argv in on_demo:
        args = [*argv[1:], *TINY_BUDGET[_key(argv)]]
        if argv[0] == "tools/analyze.py":
            code = analyze.main(args)
        elif argv[0] == "tools/lineval/table.py":
            code = table_main(args)
        elif argv[0] == "mdistiller-sync":
            code = sync(args)
        else:
            code = probe_main(argv[0].rsplit("/", 1)[1].removesuffix(".py"), args)
        assert code == 0, (argv, capsys.readouterr().err[-2000:])
    assert (demo_tree / "output/demo/runs/singer/lineval/toy_scenes_cls.json").is_file()
    assert (demo_tree / "output/demo/singer/analysis/adapter.json").is_file()
    assert (demo_tree / "output/demo/runs/fitnet/analysis/similarity.json").is_file()


def test_readme_python_snippets_run(demo_tree: Path, monkeypatch) -> None:
    """The timm loading snippet (on the SiNGER student of the README's CPU training command) and the SiNGER pieces
    run as written; the two-call
    API snippet needs the offline teacher and a training run, so tests/test_api.py covers it with tiny models."""
    monkeypatch.chdir(demo_tree)
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    timm_block = next(b for b in blocks if "pretrained_cfg_overlay" in b)
    pieces = next(b for b in blocks if "null_basis" in b)
    for code in (timm_block, pieces):
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    assert namespace["loss"].ndim == 0
    api = next(b for b in blocks if "mdistiller.evaluate(" in b)
    assert "mdistiller.train(" in api
