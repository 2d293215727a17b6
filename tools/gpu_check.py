#!/usr/bin/env python
"""One-command acceptance check of the GPU paths: ``python tools/gpu_check.py`` (or ``make gpu-check``).

About 8 minutes on one GPU (``--budget-s``); writes ``output/gpu_check/report.md`` and ``report.json``:

* a: ViT-L → ViT-Ti, 224 px, bf16 autocast: FitNet / ViTKD / SiNGER step time, images/s, peak memory, achieved
  TFLOP/s (the project's FLOP bound) and fraction of the device's bf16 dense peak, eager and ``torch.compile``;
* b: the same with the teacher weights in bf16 (``DISTILLER.TEACHER_DTYPE bfloat16``);
* c: ``torchrun --nproc-per-node 1 tools/train.py`` for ~50 steps on a synthetic ImageNet folder (random JPEGs
  written here), ``DATASET.DECODE cpu`` and ``device``: loader-bound or compute-bound;
* d: a run stopped by SIGTERM mid-way and rerun ends equal to the uninterrupted run (losses, student weights);
* e: a cached linear probe on the trained student.

Each part fails soft: its error goes into the report and the next part runs; the compile runs go last and use
the time left. The exit status is 0 when parts a–e are ok, 1 otherwise. ``--device cpu --tiny`` runs the whole
check with tiny random ViTs on a CPU in about a minute (what ``tests/test_gpu_check.py`` runs)::

    python tools/gpu_check.py                          # the GPU check (needs CUDA)
    python tools/gpu_check.py --peak-tflops 989        # a device missing from the peak table
    python tools/gpu_check.py --device cpu --tiny      # the same plumbing on a CPU, tiny models
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    p.add_argument("--tiny", action="store_true",
                   help="tiny random ViTs (4/3 blocks, width 96/48), 32 px, batch 4, a few steps: the CPU smoke run")
    p.add_argument("--out", default="output/gpu_check", help="report folder (report.md, report.json, logs, data)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds for the whole check; parts that do not fit are reported as skipped (default: 480; "
                        "1800 with --tiny, whose CPU time depends on what else the machine runs)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="bf16 dense peak of the device (default: looked up from the device name)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile for a and b (default: on for CUDA, off for the CPU)")
    p.add_argument("--batch", type=int, default=None, help="images per step in a, b and c (default: 128; tiny 4)")
    p.add_argument("--train-steps", type=int, default=None, help="steps of each run in c (default: 50; tiny 6)")
    p.add_argument("--workers", type=int, default=None,
                   help="loader workers in c-e (default: CPU count − 2, at most 8; tiny 0)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from mdistiller.bench.gpu_check import CheckSettings, run_check

    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu_check.py: error: CUDA is not available here; run it on a GPU machine, or use "
                  "--device cpu --tiny for the CPU smoke run.", file=sys.stderr)
            return 2
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        print(f"gpu_check.py: error: --peak-tflops must be positive, got {args.peak_tflops}.", file=sys.stderr)
        return 2
    settings = CheckSettings.for_device(
        args.device, args.tiny, out=Path(args.out), peak=args.peak_tflops,
        budget_s=args.budget_s if args.budget_s is not None else (1800.0 if args.tiny else 480.0),
        compile=args.compile if args.compile is not None else args.device.startswith("cuda"),
        batch=args.batch, train_steps=args.train_steps, workers=args.workers)
    report = run_check(settings)
    print(f"[gpu_check] {'all parts ok' if report['ok'] else 'some parts failed'} in {report['total_s']} s; "
          f"report: {settings.out / 'report.md'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    from mdistiller.cli import exit_on_interrupt

    with exit_on_interrupt():  # Ctrl-C while torch imports: one line, exit 130
        sys.exit(main())
