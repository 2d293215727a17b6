#!/usr/bin/env python
"""Analyse a ViT teacher or trained distillation runs: ``python tools/analyze.py <what> [options]``.

A thin wrapper over :mod:`mdistiller.analysis.cli` (also installed as the ``mdistiller-analyze`` command); see
``python tools/analyze.py --help``. Each command is also a Python function,
``mdistiller.analysis.commands.<what>.run(...)`` (docs/analysis.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdistiller.cli import exit_on_interrupt  # noqa: E402

with exit_on_interrupt():  # Ctrl-C while the package imports: one line, exit 130
    from mdistiller.analysis.cli import main, parse_args  # noqa: F401

if __name__ == "__main__":
    with exit_on_interrupt():  # Ctrl-C while torch imports or an analysis runs: one line, exit 130
        sys.exit(main())
