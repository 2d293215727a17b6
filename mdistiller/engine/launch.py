"""Distil a ViT: ``python tools/train.py --cfg A.yaml [B.yaml ...] [KEY VALUE ...]`` (or ``mdistiller-train``).

The same command runs in one process (CPU or one GPU) and under torchrun, single or multi-node::

    torchrun --standalone --nproc-per-node=8 tools/train.py --cfg configs/imagenet/vit/singer.yaml \\
        configs/imagenet/optim/adamw.yaml
    torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=$HOST:29500 tools/train.py --cfg ...

The run directory (``EXPERIMENT.OUTPUT_DIR/PROJECT/NAME`` or ``--run-dir``) receives ``config.yaml``,
``run_info.json``, ``metrics.jsonl``, ``checkpoints/{last,prev}.pth`` and, at the end, ``student.safetensors``.
Without ``--run-dir`` or an ``EXPERIMENT.NAME`` override, overrides that change what is trained extend the name
(``singer,SOLVER.LR=0.001``): each value of a sweep gets its own run. Resuming compares the config with the
checkpoint's key by key and refuses a change of what is trained (``EXPERIMENT.RESUME_ALLOW_CHANGES`` permits the
sound ones). One run at a time may use a run directory (a lock file, ``RUN_DIR/.lock``); ``--resume none`` into a
directory that already holds a run needs ``--overwrite``. What can be refused before the lock is
(``engine/preflight.py``: the run directory, the device, the weights sources); a run refused later while it is built
leaves no lock file or empty run directory behind. Exit codes: 0 done, 1 failed while running, 2 refused
before any compute (bad config, weights or resume), 3 lost its peers under torchrun/SLURM (another rank was
killed or crashed, noticed within seconds, or hung longer than ``EXPERIMENT.DIST_TIMEOUT_MIN``; rerun to resume from
the last checkpoint), 130 stopped by a signal (a checkpoint was written, or training had not started yet; a
SIGINT/SIGTERM to any one rank stops every rank after the same step), 128 + N ended at once by a second signal N
while stopping (143 for SIGTERM; the checkpoints on disk stay valid).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """The command line's options (``--cfg`` files, ``--resume``, ``--run-dir``, ...) and ``KEY VALUE`` overrides."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=[], metavar="YAML", help="config files, merged left to right")
    p.add_argument("--resume", default="auto", metavar="auto|none|PATH",
                   help="auto: continue from RUN_DIR/checkpoints/last.pth (prev.pth when last.pth is unreadable) "
                        "when there is one (default); none: start over; PATH: that checkpoint")
    p.add_argument("--run-dir", default=None,
                   help="use this run directory as given (default: EXPERIMENT.OUTPUT_DIR/PROJECT/NAME, the name "
                        "extended by the overrides that change what is trained)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --resume none: delete the previous run's checkpoints, metrics and student first, and "
                        "move its probe and analysis results into RUN_DIR/.overwritten-<time>/")
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


#: exit status of a rank whose peers were lost (a rank killed or crashed, or no answer within the timeout)
PEERS_LOST = 3


def _peers_lost_sentence(rank: int, why: str, trainer) -> str:
    """One sentence for a rank whose collective failed because of a peer."""
    where, kept = "", "no checkpoint was written in this session: rerun the same command"
    if trainer is not None:
        where = f" after step {trainer.step}"
        if trainer.saved_step is not None:
            kept = (f"the last checkpoint ({trainer.ckpt_path}, step {trainer.saved_step}) is kept: rerun the same "
                    "command to resume from it")
    return f"rank {rank} lost its peers{where}: {why}; {kept}"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line of ``tools/train.py`` and ``mdistiller-train``; returns the exit status."""
    os.environ.setdefault("WANDB_MODE", "offline")
    args = parse_args(argv, prog)
    from mdistiller.config import ConfigError, load_config

    try:
        cfg = load_config(args.cfg, args.opts)
        if not args.run_dir:  # the overrides that change what is trained name the run (a sweep: one run per value)
            from mdistiller.engine.rundir import named_config

            cfg = named_config(cfg, load_config(args.cfg, [], validate=False), [str(k) for k in args.opts[0::2]])
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
    from mdistiller.engine.distributed import cleanup, init_distributed, peer_failure
    from mdistiller.engine.preflight import check_launch
    from mdistiller.engine.rundir import RunDirError, claim_run_dir
    from mdistiller.engine.runlock import RunLockedError
    from mdistiller.engine.trainer import NonFiniteLossError, Trainer, run_dir_for

    run_dir = Path(args.run_dir) if args.run_dir else run_dir_for(cfg)
    try:  # before any lock, process group or model: a refusal leaves nothing behind
        check_launch(cfg, run_dir, args.device, cfg_given=bool(args.cfg),
                     run_dir_flag="--run-dir" if args.run_dir else "run directory")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = init_distributed(args.device or cfg.EXPERIMENT.DEVICE, timeout_minutes=cfg.EXPERIMENT.DIST_TIMEOUT_MIN)
    try:
        start = claim_run_dir(run_dir, args.resume, args.overwrite, is_main=env.is_main)
    except (RunLockedError, RunDirError) as e:  # the process group is already torn down
        if env.is_main:
            print(f"error: {str(e).rstrip('.')}.", file=sys.stderr)
        return 2
    resume, trainer = start.checkpoint, None
    try:
        trainer = Trainer(cfg, env, run_dir)
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
    except (FileNotFoundError, RunDirError, CheckpointError, NonFiniteLossError, ValueError, IndexError) as e:
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
        cleanup()
        return getattr(e, "exit_code", 1)
    except RuntimeError as e:
        why = peer_failure(e, cfg.EXPERIMENT.DIST_TIMEOUT_MIN) if env.distributed else None
        if why is None:
            raise
        # no cleanup(): the process group is broken, and destroying it could wait on the lost peer
        print(f"error: {_peers_lost_sentence(env.rank, why, trainer)}.", file=sys.stderr, flush=True)
        return PEERS_LOST
    finally:
        start.release()
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
