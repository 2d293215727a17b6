#!/usr/bin/env python
"""Transfer linear probe: aircraft, pets, food101, flowers102, inat2019, fashion_mnist or toy_scenes.

    python tools/lineval/transfer.py RUN_DIR --dataset aircraft --data-root data/fgvc-aircraft-2013b
    python tools/lineval/transfer.py dinov2_small_imgfocus --dataset fashion_mnist --num-train 5000 --num-test 2000

Writes RUN_DIR/lineval/transfer_<dataset>.json (toy scenes: toy_scenes_cls.json); see docs/lineval.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mdistiller.cli import lineval_script  # noqa: E402

if __name__ == "__main__":
    lineval_script("transfer")
