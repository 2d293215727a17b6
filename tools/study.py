#!/usr/bin/env python
"""Seeded study: FitNet, ViTKD and SiNGER (paper, released, scale-aware) × clean / emulated-artifact teacher × seeds.

    python tools/study.py                      # CPU, 3 seeds, runs and probes two at a time; rerun to resume
    python tools/study.py --device cuda        # minutes on one GPU
    python tools/study.py --ladder --doc docs/study.md   # the ablation ladder, its section written into the doc
    python tools/study.py --matrix long        # the long arm (FitNet, clamp, scale-aware SiNGER; artifact teacher)

``--matrix`` names one of ``mdistiller.study.MATRICES`` (its methods, teachers, pairs and default steps);
``--doc FILE`` puts the report between ``<!-- study:MATRIX -->`` markers in FILE (replaced on every rerun).

The Fashion-MNIST probe reads ``/usr/share/datasets/fashion-mnist`` (Debian: ``apt-get install dataset-fashion-mnist``).
Writes ``OUT/study.md`` (tables with 95 % intervals, the refinement acceptance table), ``OUT/study.json`` and
``OUT/figures/study.png``. Every run has the same budget; nothing is dropped or re-picked: all seeds are reported.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mdistiller.study import StudySettings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the matrix's defaults filled in (methods, steps) and the probe labels checked."""
    from mdistiller.study import MATRICES, PROBES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--matrix", choices=tuple(MATRICES), default="study",
                   help="named experiment: its methods, teachers, paired differences and default steps")
    p.add_argument("--ladder", action="store_const", const="ladder", dest="matrix", help="same as --matrix ladder")
    p.add_argument("--out", default=None, help="study folder (runs, probes, report; default output/MATRIX)")
    p.add_argument("--doc", default=None, help="also write the report into this markdown file, between markers")
    p.add_argument("--methods", default=None,
                   help="comma-separated methods of mdistiller.study.METHODS (default: the matrix's)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (init, data order, probe split)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per run, the same for every method (default: the matrix's, 100 for study "
                        "and ladder)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=112, help="student image size (grid size/16; the /14 teacher matches)")
    p.add_argument("--probe-train", type=int, default=400, help="toy scenes to train each probe")
    p.add_argument("--probe-test", type=int, default=200, help="toy scenes to test each probe")
    p.add_argument("--fmnist-train", type=int, default=600, help="Fashion-MNIST training images per probe")
    p.add_argument("--fmnist-test", type=int, default=300, help="Fashion-MNIST test images per probe")
    p.add_argument("--heldout", type=int, default=64, help="held-out toy scenes for the refinement numbers")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--amp", choices=("auto", "none", "bf16"), default="auto",
                   help="training precision; auto = bf16 on CUDA and on CPUs with native bf16, else fp32")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads in all")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs and probes side by side, --threads / --jobs threads each (default: 2 on CPU, 1 on CUDA)")
    p.add_argument("--no-probes", action="store_true", help="train and measure refinement only")
    p.add_argument("--report-only", action="store_true",
                   help="start nothing: write the report from the runs and probes finished so far (says how many)")
    p.add_argument("--probes", default=None,
                   help="comma-separated probe labels to run (default all), e.g. 'toy cls top-1,F-MNIST top-1'")
    args = p.parse_args(argv)
    matrix = MATRICES[args.matrix]
    args.out = args.out or f"output/{args.matrix}"
    args.methods = args.methods or ",".join(matrix.methods)
    args.steps = args.steps if args.steps is not None else matrix.steps
    labels = [label for label, *_ in PROBES]
    args.probe_labels = [x for x in (args.probes or ",".join(labels)).split(",") if x]
    unknown = [x for x in args.probe_labels if x not in labels]
    if unknown:
        p.error(f"unknown probe label(s) {unknown}; choose from {labels}.")
    return args


def _budget_flags(args: argparse.Namespace) -> str:
    """The command-line flags whose values differ from the matrix's defaults (the report's reproduce line)."""
    import shlex

    default = vars(parse_args(["--matrix", args.matrix]))
    keys = ("methods", "seeds", "steps", "batch", "size", "probe_train", "probe_test", "fmnist_train", "fmnist_test",
            "heldout", "probes", "device", "amp")
    return "".join(f" --{k.replace('_', '-')} {shlex.quote(str(getattr(args, k)))}"
                   for k in keys if getattr(args, k) != default[k])


def settings(args: argparse.Namespace, amp: str) -> StudySettings:
    """The library's :class:`mdistiller.study.StudySettings` of the parsed command line (``amp`` resolved)."""
    from mdistiller.study import StudySettings

    return StudySettings(
        matrix=args.matrix, methods=tuple(m for m in args.methods.split(",") if m),
        seeds=tuple(int(s) for s in args.seeds.split(",") if s), steps=args.steps,
        probe_labels=tuple(args.probe_labels), batch=args.batch, size=args.size, probe_train=args.probe_train,
        probe_test=args.probe_test, fmnist_train=args.fmnist_train, fmnist_test=args.fmnist_test,
        heldout=args.heldout, device=args.device, amp=amp, no_probes=args.no_probes)


def main(argv: list[str] | None = None) -> int:
    """Run (or, with ``--report-only``, only report) the study the flags describe; print its report."""
    args = parse_args(argv)
    import torch

    from mdistiller import study

    torch.set_num_threads(args.threads)
    report = study.run_study(settings(args, study.resolve_amp(args.amp, args.device)), args.out, jobs=args.jobs,
                             threads=args.threads, report_only=args.report_only, command_flags=_budget_flags(args),
                             doc=args.doc, record=vars(args))
    print(report)
    return 0


if __name__ == "__main__":
    from mdistiller.cli import exit_on_interrupt

    with exit_on_interrupt():  # Ctrl-C while torch imports: one line, exit 130
        sys.exit(main())
