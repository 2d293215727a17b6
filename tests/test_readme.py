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
# The README's commands on the demo's runs, executed as written (plus tiny-budget options) on a miniature of the
# layout `make demo` leaves: output/demo/runs/<name> (a real ViT-Ti student of a tiny teacher, 112 px) and
# output/demo/probes/<name>/*.json.
# ---------------------------------------------------------------------------------------------------------------
TINY_BUDGET = {  # appended to the README command: same command, a budget for a test
    "tools/lineval/transfer.py": ["--num-train", "24", "--num-test", "12", "--epochs", "2", "--batch-size", "8",
                                  "--eval-batch-size", "8", "--workers", "0", "--device", "cpu", "--lrs", "1e-2"],
    "tools/lineval/table.py": [],
    "tools/analyze.py adapter": ["--num-images", "2"],
    "tools/analyze.py similarity": ["--num-images", "2"],
    "tools/analyze.py figures": [],
}


def _bash_commands() -> list[list[str]]:
    import shlex

    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith("python tools/"):
                cmds.append(shlex.split(line)[1:])
    return cmds


def _key(argv: list[str]) -> str:
    return f"{argv[0]} {argv[1]}" if argv[0] == "tools/analyze.py" else argv[0]


@pytest.fixture(scope="module")
def demo_tree(tmp_path_factory) -> Path:
    import torch

    from mdistiller.engine.distributed import DistEnv
    from mdistiller.engine.trainer import Trainer
    from mdistiller.eval.cli import main as probe_main
    from tests.conftest import TINY_TEACHER, tiny_config

    root = tmp_path_factory.mktemp("demo")
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None, is_main=True)
    for name, kind in (("fitnet", "FitNet"), ("singer", "SiNGER")):
        cfg = tiny_config(kind, 112, **{"SOLVER.MAX_STEPS": 1, "SOLVER.BATCH_SIZE": 4, "DATASET.TYPE": "toy_scenes",
                                        "DATASET.TRAIN_SIZE": 8, "DATASET.VAL_SIZE": 2, "DATASET.NUM_WORKERS": 0,
                                        "LOG.PROGRESS": False, "LOG.GRAD_TERMS_EVERY_STEPS": 0})
        cfg.DISTILLER.STUDENT_KWARGS.clear()  # the real ViT-Ti, so the README's timm snippet loads it as written
        assert dict(cfg.DISTILLER.TEACHER_KWARGS) == TINY_TEACHER
        torch.manual_seed(0)
        run = root / "output/demo/runs" / name
        Trainer(cfg, env, run).fit()
        out = root / "output/demo/probes" / name / "toy_scenes_cls.json"
        assert probe_main("transfer", [str(run), "--dataset", "toy_scenes", "--out", str(out),
                                       *TINY_BUDGET["tools/lineval/transfer.py"]]) == 0
    return root


def test_readme_commands_on_the_demo_runs_work_as_written(demo_tree: Path, monkeypatch, capsys) -> None:
    from mdistiller.eval.cli import main as probe_main
    from mdistiller.eval.table import main as table_main
    from tests.helpers import load_tool

    monkeypatch.chdir(demo_tree)
    on_demo = [c for c in _bash_commands() if any("output/demo/" in a for a in c)]
    assert {_key(c) for c in on_demo} <= set(TINY_BUDGET), "give the new README command a tiny budget here"
    assert len(on_demo) >= 5
    analyze = load_tool("analyze.py")
    for argv in on_demo:
        args = [*argv[1:], *TINY_BUDGET[_key(argv)]]
        if argv[0] == "tools/analyze.py":
            code = analyze.main(args)
        elif argv[0] == "tools/lineval/table.py":
            code = table_main(args)
        else:
            code = probe_main(argv[0].rsplit("/", 1)[1].removesuffix(".py"), args)
        assert code == 0, (argv, capsys.readouterr().err[-2000:])
    assert (demo_tree / "output/demo/runs/singer/lineval/toy_scenes_cls.json").is_file()
    assert (demo_tree / "output/demo/runs/singer/analysis/adapter.json").is_file()


def test_readme_python_snippets_run(demo_tree: Path, monkeypatch) -> None:
    """The timm loading snippet (on the demo's SiNGER student) and the SiNGER pieces run as written; the two-call
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
