"""The Python API in two calls::

    import mdistiller

    run = mdistiller.train(["configs/demo/singer.yaml"], overrides={"SOLVER.MAX_STEPS": 20}, run_dir="out/singer")
    res = mdistiller.evaluate(run["run_dir"], task="transfer", dataset="toy_scenes", num_train=200, num_test=100)
    res["metrics"]["top1"]

:func:`train` is ``tools/train.py`` without the command line (same config stacking, run-directory lock, resume);
:func:`evaluate` is ``tools/lineval/<task>.py`` (:func:`mdistiller.eval.probe`) and returns its result dict (also
written as JSON).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["train", "evaluate"]


def _opts(overrides: Mapping[str, Any] | Sequence[Any] | None) -> list[Any]:
    """``{"K": v}`` or ``["K", v]`` as the flat ``KEY VALUE`` list of :func:`mdistiller.config.apply_overrides`."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [x for k, v in overrides.items() for x in (str(k), v)]
    return list(overrides)


def train(cfg_or_paths: Any, overrides: Mapping[str, Any] | Sequence[Any] | None = None,
          run_dir: str | os.PathLike[str] | None = None, resume: str = "auto", device: str | None = None,
          overwrite: bool = False) -> dict:
    """Distil one run and return ``{"run_dir", "step", "student", "metrics", "interrupted"}``.

    Args:
        cfg_or_paths: a config (:func:`mdistiller.config.load_config`'s result, a ``CfgNode``) or one YAML path or a
            list of them (merged left to right; ``configs/...`` paths also resolve inside an installed package).
        overrides: ``{"SOLVER.LR": 1e-4}`` or ``["SOLVER.LR", 1e-4]``, applied last.
        run_dir: the run directory, taken as given (default ``EXPERIMENT.OUTPUT_DIR/PROJECT/NAME``, the name
            extended by the overrides that change what is trained, as ``tools/train.py`` does).
        resume: ``"auto"`` continues ``RUN_DIR/checkpoints/last.pth`` (``prev.pth`` when ``last.pth`` is unreadable)
            when there is one, ``"none"`` starts over, or a checkpoint path.
        device: ``cpu`` | ``cuda`` (default ``EXPERIMENT.DEVICE``).
        overwrite: with ``resume="none"``, replace a run already in ``run_dir`` (``--overwrite``).

    Raises :class:`~mdistiller.config.ConfigError` for a bad config (and for what ``tools/train.py`` refuses before
    the lock: a run directory that is a file, CUDA asked for but absent, a missing weights file or hub weights that
    cannot be downloaded offline), ``FileExistsError``
    (:class:`~mdistiller.engine.rundir.RunDirError`) for a start that would replace or mix a run's history,
    ``RunLockedError`` while another process uses the directory, and the trainer's errors (a resume that changes
    what is trained: ``CheckpointMismatchError``). The SIGINT/SIGTERM handlers of the caller are restored when it
    returns. A first SIGINT/SIGTERM stops the run after a checkpoint (``"interrupted"``); a second one more than 2 s
    later ends the process at once (in a notebook, its kernel), so that a run blocked in a collective can always be
    stopped.
    """
    from mdistiller.config import CN, load_config
    from mdistiller.engine.distributed import cleanup, init_distributed
    from mdistiller.engine.preflight import check_launch
    from mdistiller.engine.rundir import claim_run_dir, named_config
    from mdistiller.engine.trainer import Trainer, run_dir_for

    opts = _opts(overrides)
    if isinstance(cfg_or_paths, CN):
        from mdistiller.config import apply_overrides, validate_config

        base = cfg_or_paths
        cfg = cfg_or_paths.clone()
        cfg.defrost()
        apply_overrides(cfg, opts)
        validate_config(cfg)  # the registered checks include those against the architectures
        cfg.freeze()
    else:
        paths = [cfg_or_paths] if isinstance(cfg_or_paths, str | os.PathLike) else list(cfg_or_paths)
        cfg = load_config(paths, opts)
        base = None
    if run_dir is None:  # the run name comes from the overrides against the files alone
        base = base if base is not None else load_config(paths, [], validate=False)
        cfg = named_config(cfg, base, [str(k) for k in opts[0::2]])
    if overwrite and resume not in ("none", ""):
        raise ValueError("overwrite=True only applies to a fresh start; pass resume='none' too.")
    out = Path(run_dir) if run_dir else run_dir_for(cfg)
    check_launch(cfg, out, device, run_dir_flag="run_dir")  # before any lock, process group or model
    env = init_distributed(device or cfg.EXPERIMENT.DEVICE, timeout_minutes=cfg.EXPERIMENT.DIST_TIMEOUT_MIN)
    start = claim_run_dir(out, resume, overwrite, is_main=env.is_main)  # the lock and resume of tools/train.py
    try:
        trainer = Trainer(cfg, env, out)
        metrics = trainer.fit(start.checkpoint)
    finally:
        start.release()
        cleanup()
    student = out / "student.safetensors"
    return {"run_dir": out, "step": trainer.step, "student": student if student.is_file() else None,
            "metrics": metrics, "interrupted": metrics.get("interrupted")}


def evaluate(run_dir_or_model: str | os.PathLike[str], task: str = "transfer", **options: Any) -> dict[str, Any]:
    """Linear-probe a run directory or a model name and return the result dict (``metrics``, ``chosen_lr``,
    ``val_metrics``, ``time``, ...), also written where the command writes it (``RUN_DIR/lineval/<task>.json``).

    The dict is the written JSON's content, :meth:`mdistiller.eval.ProbeResult.to_dict`; :func:`mdistiller.eval.probe`
    (which this calls) returns the typed :class:`~mdistiller.eval.ProbeResult` itself.

    Args:
        run_dir_or_model: a training run directory, a model name (``dinov2_small_imgfocus``) or ``random:<name>``.
        task: ``imagenet`` | ``ade20k`` | ``nyud`` | ``transfer`` (the ``tools/lineval`` command).
        options: the keyword arguments of :func:`mdistiller.eval.probe`, the command's options with ``_`` for ``-``
            (``dataset="toy_scenes"``, ``num_train=200``, ``protocol="online"``, ``lrs=[1e-3, 1e-2]``;
            ``norm=False`` for ``--no-norm``, ``verbose=True``; ``log=callback`` receives the progress messages).

    Raises ``ValueError`` for an unknown task and :class:`~mdistiller.eval.ProbeError` (a ``RuntimeError``: the
    command's error sentence, ``exit_code``) when the probe refuses an option or fails.
    """
    import inspect

    from mdistiller.eval.probing import ProbeError, probe

    known = inspect.signature(probe).parameters
    unknown = sorted(k for k in options if k not in known or k in ("model_or_run", "task"))
    if unknown:
        raise ProbeError(f"unknown option(s) {', '.join(unknown)}; pass the options of tools/lineval/{task}.py with "
                         "_ for - (e.g. num_train=200).", 2)
    return probe(run_dir_or_model, task, **options).to_dict()
