#!/usr/bin/env python
"""Render a Table-1-style summary from several runs' linear-probe results.

    python tools/lineval/table.py RUN_A RUN_B dinov2_small_imgfocus [--names A B T] [--out table.md --out table.csv]
    python tools/lineval/table.py --wandb output/demo/runs      # the results logged into offline wandb runs

Columns: IN-val top-1, ADE-20K mIoU, NYUd-v2 RMSE, iNat2019 top-1, DS top-1 (mean of IN-R and IN-v2), FG top-1
(mean of the four fine-grained sets); plus toy-scene columns when those results exist. Markdown goes to stdout;
--out writes Markdown (.md) or CSV (.csv) files. Also installed as ``mdistiller-lineval table``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mdistiller.cli import lineval_script  # noqa: E402

if __name__ == "__main__":
    lineval_script("table")
