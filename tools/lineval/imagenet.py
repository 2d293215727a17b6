#!/usr/bin/env python
"""ImageNet-1k linear probe of a frozen backbone (and ImageNet-R / ImageNet-v2 with the same head).

    python tools/lineval/imagenet.py RUN_DIR --data-root data/imagenet [--imagenet-r-root data/imagenet-r]
        [--imagenet-v2-root data/imagenet-v2] [--protocol cached|online]
    python tools/lineval/imagenet.py dinov2_small_imgfocus --dataset toy_scenes --input-size 112

Writes RUN_DIR/lineval/imagenet.json (toy scenes: toy_scenes_cls.json); see docs/lineval.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mdistiller.cli import lineval_script  # noqa: E402

if __name__ == "__main__":
    lineval_script("imagenet")
