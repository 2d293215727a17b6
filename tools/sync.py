#!/usr/bin/env python
"""Upload a run's offline wandb folders, every resumed segment and probe run kept:
``python tools/sync.py RUN_DIR [--dry-run]``.

A thin wrapper over :mod:`mdistiller.engine.wandb_sync` (also installed as the ``mdistiller-sync`` command); see
``python tools/sync.py --help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdistiller.engine.wandb_sync import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="tools/sync.py"))
