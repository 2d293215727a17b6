#!/usr/bin/env python
"""ADE20K linear segmentation probe of a frozen backbone (BN + 1x1 conv on patch tokens, dataset mIoU).

    python tools/lineval/ade20k.py RUN_DIR --data-root data/ade20k [--protocol cached|online] [--slide 149]
    python tools/lineval/ade20k.py RUN_DIR --dataset toy_scenes

Writes RUN_DIR/lineval/ade20k.json (toy scenes: toy_scenes_seg.json); see docs/lineval.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mdistiller.cli import lineval_script  # noqa: E402

if __name__ == "__main__":
    lineval_script("ade20k")
