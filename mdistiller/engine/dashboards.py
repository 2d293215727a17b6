"""Weights & Biases as the dashboard of record: one wandb run per run directory, kept across resumes and probes.

* :func:`init_run` opens (or, on resume, continues) the training run: its id is stored in ``RUN_DIR/wandb_run.json``
  so a resumed training, a linear probe (``tools/lineval/*.py --wandb``) and an analysis (``tools/analyze.py
  --wandb``) all log into the *same* run. The config is flat (every yacs key, e.g. ``SiNGER.RANK``) plus the git
  revision, host name and world size.
* wandb is offline unless ``WANDB_MODE`` says otherwise (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads later).
* :func:`read_offline_run` reads an offline run's ``.wandb`` file back (config, history rows, summary) without a
  network, for tests and for ``tools/lineval/table.py --wandb DIR``.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ID_FILE", "init_run", "log_analysis", "log_to_run", "read_offline_run", "offline_runs",
           "stored_run"]

ID_FILE = "wandb_run.json"


def stored_run(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``{"id", "project", "name"}`` of the wandb run of ``run_dir``, or None when it never had one."""
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


def init_run(run_dir: str | os.PathLike[str], *, project: str, name: str, config: Mapping[str, Any] | None = None,
             tags: list[str] | None = None, job_type: str = "train") -> Any:
    """Open the wandb run of ``run_dir``: a new one (its id written to ``RUN_DIR/wandb_run.json``) or the stored one,
    continued (``resume="allow"``). Returns the wandb run, or None (with a warning) when wandb is missing or fails."""
    try:
        import wandb
    except ImportError:
        warnings.warn("wandb logging is off: `pip install wandb` to enable it.", stacklevel=2)
        return None
    from mdistiller.fileio import atomic_write

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stored = stored_run(run_dir)
    run_id = stored["id"] if stored else _new_id()
    project = stored.get("project", project) if stored else project
    try:
        run = wandb.init(id=run_id, resume="allow", project=project, name=name, tags=tags, job_type=job_type,
                         config=dict(config) if config else None, dir=str(run_dir), mode=_mode(),
                         settings=wandb.Settings(silent=True, console="off"))
    except Exception as e:  # noqa: BLE001 - a logging backend must never stop training
        warnings.warn(f"wandb.init failed ({e}); continuing without wandb (set WANDB_MODE=offline).", stacklevel=2)
        return None
    if not stored:
        record = {"id": run_id, "project": project, "name": name}
        atomic_write(run_dir / ID_FILE, lambda tmp: Path(tmp).write_text(json.dumps(record) + "\n"))
    return run


def log_to_run(run_dir: str | os.PathLike[str], metrics: Mapping[str, Any], summary: Mapping[str, Any] | None = None,
               images: Mapping[str, str | os.PathLike[str]] | None = None, job_type: str = "eval") -> bool:
    """Log a probe's or an analysis' results into the training run of ``run_dir`` (resumed by its stored id):
    scalar ``metrics`` as one history row, ``summary`` entries (any JSON) into the run summary, ``images`` (PNG paths)
    as ``wandb.Image``. Returns False (and says why) when ``run_dir`` has no wandb run."""
    stored = stored_run(run_dir)
    if stored is None:
        warnings.warn(f"--wandb: {run_dir} has no wandb run ({ID_FILE}); train it with LOG.WANDB True first. "
                      "Results are in the JSON files only.", stacklevel=2)
        return False
    run = init_run(run_dir, project=stored.get("project", "mdistiller"), name=stored.get("name", ""),
                   job_type=job_type)
    if run is None:
        return False
    import wandb

    try:
        row = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        for k, p in (images or {}).items():
            row[k] = wandb.Image(str(p))
        if row:
            run.log(row)
        for k, v in (summary or {}).items():
            run.summary[k] = v
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
    """Log a ``tools/analyze.py`` report (``--wandb``) into the training run of ``run_dir``: its numeric entries as
    ``analysis/<command>/...`` summary values, the whole report as a JSON file of the run, its figures as images."""
    if run_dir is None or not Path(run_dir).is_dir():
        warnings.warn("--wandb: the analysis has no run directory to log into (a model name was given); the report "
                      "is in its JSON file only.", stacklevel=2)
        return False
    report = json.loads(Path(report_json).read_text())
    numbers: dict[str, float] = {}
    _numbers({k: v for k, v in report.items() if k != "figures"}, f"analysis/{command}", numbers)
    images = {f"analysis/{command}/{Path(str(f)).stem}": f for f in figures if str(f).endswith(".png")}
    return log_to_run(run_dir, {}, summary=numbers, images=images, job_type="analysis")


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
    """``{"id", "project", "name", "config", "history": [rows], "summary"}`` of one offline run (its folder or its
    ``.wandb`` file); history rows and summary hold the logged keys (wandb's own ``_*`` keys dropped); ``"closed"``
    says whether the run's exit record is there. wandb's service finishes writing a moment after ``finish()``
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
    out: dict[str, Any] = {"closed": False, "id": None, "project": None, "name": None, "config": {}, "history": [],
                           "summary": {}}
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
            updates = rec.run.config.update
        elif kind == "config":
            updates = rec.config.update
        elif kind == "history":
            row = {_key(i): json.loads(i.value_json) for i in rec.history.item}
            out["history"].append({k: v for k, v in row.items() if not k.startswith("_")})
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
