#!/usr/bin/env python
"""Distil a ViT: ``python tools/train.py --cfg A.yaml [B.yaml ...] [KEY VALUE ...]``.

A thin wrapper over :mod:`mdistiller.engine.launch` (also installed as the ``mdistiller-train`` command); see
``python tools/train.py --help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdistiller.cli import exit_on_interrupt  # noqa: E402

with exit_on_interrupt():  # Ctrl-C while the package or torch imports: one line, exit 130
    from mdistiller.engine.launch import main, parse_args  # noqa: F401

if __name__ == "__main__":
    with exit_on_interrupt():
        sys.exit(main(prog="tools/train.py"))
