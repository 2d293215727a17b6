"""Distil a ViT: ``python tools/train.py --cfg A.yaml [B.yaml ...] [KEY VALUE ...]`` (or ``mdistiller-train``).

The same command runs in one process (CPU or one GPU) and under torchrun, single or multi-node::

    torchrun --standalone --nproc-per-node=8 tools/train.py --cfg configs/imagenet/vit/singer.yaml \\
        configs/imagenet/optim/adamw.yaml
    torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=$HOST:29500 tools/train.py --cfg ...

The run directory (``EXPERIMENT.OUTPUT_DIR/PROJECT/NAME`` or ``--run-dir``) receives ``config.yaml``,
``run_info.json``, ``metrics.jsonl``, ``checkpoints/{last,prev}.pth`` and, at the end, ``student.safetensors``.
One run at a time may use a run directory (a lock file, ``RUN_DIR/.lock``); ``--resume none`` into a directory that
already holds a run needs ``--overwrite``. What can be refused before the lock is (``engine/preflight.py``: the run
directory, the device, the weights sources); a run refused later while it is built leaves no lock file or empty run
directory behind. Exit codes: 0 done, 1 failed while running, 2 refused before any compute (bad config, weights or
resume), 130 stopped by a signal (a checkpoint was written) or interrupted before training started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=[], metavar="YAML", help="config files, merged left to right")
    p.add_argument("--resume", default="auto", metavar="auto|none|PATH",
                   help="auto: continue from RUN_DIR/checkpoints/last.pth when it exists (default); none: start over")
    p.add_argument("--run-dir", default=None, help="override EXPERIMENT.OUTPUT_DIR/PROJECT/NAME")
    p.add_argument("--overwrite", action="store_true",
                   help="with --resume none: delete the previous run's checkpoints, metrics and student first")
    p.add_argument("--device", default=None, help="cpu | cuda (default: EXPERIMENT.DEVICE)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. SOLVER.LR 1e-4")
    args = p.parse_args(argv)
    # `--cfg a.yaml b.yaml KEY VALUE`: argparse hands the overrides to --cfg; move them back to opts.
    for i, item in enumerate(args.cfg):
        if not item.endswith((".yaml", ".yml")):
            args.opts = args.cfg[i:] + list(args.opts)
            args.cfg = args.cfg[:i]
            break
    return args


# What a run leaves in its directory; --overwrite removes exactly these.
RUN_FILES = ("config.yaml", "run_info.json", "metrics.jsonl", "checkpoints", "student.safetensors",
             "student.safetensors.json", "tb", "wandb", "wandb_run.json", "train.log")


def _previous_run(run_dir: Path) -> list[str]:
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def _claim_run_dir(args: argparse.Namespace, run_dir: Path):
    """Main rank: lock ``run_dir`` and apply --resume none / --overwrite. Returns ``(lock, error sentence)``."""
    from mdistiller.engine.runlock import RunLock, RunLockedError

    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except RunLockedError as e:
        return None, str(e)
    if lock.stale:
        print(f"[mdistiller] note: took over the lock of a run that is gone (pid {lock.stale.get('pid')} on "
              f"{lock.stale.get('host')})", file=sys.stderr)
    if args.resume in ("none", "") and (found := _previous_run(run_dir)):
        if not args.overwrite:
            lock.release()
            return None, (f"run directory {run_dir} already holds a run ({', '.join(found)}); resume it with "
                          "--resume auto, pick another --run-dir, or pass --overwrite to delete it and start over")
        for name in found:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return lock, None


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line of ``tools/train.py`` and ``mdistiller-train``; returns the exit status."""
    os.environ.setdefault("WANDB_MODE", "offline")
    args = parse_args(argv, prog)
    from mdistiller.config import ConfigError, load_config

    try:
        cfg = load_config(args.cfg, args.opts)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(cfg.dump())
        return 0
    if args.overwrite and args.resume not in ("none", ""):
        print("error: --overwrite only applies to a fresh start; add --resume none.", file=sys.stderr)
        return 2
    from mdistiller.dataset.bad_images import BadImageError, bad_image_sentence
    from mdistiller.engine.checkpoint import CheckpointError
    from mdistiller.engine.distributed import broadcast_object, cleanup, init_distributed
    from mdistiller.engine.preflight import check_launch, missing_dirs, release_run_dir
    from mdistiller.engine.trainer import NonFiniteLossError, Trainer, run_dir_for

    run_dir = Path(args.run_dir) if args.run_dir else run_dir_for(cfg)
    try:  # before any lock, process group or model: a refusal leaves nothing behind
        check_launch(cfg, run_dir, args.device, cfg_given=bool(args.cfg),
                     run_dir_flag="--run-dir" if args.run_dir else "run directory")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = init_distributed(args.device or cfg.EXPERIMENT.DEVICE)
    created = missing_dirs(run_dir)
    lock, refused = _claim_run_dir(args, run_dir) if env.is_main else (None, None)
    refused = broadcast_object(refused)
    if refused:
        if env.is_main:
            print(f"error: {refused}.", file=sys.stderr)
        cleanup()
        return 2
    try:
        trainer = Trainer(cfg, env, run_dir)
        resume = None
        if args.resume == "auto":
            resume = trainer.ckpt_path if trainer.ckpt_path.exists() else None
        elif args.resume not in ("none", ""):
            resume = Path(args.resume)
        if env.is_main:
            where = f"resuming from {resume}" if resume else "starting"
            print(f"[mdistiller] {cfg.DISTILLER.TYPE} {cfg.DISTILLER.TEACHER} → {cfg.DISTILLER.STUDENT} "
                  f"{trainer.distiller.plan}; {where}; world size {env.world_size}; run dir {run_dir}", flush=True)
        result = trainer.fit(resume)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        cleanup()
        return 2
    except BadImageError as e:
        print(f"error: {bad_image_sentence(e)}", file=sys.stderr)
        cleanup()
        return 1
    except (FileNotFoundError, CheckpointError, NonFiniteLossError, ValueError, IndexError) as e:
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
        cleanup()
        return getattr(e, "exit_code", 1)
    finally:
        if lock is not None:
            release_run_dir(lock, run_dir, created)  # a run that never started leaves no lock file or empty dir
    cleanup()
    if "interrupted" in result:
        if env.is_main:
            print(f"[mdistiller] stopped by signal {result['interrupted']}; checkpoint written to "
                  f"{trainer.ckpt_path}; rerun the same command to resume.", file=sys.stderr)
        return 130
    if env.is_main:
        if result.get("bad_images"):
            print(f"[mdistiller] warning: skipped {result['bad_images']} undecodable training image(s) "
                  "(DATASET.SKIP_BAD_IMAGES); the file names are in the warnings above.", file=sys.stderr)
        print(f"[mdistiller] done: step {trainer.step}, student exported to {run_dir / 'student.safetensors'}")
    return 0
