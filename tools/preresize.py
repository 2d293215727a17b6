"""Copy an ImageNet-style folder tree with every image's shorter side reduced (default 256 px), as RGB JPEGs.

    python tools/preresize.py --src /data/imagenet --dst /data/imagenet-256 [--short-side 256] [--quality 90]
                              [--splits train,val] [--workers N] [--dry-run]

Class folders and file names stay the same, so ``DATASET.ROOT /data/imagenet-256`` gives the same samples and
labels.  Resumable: files already in ``--dst`` are skipped.  The rules (never upscale, RGB conversion, atomic
writes) are in :mod:`mdistiller.dataset.preresize`.  Exit status: 0 done, 1 some files failed, 2 bad arguments.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import argparse  # noqa: E402
import os  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        description="Copy an ImageNet-style tree (root/{train,val}/<class>/*.JPEG) with every image's shorter side "
        "resized to --short-side (never upscaled), saved as RGB JPEG under the same relative paths.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--src", required=True, help="source root holding train/<class>/* and/or val/<class>/*")
    p.add_argument("--dst", required=True, help="destination root (created; existing files are kept and skipped)")
    p.add_argument("--short-side", type=int, default=256, help="shorter side of the output images in pixels")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (1-100)")
    p.add_argument("--splits", default="train,val", help="comma-separated split folders to copy")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="conversion processes")
    p.add_argument("--dry-run", action="store_true", help="only count the images to write and to skip")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the tool; returns the exit status."""
    args = build_parser().parse_args(argv)
    from mdistiller.dataset.preresize import (
        PreresizeError,
        check_options,
        check_roots,
        human_bytes,
        plan_tree,
        preresize_tree,
    )

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    try:
        check_options(args.short_side, args.quality, args.workers)
        src, dst = check_roots(args.src, args.dst, splits)
        if args.dry_run:
            plan = plan_tree(src, dst, splits)
            for split, c in plan.per_split.items():
                print(
                    f"{split}: {c['classes']} classes, {c['images']} images, {c['to_write']} to write, "
                    f"{c['present']} already in {dst / split}"
                )
            for split in splits:
                if split not in plan.per_split:
                    print(f"{split}: no folder {src / split} (left out)")
            print(
                f"dry run: would write {len(plan.jobs)} of {plan.total} images "
                f"({human_bytes(plan.src_bytes)} of source files) and skip {plan.skipped}"
            )
            return 0
        for split in splits:
            if not (src / split).is_dir():
                print(f"note: no folder {src / split}; split '{split}' left out", file=sys.stderr)
        summary = preresize_tree(
            src,
            dst,
            short_side=args.short_side,
            quality=args.quality,
            splits=splits,
            workers=args.workers,
            progress=not args.no_progress,
        )
    except PreresizeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.format())
    print(f"output: {dst}")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    from mdistiller.cli import exit_on_interrupt

    with exit_on_interrupt():  # Ctrl-C while torch imports: one line, exit 130
        sys.exit(main())
