"""The command line of the side-by-side training-step benchmark of the distillers on one teacher, student, batch and
resolution (``python tools/bench.py`` or ``python -m mdistiller bench``, the same options).

Every timed item is built once, warmed up, then timed in alternation (round r runs A B C …, round r+1 runs
… C B A, so slow drift and position effects cancel in the ratios). Items:

* ``FitNet``, ``ViTKD``, ``SiNGER``: one training step — distiller forward (``loss``), backward, AdamW step,
  ``zero_grad`` — built with :func:`mdistiller.distillers.build_distiller` from the same seed;
* ``student``: the no-distillation step — student forward to its last block, a dummy loss on those tokens,
  backward, AdamW step, ``zero_grad``;
* components ``teacher`` (frozen teacher forward up to the deepest block any chosen method needs) and
  ``student_fb`` (student forward + backward, no optimizer), timed in the same rotation;
* component ``loader``: the training data loader alone (toy scenes, or ``--data`` stored as ``--format`` folder,
  wds (``--stream``: a shuffle buffer), hfds or images), timed after the rotation so its workers do not compete with
  the model steps; it also reports the loader workers' peak RSS.
* component ``stop_sync``: the trainer's per-step stop agreement (:mod:`mdistiller.bench.stop_sync`: a 2-rank gloo
  all-reduce over loopback on CPU, a 1-rank NCCL one on CUDA), timed in the same rotation and reported as the ratio
  "step with it / step without it" for every timed method.

Printed per item: median and min–max step time, images/s, peak memory (CUDA: max allocated; CPU: the process's
peak RSS during the item's steps, reset through ``/proc/self/clear_refs``), the FLOP bound per image
(:mod:`mdistiller.bench.flops`), the achieved TFLOP/s and, with ``--peak-tflops``, the fraction of peak; and the
ratio to FitNet as the median of the per-round paired wall-time ratios and the median paired CPU-time ratio
(steadier when other jobs share the CPU), each with a seeded bootstrap 95 % interval (2000 resamples of the
per-round ratios, :mod:`mdistiller.bench.stats`), and the FLOP-bound ratio. ``--json`` prints one JSON object.

Examples::

    python tools/bench.py                                   # small CPU default (10 rounds, ~1.5 min on 2 cores)
    python tools/bench.py --batch 16 --steps 8 --methods fitnet,singer --components none
    python tools/bench.py --device cuda --teacher vit_large --student vit_tiny --batch 256 --amp bf16 \\
        --compile --adamw fused --peak-tflops 989
    python tools/bench.py --tiny --steps 2 --warmup 1 --json
    python -m mdistiller bench --tiny --steps 2 --warmup 1 --json   # the same from an installed package
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from mdistiller.bench.items import COMPONENTS, METHODS, build_items, parse_names, resolve_device, time_loader
from mdistiller.bench.report import print_table, summarise
from mdistiller.bench.stop_sync import stop_sync_item
from mdistiller.bench.timing import BenchError, MemoryMeter, first_call, rotate

__all__ = ["TINY", "main", "parse_args"]

TINY = {
    "teacher": "vit_small", "student": "vit_tiny", "size": 32, "batch": 4, "rank": 8, "workers": 0,
    "teacher_kwargs": {"depth": 4, "embed_dim": 96, "num_heads": 3},
    "student_kwargs": {"depth": 3, "embed_dim": 48, "num_heads": 3},
}


# ------------------------------------------------------------------------------------------------ arguments
def parse_args(argv: Sequence[str] | None = None, prog: str = "tools/bench.py") -> argparse.Namespace:
    """The benchmark's options (``--tiny`` fills the ones left at their default from :data:`TINY`)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Time FitNet / ViTKD / SiNGER training steps side by side (alternating rounds) and compare "
                    "them with the analytic FLOP bound.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--teacher", default="vit_small", help="teacher short name or timm ViT name")
    p.add_argument("--student", default="vit_tiny", help="student short name or timm ViT name")
    p.add_argument("--teacher-kwargs", default="{}", help="JSON dict of extra timm kwargs for the teacher")
    p.add_argument("--student-kwargs", default="{}", help="JSON dict of extra timm kwargs for the student")
    p.add_argument("--teacher-weights", default="random", help="random | pretrained | /path/to/weights")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: 4 on CPU, 64 on CUDA)")
    p.add_argument("--size", type=int, default=224, help="input resolution in pixels (square)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed rounds (default: 10 on CPU, where step times are noisy, 20 on CUDA)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed rounds first, the first one compiling with --compile; every item is called at "
                        "least once before timing (default: 1 on CPU, 3 on CUDA)")
    p.add_argument("--methods", default="fitnet,vitkd,singer,student",
                   help="comma-separated training steps to time: fitnet, vitkd, singer, student (no distillation)")
    p.add_argument("--components", default="teacher,student_fb,loader,stop_sync",
                   help="comma-separated parts timed alone: teacher, student_fb, loader, stop_sync (the per-step "
                        "stop agreement of distributed training); 'none' for no parts")
    p.add_argument("--m-layers", default="auto",
                   help="SiNGER/FitNet intermediate teacher layers (comma-separated, 0-based) or 'auto' = the "
                        "block at relative depth 17/23 (layer 17 of 24, layer 8 of 12)")
    p.add_argument("--rank", type=int, default=16, help="SiNGER adapter rank (at most the teacher width)")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast dtype for the forward passes")
    p.add_argument("--compile", action="store_true", help="torch.compile each timed module (compile time reported)")
    p.add_argument("--compile-timeout", type=float, default=900.0,
                   help="seconds allowed for one item's first (compiling) call; past it the item runs eager")
    p.add_argument("--adamw", choices=("fused", "foreach", "forloop", "default"), default="fused",
                   help="AdamW implementation: fused kernels (CPU and CUDA), foreach, the per-tensor loop, or "
                        "torch's default (foreach on CUDA, the loop on CPU)")
    p.add_argument("--clip", type=float, default=0.0, help="also clip the gradient norm to this value (0 = off)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--omp-wait", choices=("passive", "active", "env"), default="passive",
                   help="OMP_WAIT_POLICY set before torch loads: passive (idle OpenMP threads sleep; far steadier "
                        "timings on a shared CPU), active (they spin), env (leave the environment alone); no effect "
                        "once torch is imported in this process")
    p.add_argument("--data", default=None,
                   help="the loader's data root, stored as --format (folder: root/train/<class>/*.JPEG); default: "
                        "procedural toy scenes")
    p.add_argument("--format", choices=("folder", "wds", "hfds", "images"), default="folder",
                   help="how --data stores the images (DATASET.FORMAT): class folders, WebDataset shards, a saved "
                        "Hugging Face dataset, or an unlabelled image tree")
    p.add_argument("--stream", action="store_true",
                   help="--format wds: read the shards as a stream (DATASET.WDS_MODE stream) instead of by index")
    p.add_argument("--shuffle-buffer", type=int, default=1000,
                   help="--stream: samples each loader worker holds for shuffling (DATASET.SHUFFLE_BUFFER)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: 2, 0 with --tiny)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak TFLOP/s for the achieved fraction (e.g. 989 for H100 bf16 dense)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch")
    p.add_argument("--cfg", action="append", default=[], help="extra YAML config file (may repeat)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides, e.g. SiNGER.RANK 8")
    p.add_argument("--tiny", action="store_true", help="tiny preset: 4-block width-96 teacher, 3-block width-48 "
                                                       "student, 32 px, batch 4 (seconds on CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--output", default=None, help="also write the JSON result to this file")
    args = p.parse_args(argv)
    if args.tiny:  # the preset fills only what was left at its default
        preset = {"teacher": TINY["teacher"], "student": TINY["student"], "size": TINY["size"], "rank": TINY["rank"],
                  "teacher_kwargs": json.dumps(TINY["teacher_kwargs"]),
                  "student_kwargs": json.dumps(TINY["student_kwargs"]), "batch": TINY["batch"],
                  "workers": TINY["workers"]}
        for key, value in preset.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args



# ------------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None, prog: str = "tools/bench.py") -> dict:
    """Run the benchmark; returns the result dictionary (also printed). A bad option exits with status 2 and one
    line ``<prog>: error: ...`` (``bench.py: error: ...`` for ``tools/bench.py``)."""
    args = parse_args(argv, prog)
    try:
        return _main(args)
    except BenchError as e:
        print(f"{prog.rsplit('/', 1)[-1]}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _main(args: argparse.Namespace) -> dict:
    if args.omp_wait != "env":
        if "torch" in sys.modules:
            if os.environ.get("OMP_WAIT_POLICY", "").lower() != args.omp_wait:
                warnings.warn(f"--omp-wait {args.omp_wait} has no effect: torch is already imported.", stacklevel=2)
        else:
            os.environ["OMP_WAIT_POLICY"] = args.omp_wait.upper()
    import torch

    methods = parse_names(args.methods, METHODS, "method")
    components = parse_names(args.components, COMPONENTS, "component")
    if not methods and not components:
        raise BenchError("nothing to time: give at least one of --methods or --components.")
    if args.threads is not None:
        if args.threads < 1:
            raise BenchError(f"--threads must be a positive integer, got {args.threads}.")
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    args.batch = args.batch or (64 if cuda else 4)
    args.steps = args.steps if args.steps is not None else (20 if cuda else 10)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    for flag, value, low in (("--batch", args.batch, 1), ("--size", args.size, 1), ("--steps", args.steps, 1),
                             ("--warmup", args.warmup, 0)):
        if value < low:
            raise BenchError(f"{flag} must be at least {low}, got {value}.")
    if "loader" in components and args.data and not Path(args.data).is_dir():
        raise BenchError(f"--data folder '{args.data}' does not exist; pass the dataset's root folder.")
    if args.shuffle_buffer < 0:
        raise BenchError(f"--shuffle-buffer must be >= 0, got {args.shuffle_buffer}.")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise BenchError(f"--peak-tflops must be positive, got {args.peak_tflops}.")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        items, info = build_items(args, methods, [c for c in components if c not in ("loader", "stop_sync")],
                                  device)
    meter = MemoryMeter(device)
    with contextlib.ExitStack() as stack:
        sync = stack.enter_context(stop_sync_item(device)) if "stop_sync" in components else None
        if sync is not None:  # its process group (and CPU peer) end with the rotation
            items.append(sync)
        for item in items:  # first call (compilation, allocator warm-up), then the remaining warm-up rounds
            first_call(item, device, args.compile, args.compile_timeout)
        if args.warmup > 1:
            rotate(items, args.warmup - 1, device, meter)
        for item in items:
            item.times.clear(), item.cpu_times.clear(), item.peaks.clear(), item.deltas.clear()
        rotate(items, args.steps, device, meter)
    if "loader" in components:
        items.append(time_loader(args, device, args.steps, max(1, args.warmup)))
    result = summarise(items, args, device, meter, info)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return result
