#!/usr/bin/env python
"""One-command acceptance check of the GPU paths: ``python tools/gpu_check.py`` (or ``make gpu-check``).

About 8 minutes on one GPU (``--budget-s``); writes ``output/gpu_check/report.md`` and ``report.json``:

* a: ViT-L → ViT-Ti, 224 px, bf16 autocast: FitNet / ViTKD / SiNGER step time, images/s, peak memory, achieved
  TFLOP/s (the project's FLOP bound) and fraction of the device's bf16 dense peak, eager and ``torch.compile``;
* b: the same with the teacher weights in bf16 (``DISTILLER.TEACHER_DTYPE bfloat16``);
* c: ``torchrun --nproc-per-node 1 -m mdistiller train`` for ~50 steps on a synthetic ImageNet folder (random JPEGs
  written here), ``DATASET.DECODE cpu`` and ``device``: loader-bound or compute-bound;
* d: a run stopped by SIGTERM mid-way and rerun ends equal to the uninterrupted run (losses, student weights);
* e: a cached linear probe on the trained student.

Each part fails soft: its error goes into the report and the next part runs; the compile runs go last and use
the time left. The exit status is 0 when parts a–e are ok, 1 otherwise. ``--device cpu --tiny`` runs the whole
check with tiny random ViTs on a CPU in about a minute (what ``tests/test_gpu_check.py`` runs). A thin wrapper over
:func:`mdistiller.bench.gpu_check.main` (also ``python -m mdistiller gpu-check``)::

    python tools/gpu_check.py                          # the GPU check (needs CUDA)
    python tools/gpu_check.py --peak-tflops 989        # a device missing from the peak table
    python tools/gpu_check.py --device cpu --tiny      # the same plumbing on a CPU, tiny models
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mdistiller.cli import exit_on_interrupt  # noqa: E402

with exit_on_interrupt():  # Ctrl-C while the package imports: one line, exit 130
    from mdistiller.bench.gpu_check import main, parse_args  # noqa: F401

if __name__ == "__main__":
    with exit_on_interrupt():  # Ctrl-C while torch imports: one line, exit 130
        sys.exit(main())
