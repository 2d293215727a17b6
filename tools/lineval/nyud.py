#!/usr/bin/env python
"""NYUd-v2 linear depth probe of a frozen backbone (BN + 1x1 conv on patch (+) CLS, 256 bins, RMSE).

    python tools/lineval/nyud.py RUN_DIR --data-root data/nyud [--protocol cached|online]
    python tools/lineval/nyud.py RUN_DIR --dataset toy_scenes

Writes RUN_DIR/lineval/nyud.json (toy scenes: toy_scenes_depth.json); see docs/lineval.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mdistiller.cli import lineval_script  # noqa: E402

if __name__ == "__main__":
    lineval_script("nyud")
