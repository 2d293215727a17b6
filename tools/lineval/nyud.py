#!/usr/bin/env python
"""NYUd-v2 linear depth probe of a frozen backbone (BN + 1x1 conv on patch (+) CLS, 256 bins, RMSE).

    python tools/lineval/nyud.py RUN_DIR --data-root data/nyud [--protocol cached|online]
    python tools/lineval/nyud.py RUN_DIR --dataset toy_scenes

Writes RUN_DIR/lineval/nyud.json (toy scenes: toy_scenes_depth.json); see docs/lineval.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mdistiller.cli import exit_on_interrupt  # noqa: E402

with exit_on_interrupt():  # Ctrl-C while the package or torch imports: one line, exit 130
    from mdistiller.eval.cli import main

if __name__ == "__main__":
    with exit_on_interrupt():
        sys.exit(main("nyud"))
