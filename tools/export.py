#!/usr/bin/env python
"""Export a run's student from any checkpoint: ``python tools/export.py RUN_DIR [--checkpoint last|prev|PATH]
[--out FILE]``.

A thin wrapper over :mod:`mdistiller.engine.export` (also installed as the ``mdistiller-export`` command).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdistiller.engine.export import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="tools/export.py"))
