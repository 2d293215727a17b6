"""Weights & Biases as the dashboard of record: one wandb training run per run directory, kept across resumes, with
the probes and analyses of that run beside it in the same group.

* :func:`init_run` opens (or, on resume, continues) the training run: its id and group are stored in
  ``RUN_DIR/wandb_run.json``, so a resumed training continues the same run (a new ``offline-run-*`` segment per
  session when offline). The config is flat (every yacs key, e.g. ``SiNGER.RANK``) plus the git revision, host name
  and world size. Its history is the training step axis: every row carries its own step, and each step is one row
  across all segments (:class:`~mdistiller.engine.logging.MetricsWriter` skips the steps an earlier segment holds).
* :func:`log_to_run`: a linear probe (``tools/lineval/*.py --wandb``) or an analysis (``tools/analyze.py
  --wandb``) gets a run of its own in the training run's group (``job_type`` ``eval`` / ``analysis``) and puts its
  numbers in that run's summary. Nothing is logged into the training run's history below its last step, so no sync
  order can drop or overwrite a result (offline, a resumed run's automatic step restarts at 0).
* wandb is offline unless ``WANDB_MODE`` says otherwise; ``mdistiller-sync RUN_DIR`` (:mod:`.wandb_sync`) uploads
  every segment of the run, in order, without one replacing another.
* :func:`read_offline_run` reads an offline run's ``.wandb`` file back (config, history rows with their steps,
  summary, group, job type) without a network, for tests, for the sync's dry run and for ``tools/lineval/table.py
  --wandb DIR`` (:func:`group_summaries`).
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ID_FILE", "add_png_images", "group_summaries", "init_run", "last_logged_step", "log_analysis", "log_to_run",
           "offline_runs", "read_offline_run", "stored_run"]

ID_FILE = "wandb_run.json"


def stored_run(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``{"id", "project", "name", "group"}`` of the wandb training run of ``run_dir``, or None when it never had one
    (``group`` is absent in files written before groups were used: :func:`run_group` fills it in)."""
    path = Path(run_dir) / ID_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _new_id() -> str:
    """A wandb-style run id: 8 characters of [a-z0-9]."""
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _mode() -> str:
    return os.environ.get("WANDB_MODE") or "offline"


def run_group(record: Mapping[str, Any]) -> str:
    """The wandb group of a training run and of its probes and analyses: ``<name>-<id>`` (readable and unique)."""
    return str(record.get("group") or f"{record.get('name') or 'run'}-{record['id']}")


def _wandb_init(run_id: str, **kwargs: Any) -> Any:
    """``wandb.init`` in this package's settings (offline unless ``WANDB_MODE`` says otherwise, quiet, no console
    capture); None with a warning when wandb is missing or fails (a logging backend must never stop the work)."""
    try:
        import wandb
    except ImportError:
        warnings.warn("wandb logging is off: `pip install wandb` to enable it.", stacklevel=3)
        return None
    try:
        return wandb.init(id=run_id, mode=_mode(), settings=wandb.Settings(silent=True, console="off"), **kwargs)
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"wandb.init failed ({e}); continuing without wandb (set WANDB_MODE=offline).", stacklevel=3)
        return None


def init_run(run_dir: str | os.PathLike[str], *, project: str, name: str, config: Mapping[str, Any] | None = None,
             tags: list[str] | None = None) -> Any:
    """Open the wandb training run of ``run_dir``: a new one (id and group written to ``RUN_DIR/wandb_run.json``) or
    the stored one, continued (``resume="allow"``; offline, a new ``offline-run-*`` segment). Returns the wandb run,
    or None (with a warning) when wandb is missing or fails."""
    from mdistiller.fileio import atomic_write

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stored = stored_run(run_dir)
    record = {"id": _new_id(), "project": project, "name": name} if stored is None else dict(stored)
    record["group"] = run_group(record)
    run = _wandb_init(record["id"], resume="allow", project=record.get("project", project), name=name, tags=tags,
                      group=record["group"], job_type="train", config=dict(config) if config else None,
                      dir=str(run_dir))
    if run is not None and stored != record:
        atomic_write(run_dir / ID_FILE, lambda tmp: Path(tmp).write_text(json.dumps(record) + "\n"))
    return run


def log_to_run(run_dir: str | os.PathLike[str], metrics: Mapping[str, Any], summary: Mapping[str, Any] | None = None,
               images: Mapping[str, str | os.PathLike[str]] | None = None, job_type: str = "eval",
               label: str | None = None) -> bool:
    """Log a probe's or an analysis' results beside the training run of ``run_dir``: a new wandb run in its group
    (``job_type`` ``eval`` or ``analysis``, named ``<training run name>/<label>``, config ``train_run_id``,
    ``train_step`` = the last step in ``metrics.jsonl``). ``metrics`` (numbers) and ``summary`` (any JSON) go to
    that run's summary, off any step axis; ``images`` (PNG paths) are its one history row, at its own step 0.
    Returns False (and says why) when ``run_dir`` has no wandb run."""
    stored = stored_run(run_dir)
    if stored is None:
        warnings.warn(f"--wandb: {run_dir} has no wandb run ({ID_FILE}); train it with LOG.WANDB True first. "
                      "Results are in the JSON files only.", stacklevel=2)
        return False
    config = {"train_run_id": stored["id"], "train_run_name": stored.get("name"), "run_dir": str(Path(run_dir)),
              "train_step": _last_step(run_dir)}
    run = _wandb_init(_new_id(), project=stored.get("project", "mdistiller"), group=run_group(stored),
                      job_type=job_type, name=f"{stored.get('name') or stored['id']}/{label or job_type}",
                      config=config, dir=str(run_dir))
    if run is None:
        return False
    import wandb

    try:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        for k, v in (numbers | dict(summary or {})).items():
            run.summary[k] = v
        if images:
            run.log({k: wandb.Image(str(p)) for k, p in images.items()}, step=0)
    finally:
        run.finish()
    return True


def _numbers(node: Any, prefix: str, out: dict[str, float], depth: int = 0) -> None:
    if isinstance(node, bool) or depth > 4:
        return
    if isinstance(node, int | float):
        out[prefix] = node
    elif isinstance(node, Mapping):
        for k, v in node.items():
            _numbers(v, f"{prefix}/{k}", out, depth + 1)


def log_analysis(run_dir: str | os.PathLike[str] | None, command: str, report_json: str | os.PathLike[str],
                 figures: list[Any] | tuple[Any, ...] = ()) -> bool:
    """Log a ``tools/analyze.py`` report (``--wandb``) beside the training run of ``run_dir``: a run of its own in
    its group (:func:`log_to_run`, ``job_type`` analysis) with the numeric entries as ``analysis/<command>/...``
    summary values and the figures as images; the figures also go to the run's TensorBoard (``RUN_DIR/tb/analysis``,
    at the run's last logged step) when it has one."""
    if run_dir is None or not Path(run_dir).is_dir():
        warnings.warn("--wandb: the analysis has no run directory to log into (a model name was given); the report "
                      "is in its JSON file only.", stacklevel=2)
        return False
    report = json.loads(Path(report_json).read_text())
    numbers: dict[str, float] = {}
    _numbers({k: v for k, v in report.items() if k != "figures"}, f"analysis/{command}", numbers)
    images = {f"analysis/{command}/{Path(str(f)).stem}": f for f in figures if str(f).endswith(".png")}
    if images and (Path(run_dir) / "tb").is_dir():
        _tensorboard_images(Path(run_dir) / "tb" / "analysis", images, _last_step(run_dir))
    return log_to_run(run_dir, {}, summary=numbers, images=images, job_type="analysis", label=command)


def _last_step(run_dir: str | os.PathLike[str]) -> int:
    from mdistiller.engine.metrics_file import read_metrics

    return max((r["step"] for r in read_metrics(run_dir) if isinstance(r.get("step"), int)), default=0)


def add_png_images(writer: Any, paths: Mapping[str, Any], step: int | None) -> None:
    """PNG files (``{tag: path}``) into a TensorBoard ``SummaryWriter`` as RGB images (its IMAGES tab)."""
    import numpy as np
    from PIL import Image

    for tag, path in paths.items():
        with Image.open(path) as im:
            writer.add_image(tag, np.asarray(im.convert("RGB")), global_step=step, dataformats="HWC")


def _tensorboard_images(log_dir: Path, images: Mapping[str, str | os.PathLike[str]], step: int) -> None:
    """PNG files into a TensorBoard event file of ``log_dir`` (the IMAGES tab); a failure only warns."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    try:
        with SummaryWriter(log_dir=str(log_dir)) as tb:
            add_png_images(tb, images, step)
    except Exception as e:  # noqa: BLE001 - a dashboard must never fail the analysis
        warnings.warn(f"TensorBoard figures not written ({e}).", stacklevel=3)


# ------------------------------------------------------------------------------------------------ offline reading
def _records(path: Path) -> Iterator[bytes]:
    """The protobuf records of a ``.wandb`` file (a LevelDB-style log: 32 KiB blocks, 7-byte record headers)."""
    data = path.read_bytes()
    block, pos, buf = 32768, 7, b""  # the file starts with a 7-byte ":W&B" header
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if n == 0 and kind == 0:  # zero padding up to the end of the block
            pos += left - 7
            continue
        chunk, pos = data[pos:pos + n], pos + n
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk
            buf = b""


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(path: str | os.PathLike[str], wait: float = 0.0) -> dict[str, Any]:
    """``{"id", "project", "name", "group", "job_type", "config", "history": [rows], "steps": [step of each row],
    "summary"}`` of one offline run (its folder or its ``.wandb`` file); history rows and summary hold the logged
    keys (wandb's own ``_*`` keys dropped; ``steps`` keeps each row's ``_step``); ``"closed"`` says whether the run's
    exit record is there. wandb's service finishes writing a moment after ``finish()``
    returns: ``wait`` seconds are spent polling for the exit record."""
    import time

    deadline = time.monotonic() + wait
    while True:
        out = _read_offline_run(Path(path))
        if out["closed"] or time.monotonic() >= deadline:
            return out
        time.sleep(0.1)


def _read_offline_run(path: Path) -> dict[str, Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    file = path if path.suffix == ".wandb" else next(path.glob("run-*.wandb"))
    out: dict[str, Any] = {"closed": False, "id": None, "project": None, "name": None, "group": None,
                           "job_type": None, "config": {}, "history": [], "steps": [], "summary": {}}
    for data in _records(file):
        rec = pb.Record()
        try:
            rec.ParseFromString(data)
        except Exception:  # noqa: BLE001 - a torn last record of a killed process
            continue
        kind = rec.WhichOneof("record_type")
        if kind == "exit":
            out["closed"] = True
        if kind == "run":
            out["id"], out["project"] = rec.run.run_id, rec.run.project
            out["name"] = rec.run.display_name or out.get("name")
            out["group"], out["job_type"] = rec.run.run_group or None, rec.run.job_type or None
            updates = rec.run.config.update
        elif kind == "config":
            updates = rec.config.update
        elif kind == "history":
            row = {_key(i): json.loads(i.value_json) for i in rec.history.item}
            out["history"].append({k: v for k, v in row.items() if not k.startswith("_")})
            out["steps"].append(row.get("_step"))
            continue
        elif kind == "summary":
            for u in rec.summary.update:
                if not _key(u).startswith("_"):
                    out["summary"][_key(u)] = json.loads(u.value_json)
            continue
        else:
            continue
        for u in updates:
            if not _key(u).startswith("_"):
                out["config"][_key(u)] = json.loads(u.value_json)
    return out


def offline_runs(root: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """Offline run folders under ``root`` (searched recursively) grouped by wandb run id, in the order they were
    written (folder names only have a one-second timestamp)."""
    runs: dict[str, list[Path]] = {}

    def written(p: Path) -> int:
        files = list(p.glob("run-*.wandb"))
        return files[0].stat().st_mtime_ns if files else 0

    for p in sorted((q for q in Path(root).rglob("offline-run-*") if q.is_dir() and not q.is_symlink()),
                    key=lambda q: (written(q), q.name)):
        runs.setdefault(p.name.rsplit("-", 1)[-1], []).append(p)
    return runs


def last_logged_step(run_dir: str | os.PathLike[str], run_id: str) -> int | None:
    """The highest history step of run ``run_id`` in the offline segments under ``RUN_DIR/wandb`` (None when none
    holds a row): what a resumed session must not log again, since wandb keeps the first row of a step."""
    steps = [s for folder in offline_runs(Path(run_dir) / "wandb").get(run_id, [])
             for s in read_offline_run(folder)["steps"] if isinstance(s, int)]
    return max(steps, default=None)


def group_summaries(root: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """``[(name, summary)]``, one per group of the offline runs under ``root`` (a training run, its segments, and
    the probe/analysis runs beside it): the summaries merged in the order they were written, named after the
    training run. Runs without a group (older files) form a group of their own id."""
    groups: dict[str, dict[str, Any]] = {}
    for run_id, folders in offline_runs(root).items():
        for folder in folders:
            run = read_offline_run(folder)
            group = groups.setdefault(run["group"] or run_id, {"name": None, "first": None, "summary": {}})
            group["summary"].update(run["summary"])
            group["first"] = group["first"] or run["name"]
            if run["job_type"] in (None, "train") and run["name"]:
                group["name"] = run["name"]
    return [(str(g["name"] or g["first"] or key), g["summary"]) for key, g in groups.items()]
