"""Run-directory logging: ``metrics.jsonl`` and ``train.log`` always, TensorBoard and wandb when asked for, plus run
provenance. Everything :meth:`MetricsWriter.log` writes to ``metrics.jsonl`` (per-term losses, lr, grad norms,
images/s, memory, ``grad/<term>/<group>``, ``agree/...``, SiNGER's ``refine/...`` statistics) also goes to
TensorBoard and wandb as scalars, and :meth:`MetricsWriter.images` sends figures to both.

A resumed run logs into the same wandb run, as a new offline segment; steps an earlier segment already holds
(replayed after a kill between a log line and its checkpoint) are not sent to wandb again, so across the segments
every step is one history row (see :func:`mdistiller.engine.dashboards.last_logged_step`).

Only the main process writes; on other ranks every call is a no-op, so the trainer can call them unconditionally.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mdistiller.engine.checkpoint import atomic_write_text

__all__ = ["MetricsWriter", "git_revision", "write_run_info"]


def _plain(v: Any) -> Any:
    """JSON-safe value: tensors/numpy scalars → numbers, non-finite floats → ``None`` (strict JSON has no NaN)."""
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        v = v.item() if v.numel() == 1 else v.tolist()
    elif hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", None) == 0:  # numpy scalar
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


class MetricsWriter:
    """Append one JSON object per :meth:`log` call to ``run_dir/metrics.jsonl`` (main process only).

    Args:
        run_dir: the run directory (created if needed).
        is_main: write only when True.
        tensorboard: also write scalars to ``run_dir/tb`` when ``torch.utils.tensorboard`` is importable (a warning
            otherwise).
        wandb: also log to Weights & Biases through :func:`mdistiller.engine.dashboards.init_run`: offline unless
            ``WANDB_MODE`` says otherwise, the run id kept in ``RUN_DIR/wandb_run.json`` so a resumed run continues
            the same wandb run. Failures only warn.
        wandb_project, wandb_name, wandb_tags, wandb_config: the wandb run's project, name, tags and (flat) config;
            ``wandb_config`` is also TensorBoard's hyper-parameters (written by :meth:`summary`).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        is_main: bool,
        tensorboard: bool = False,
        wandb: bool = False,
        wandb_project: str | None = None,
        wandb_name: str | None = None,
        wandb_tags: Sequence[str] | None = None,
        wandb_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.is_main = bool(is_main)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = None
        self._tb: Any = None
        self._wandb: Any = None
        self._wandb_floor: int | None = None  # steps up to this one are in an earlier offline segment already
        self._hparams = dict(wandb_config or {})
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("TensorBoard logging is off: install `tensorboard` to enable it.", stacklevel=2)
            else:
                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        if wandb:
            self._init_wandb(wandb_project, wandb_name, wandb_tags, wandb_config)

    def _init_wandb(
        self, project: str | None, name: str | None, tags: Sequence[str] | None, config: Mapping[str, Any] | None
    ) -> None:
        from mdistiller.engine.dashboards import init_run, last_logged_step, stored_run

        stored = stored_run(self.run_dir)
        self._wandb_floor = last_logged_step(self.run_dir, stored["id"]) if stored else None
        self._wandb = init_run(self.run_dir, project=project or "mdistiller", name=name or self.run_dir.name,
                               config=config, tags=list(tags) if tags else None)

    @property
    def wandb_run(self) -> Any:
        """The open wandb run (None when wandb is off)."""
        return self._wandb

    @property
    def takes_images(self) -> bool:
        """Whether :meth:`images` sends figures anywhere (wandb or TensorBoard is on)."""
        return self._wandb is not None or self._tb is not None

    def _wandb_step(self, step: int | None) -> bool:
        """Whether a row at ``step`` goes to wandb: not when an earlier offline segment of the run holds it."""
        return self._wandb is not None and (step is None or self._wandb_floor is None or step > self._wandb_floor)

    def summary(self, values: Mapping[str, Any]) -> None:
        """End-of-run values: the wandb run summary, and TensorBoard's hyper-parameters view (the scalar config
        keys against these numbers, under the same names, e.g. ``final/loss``)."""
        if not self.is_main:
            return
        plain = {str(k): _plain(v) for k, v in values.items()}
        numbers = {k: v for k, v in plain.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self._wandb is not None:
            for k, v in plain.items():
                self._wandb.summary[k] = v
        if self._tb is not None and numbers:
            hp = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in self._hparams.items()}
            self._tb.add_hparams(hp, numbers, run_name="hparams")

    def log(self, metrics: Mapping[str, Any], step: int | None = None, **extra: Any) -> None:
        """Write ``{"step": step, "time": unix_time, **metrics, **extra}`` as one line and flush it."""
        if not self.is_main or self._file is None:
            return
        record: dict[str, Any] = {}
        if step is not None:
            record["step"] = int(step)
        record["time"] = round(time.time(), 3)
        record.update({str(k): _plain(v) for k, v in {**metrics, **extra}.items()})
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        scalars = {
            k: v
            for k, v in record.items()
            if k not in ("step", "time") and isinstance(v, int | float) and not isinstance(v, bool)
        }
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, global_step=step)
        if self._wandb_step(step):
            self._wandb.log(scalars, step=step)

    def images(self, paths: Mapping[str, Any], step: int | None = None) -> None:
        """Log PNG files (``{key: path}``) as images: ``wandb.Image`` into the wandb run, ``add_image`` into
        TensorBoard (its IMAGES tab); nothing when both are off."""
        if not self.is_main or not paths:
            return
        if self._tb is not None:
            from mdistiller.engine.dashboards import add_png_images

            add_png_images(self._tb, paths, step)
            self._tb.flush()
        if self._wandb_step(step):
            import wandb

            self._wandb.log({k: wandb.Image(str(p)) for k, p in paths.items()}, step=step)

    def close(self) -> None:
        """Flush and close every backend (safe to call twice)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def git_revision(repo_dir: str | os.PathLike[str] | None = None) -> str | None:
    """``<commit sha>`` (plus ``-dirty`` when tracked files changed) of the repository at ``repo_dir``.

    Returns ``None`` when git is absent, ``repo_dir`` is not a repository, or git fails; it never raises. It takes no
    index lock (``GIT_OPTIONAL_LOCKS=0``), so it is safe while other git commands run.
    """
    cwd = str(repo_dir if repo_dir is not None else Path(__file__).resolve().parents[2])
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def run(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        sha = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return f"{sha}-dirty" if dirty else sha if sha else None


def _version(dist_name: str) -> str | None:
    try:
        return importlib.metadata.version(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_run_info(
    run_dir: str | os.PathLike[str], cfg_dump: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``run_dir/config.yaml`` (the resolved config) and ``run_dir/run_info.json`` (provenance); main rank only.

    ``run_info.json`` holds the git revision, python/torch/timm versions, host, world size (from the process group,
    else ``WORLD_SIZE``), the command line and the start time, updated with ``extra``. Both files are written
    atomically. Returns the info dict.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    world = (
        torch.distributed.get_world_size()
        if torch.distributed.is_available() and torch.distributed.is_initialized()
        else int(os.environ.get("WORLD_SIZE", "1"))
    )
    info: dict[str, Any] = {
        "git": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "host": socket.gethostname(),
        "world_size": world,
        "command": shlex.join([sys.executable, *sys.argv]),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    info.update(_plain(dict(extra or {})))
    atomic_write_text(run_dir / "config.yaml", cfg_dump if cfg_dump.endswith("\n") else cfg_dump + "\n")
    atomic_write_text(run_dir / "run_info.json", json.dumps(info, indent=2, allow_nan=False) + "\n")
    return info
