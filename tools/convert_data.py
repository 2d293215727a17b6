#!/usr/bin/env python
"""Copy an ImageNet-style folder tree into WebDataset shards or a saved Hugging Face dataset (``DATASET.FORMAT``).

    python tools/convert_data.py --src /data/imagenet --dst /data/imagenet-wds --to wds [--shard-size 1000]
    python tools/convert_data.py --src /data/imagenet --dst /data/imagenet-hfds --to hfds

The image files are copied byte for byte, so the new storage holds the very images (and labels: the sorted class
folders) of ``--src``; then train with ``DATASET.FORMAT wds DATASET.ROOT /data/imagenet-wds`` (or ``hfds``). wds
writes ``<split>-000000.tar, ...`` (samples shuffled with ``--seed`` before sharding) plus ``classes.txt``; hfds
writes a ``DatasetDict`` with the splits ``train`` and ``validation``. The writers are in
:mod:`mdistiller.dataset.writers`. Exit status: 0 done, 2 bad arguments or input.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import argparse  # noqa: E402

HFDS_SPLITS = {"train": "train", "val": "validation"}


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        description="Copy an ImageNet-style tree (root/{train,val}/<class>/*.JPEG) into WebDataset shards (--to wds) "
                    "or a saved Hugging Face dataset (--to hfds), byte for byte.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--src", required=True, help="source root holding train/<class>/* and/or val/<class>/*")
    p.add_argument("--dst", required=True, help="destination folder (created)")
    p.add_argument("--to", required=True, choices=("wds", "hfds"), help="the storage to write")
    p.add_argument("--splits", default="train,val", help="comma-separated split folders to copy (those present)")
    p.add_argument("--shard-size", type=int, default=1000, help="wds: samples per shard")
    p.add_argument("--seed", type=int, default=0, help="wds: seed of the shuffle before sharding")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the tool; returns the exit status."""
    args = build_parser().parse_args(argv)
    from mdistiller.dataset.folders import ImageFolderSplit

    src, dst = Path(args.src), Path(args.dst)
    wanted = [s.strip() for s in args.splits.split(",") if s.strip()]
    if args.shard_size < 1:
        print(f"error: --shard-size must be at least 1, got {args.shard_size}.", file=sys.stderr)
        return 2
    try:
        splits = {s: ImageFolderSplit(src, s) for s in wanted if (src / s).is_dir()}
        if not splits:
            raise FileNotFoundError(f"--src '{src}' has none of the split folders {', '.join(wanted)}; pass the root "
                                    "that holds train/<class>/*.")
        classes = next(iter(splits.values())).classes
        if args.to == "wds":
            from mdistiller.dataset.writers import write_wds

            for name, ds in splits.items():
                shards = write_wds(ds.samples, dst, name, shard_size=args.shard_size, seed=args.seed, classes=classes)
                print(f"{name}: {len(ds)} images in {len(shards)} shard(s) -> {dst}/{name}-*.tar")
        else:
            from mdistiller.dataset.writers import write_hfds

            write_hfds({HFDS_SPLITS.get(n, n): ds.samples for n, ds in splits.items()}, dst, classes)
            print(", ".join(f"{HFDS_SPLITS.get(n, n)}: {len(ds)} images" for n, ds in splits.items()) + f" -> {dst}")
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
