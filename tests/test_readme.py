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
