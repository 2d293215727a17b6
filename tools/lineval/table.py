#!/usr/bin/env python
"""Render a Table-1-style summary from several runs' linear-probe results.

    python tools/lineval/table.py RUN_A RUN_B dinov2_small_imgfocus [--names A B T] [--out table.md --out table.csv]

Columns: IN-val top-1, ADE-20K mIoU, NYUd-v2 RMSE, iNat2019 top-1, DS top-1 (mean of IN-R and IN-v2), FG top-1
(mean of the four fine-grained sets); plus toy-scene columns when those results exist. Markdown goes to stdout;
--out writes Markdown (.md) or CSV (.csv) files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/lineval/table.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (or their lineval/ folders, or model names)")
    p.add_argument("--names", nargs="+", default=None, help="row labels, one per run (default: folder names)")
    p.add_argument("--protocol", choices=("auto", "online", "cached"), default="auto",
                   help="auto: online result when present (marked †), else cached (default)")
    p.add_argument("--out", action="append", default=[], help="write the table to a .md or .csv file (repeatable)")
    args = p.parse_args(argv)
    from mdistiller.eval.table import collect_results, render_csv, render_markdown

    bad = [o for o in args.out if Path(o).suffix.lower() not in (".md", ".csv")]
    if bad:
        print(f"error: --out '{bad[0]}' must end in .md or .csv; pick one of those suffixes.", file=sys.stderr)
        return 1
    try:
        rows = collect_results(args.runs, args.names, args.protocol)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    md = render_markdown(rows)
    print(md, end="")
    for o in args.out:
        path = Path(o)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_csv(rows) if path.suffix.lower() == ".csv" else md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
