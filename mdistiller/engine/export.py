"""Export the student of any checkpoint: ``mdistiller-export RUN_DIR [--checkpoint last|prev|PATH] [--out FILE]``.

``tools/train.py`` writes ``student.safetensors`` only when a run ends; a checkpoint (``last.pth``, ``prev.pth``)
holds the whole distiller, optimizer and RNG state, which timm cannot read. This command takes the student out of
a checkpoint into the same timm-loadable file and sidecar the trainer writes (:mod:`mdistiller.models.export`), so an
interrupted or running run can be probed or shared. ``--extras`` also writes the method's own trained tensors
(projections, SiNGER adapters, feature scales) to ``<out stem>.extras.safetensors``.

A checkpoint that is not the trainer's, is corrupt, or holds non-finite student weights is refused in one sentence
(exit 2). The student's tensors are checked against the architecture the run's config names (built on the ``meta``
device, so nothing is allocated or downloaded).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mdistiller.engine import checkpoint as ckpt

__all__ = ["ExportError", "Exported", "export_checkpoint", "main"]

#: the student's tensors inside a checkpoint's ``model`` state (``Distiller.student`` is a ``ViTFeatures``)
STUDENT_PREFIX = "student.model."


class ExportError(ValueError):
    """The checkpoint cannot be exported; the message is one sentence naming the file and the fix."""


@dataclass(frozen=True)
class Exported:
    """What :func:`export_checkpoint` wrote."""

    student: Path
    checkpoint: Path
    step: int
    extras: Path | None = None


def checkpoint_path(run_dir: str | Path, checkpoint: str = "last") -> Path:
    """``last`` / ``prev`` → ``RUN_DIR/checkpoints/{last,prev}.pth``; anything else is a path to a checkpoint."""
    if checkpoint in ("last", "prev"):
        return Path(run_dir) / "checkpoints" / f"{checkpoint}.pth"
    return Path(checkpoint)


def _run_config(state: dict[str, Any], run_dir: Path, path: Path) -> Any:
    """The config the checkpoint was trained with (stored in it), else the run directory's ``config.yaml``."""
    from mdistiller.config import ConfigError, get_default_config, load_config

    dump = state.get("config")
    if isinstance(dump, str):
        cfg = get_default_config()
        cfg.set_new_allowed(True)
        cfg.merge_from_other_cfg(cfg.load_cfg(dump))
        return cfg
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise ExportError(f"checkpoint {path} stores no config and {cfg_file} does not exist; pass the run "
                          "directory the checkpoint belongs to.")
    try:
        return load_config([cfg_file], validate=False)
    except ConfigError as e:
        raise ExportError(f"cannot read {cfg_file}: {e}") from None


def _check_architecture(student: dict[str, torch.Tensor], name: str, kwargs: dict[str, Any], path: Path) -> None:
    """Refuse tensors that do not match ``name(**kwargs)`` key for key and shape for shape."""
    from mdistiller.models import build_model

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(name, **kwargs).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in student.items()}
    missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if missing or extra or wrong:
        what = "; ".join(f"{label} {', '.join(keys[:3])}" for label, keys in
                         (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys)
        raise ExportError(f"the student in {path} does not match its config's {name} ({what}); the checkpoint and "
                          "config come from different runs: pass the run directory that wrote this checkpoint.")


def export_checkpoint(run_dir: str | Path, checkpoint: str = "last", out: str | Path | None = None,
                      extras: bool = False) -> Exported:
    """Write the student of ``checkpoint`` (``last``, ``prev`` or a path) of ``run_dir`` as timm safetensors.

    ``out`` defaults to ``RUN_DIR/exports/student_step<N>.safetensors``. Raises :class:`ExportError` (one sentence)
    for a missing, corrupt, foreign or non-finite checkpoint.
    """
    from mdistiller.models.export import write_student_file

    run_dir = Path(run_dir)
    path = checkpoint_path(run_dir, checkpoint)
    try:
        state = ckpt.load_checkpoint(path, map_location="cpu")
    except ckpt.CheckpointError as e:
        why = "does not exist" if not path.is_file() else "is corrupt or truncated"
        other = " or --checkpoint prev" if checkpoint != "prev" else ""
        raise ExportError(f"cannot export {path}: the checkpoint {why} ({str(e).split(';')[0]}); pass another "
                          f"--checkpoint{other}.") from None
    model = state.get("model")
    if not isinstance(model, dict) or not any(str(k).startswith(STUDENT_PREFIX) for k in model):
        raise ExportError(f"{path} is not a checkpoint written by tools/train.py (it holds no student weights under "
                          f"'model'); pass a run directory's checkpoints/last.pth or prev.pth.")
    student = {k[len(STUDENT_PREFIX):]: v for k, v in model.items() if k.startswith(STUDENT_PREFIX)}
    bad = ckpt.nonfinite_tensors(student)
    if bad:
        raise ExportError(f"the student in {path} holds non-finite values ({', '.join(bad[:3])}); export an earlier "
                          "checkpoint with --checkpoint prev or a path to a finite one.")
    cfg = _run_config(state, run_dir, path)
    d = cfg.DISTILLER
    kwargs = dict(d.STUDENT_KWARGS) | {"img_size": int(cfg.DATASET.INPUT_SIZE)}
    _check_architecture(student, d.STUDENT, kwargs, path)
    step = int(state.get("step", -1))
    out = Path(out) if out else run_dir / "exports" / f"student_step{step}.safetensors"
    written = write_student_file(out, student, d.STUDENT, kwargs,
                                 provenance={"checkpoint": str(path.resolve()), "step": step})
    extras_path = None
    if extras:
        from safetensors.torch import save_file

        from mdistiller.fileio import atomic_write

        rest = {k: v.detach().cpu().contiguous() for k, v in model.items()
                if not k.startswith(STUDENT_PREFIX) and isinstance(v, torch.Tensor)}
        extras_path = out.with_name(out.name.removesuffix(".safetensors") + ".extras.safetensors")
        atomic_write(extras_path, lambda tmp: save_file(rest, str(tmp)))
    return Exported(student=written, checkpoint=path, step=step, extras=extras_path)


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """The options of ``tools/export.py``: ``run_dir``, ``--checkpoint``, ``--out``, ``--extras``."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run directory written by tools/train.py")
    p.add_argument("--checkpoint", default="last", metavar="last|prev|PATH",
                   help="which checkpoint: the run's last.pth (default), its prev.pth, or a path")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="the .safetensors to write (default RUN_DIR/exports/student_step<N>.safetensors)")
    p.add_argument("--extras", action="store_true",
                   help="also write the projections, adapters and scales to <out stem>.extras.safetensors")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line of ``tools/export.py`` and ``mdistiller-export``; 0 written, 2 refused."""
    args = parse_args(argv, prog)
    if args.out and not str(args.out).endswith(".safetensors"):
        print(f"error: --out {args.out} must end in .safetensors (timm reads the format by its suffix).",
              file=sys.stderr)
        return 2
    try:
        done = export_checkpoint(args.run_dir, args.checkpoint, args.out, extras=args.extras)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.out or 'the export'} ({e.strerror or e}); free space or pick another "
              "--out.", file=sys.stderr)
        return 1
    print(f"[mdistiller] exported the student of {done.checkpoint} (step {done.step}) to {done.student}"
          + (f"; extras to {done.extras}" if done.extras else ""))
    return 0
