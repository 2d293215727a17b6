#!/usr/bin/env python
"""Side-by-side training-step benchmark of the distillers: ``python tools/bench.py [options]``.

A thin wrapper over :mod:`mdistiller.bench.cli` (also ``python -m mdistiller bench``); see
``python tools/bench.py --help`` and docs/benchmark.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub: the benchmark uses random weights by default

from mdistiller.cli import exit_on_interrupt  # noqa: E402

with exit_on_interrupt():  # Ctrl-C while the package imports: one line, exit 130
    from mdistiller.bench.cli import TINY, main, parse_args  # noqa: F401

if __name__ == "__main__":
    with exit_on_interrupt():
        main()
