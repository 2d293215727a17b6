"""Table-1-style summary of several runs' linear-probe results (Markdown and CSV).

Columns (paper Table 1): IN-val top-1, ADE-20K mIoU, NYUd-v2 RMSE, iNat2019 top-1, DS top-1 (mean of ImageNet-R
and ImageNet-v2 top-1, both tested with the ImageNet head) and FG top-1 (mean of Aircraft, Pets, Food-101 and
Flowers-102). A toy-scenes table (classification top-1, segmentation mIoU, depth RMSE) is added when any run has
those results. A combined cell (DS, FG) is shown only when all of its parts exist.

For each task a run may hold ``<task>.json`` (cached protocol) and ``<task>.online.json`` (online protocol):
``protocol="auto"`` prefers the online result (the headline protocol) and marks those cells with ``†``.

A result measured on other weights than the run's current student (the run was overwritten, or trained further,
since the probe) is never shown as the run's number: the cell reads ``stale`` (:func:`stale_reason` compares the
result's ``student_fingerprint`` with the run's ``student.safetensors``; for the ``--wandb`` rows, with the run
summary's ``student_fingerprint``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PAPER_COLUMNS", "TOY_COLUMNS", "Column", "Row", "collect_results", "current_result", "render_csv",
           "render_markdown", "stale_reason"]

FG_TASKS = ("transfer_aircraft", "transfer_pets", "transfer_food101", "transfer_flowers102")


@dataclass(frozen=True)
class Column:
    """A table column: ``parts`` are ``(task, getter)`` pairs whose values are averaged (all must exist)."""

    title: str
    parts: tuple[tuple[str, Callable[[dict[str, Any]], float | None]], ...]
    higher_is_better: bool = True
    digits: int = 2


def _metric(key: str, scale: float = 1.0) -> Callable[[dict[str, Any]], float | None]:
    def get(r: dict[str, Any]) -> float | None:
        v = r.get("metrics", {}).get(key)
        return None if v is None else float(v) * scale
    return get


def _extra(name: str, key: str) -> Callable[[dict[str, Any]], float | None]:
    def get(r: dict[str, Any]) -> float | None:
        v = r.get("extra_tests", {}).get(name, {}).get(key)
        return None if v is None else float(v)
    return get


PAPER_COLUMNS = (
    Column("IN-val top-1", (("imagenet", _metric("top1")),)),
    Column("ADE-20K mIoU", (("ade20k", _metric("miou", 100.0)),)),
    Column("NYUd-v2 RMSE", (("nyud", _metric("rmse")),), higher_is_better=False, digits=4),
    Column("iNat2019 top-1", (("transfer_inat2019", _metric("top1")),)),
    Column("DS top-1", (("imagenet", _extra("imagenet_r", "top1")), ("imagenet", _extra("imagenet_v2", "top1")))),
    Column("FG top-1", tuple((t, _metric("top1")) for t in FG_TASKS)),
)
TOY_COLUMNS = (
    Column("toy cls top-1", (("toy_scenes_cls", _metric("top1")),)),
    Column("toy seg mIoU", (("toy_scenes_seg", _metric("miou", 100.0)),)),
    Column("toy depth RMSE", (("toy_scenes_depth", _metric("rmse")),), higher_is_better=False, digits=4),
)


@dataclass
class Row:
    """One run: its label, the lineval folder, per column ``(value or None, set of protocols used)``, and the
    stale results left out (``{task: why}``; their columns hold ``None`` and the protocol ``"stale"``)."""

    name: str
    folder: Path
    cells: dict[str, tuple[float | None, set[str]]] = field(default_factory=dict)
    stale: dict[str, str] = field(default_factory=dict)


def current_result(path: str | Path, fingerprints: dict[str, str | None] | None = None) -> bool:
    """Whether the probe result file ``path`` exists and still describes its run's student (:func:`stale_reason`):
    what a batch of probes (``tools/demo.py``, ``tools/study.py``) may skip on a rerun. A batch passes one
    ``fingerprints`` dict to every call, so each run's student is read and hashed once."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        return stale_reason(json.loads(path.read_text()), fingerprints=fingerprints) is None
    except ValueError:  # a torn or foreign file: probe again
        return False


def _run_of(target: str | Path, folder: Path) -> Path | None:
    """The run directory a target names (the directory itself or the parent of its ``lineval/`` folder)."""
    for cand in (Path(target).expanduser(), folder.parent if folder.name == "lineval" else None):
        if cand is not None and ((cand / "config.yaml").is_file() or (cand / "student.safetensors").exists()):
            return cand
    return None


def stale_reason(result: dict[str, Any], run_dir: str | Path | None = None,
                 fingerprints: dict[str, str | None] | None = None) -> str | None:
    """Why ``result`` (a probe result JSON) no longer describes its run's student, or None when it does or cannot be
    checked. The run is ``run_dir`` (the table's target) or the ``model.run_dir`` the result names; its current
    student is fingerprinted (:func:`mdistiller.engine.fingerprint.student_fingerprint`, cached in
    ``fingerprints``) and compared with the result's ``student_fingerprint`` (results written before fingerprints:
    the size and mtime of the weights file they recorded)."""
    from mdistiller.engine.fingerprint import STUDENT_FILE, student_fingerprint

    model = result.get("model") or {}
    if model.get("source") != "run_dir":
        return None
    run = Path(run_dir) if run_dir is not None else Path(str(model.get("run_dir") or ""))
    if not str(run) or not run.is_dir():
        return None  # the results travelled without their run: nothing to compare with
    student = run / STUDENT_FILE
    if not student.is_file():
        return f"{run} has no {STUDENT_FILE} any more (overwritten or still training)"
    measured = model.get("student_fingerprint")
    if measured is None:
        recorded = model.get("weights") or {}
        st = student.stat()
        if (recorded.get("bytes"), recorded.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
            return None
        return f"{student} changed after this probe"
    cache = fingerprints if fingerprints is not None else {}
    key = str(student.resolve())
    if key not in cache:
        cache[key] = student_fingerprint(student)
    if cache[key] == measured:
        return None
    return f"measured student {str(measured)[:12]}, but {student} is now {str(cache[key])[:12]}"


def lineval_dir(target: str | Path) -> Path:
    """The folder holding a run's result JSONs: ``RUN_DIR/lineval``, the folder itself, or
    ``output/lineval/<model name>``."""
    p = Path(target).expanduser()
    if (p / "lineval").is_dir():
        return p / "lineval"
    if p.is_dir() and any(p.glob("*.json")):
        return p
    q = Path("output") / "lineval" / str(target).replace(":", "-").replace("/", "_")
    if q.is_dir():
        return q
    raise FileNotFoundError(
        f"no linear-probe results for '{target}' (looked in {p / 'lineval'}, {p} and {q}); run tools/lineval/*.py "
        "on it first."
    )


def _load(folder: Path, task: str, protocol: str) -> tuple[dict[str, Any] | None, str]:
    order = {"auto": ("online", "cached"), "online": ("online",), "cached": ("cached",)}[protocol]
    for proto in order:
        path = folder / (f"{task}.online.json" if proto == "online" else f"{task}.json")
        if path.is_file():
            return json.loads(path.read_text()), proto
    return None, ""


def collect_results(targets: Sequence[str | Path], names: Sequence[str] | None = None,
                    protocol: str = "auto", columns: Sequence[Column] = PAPER_COLUMNS + TOY_COLUMNS) -> list[Row]:
    """Read every run's results into :class:`Row` objects (``protocol``: auto | online | cached)."""
    if protocol not in ("auto", "online", "cached"):
        raise ValueError(f"protocol '{protocol}' is not auto, online or cached; pick one of those.")
    if names is not None and len(names) != len(targets):
        raise ValueError(f"got {len(names)} --names for {len(targets)} runs; give one name per run or none.")
    rows = []
    fingerprints: dict[str, str | None] = {}
    for i, t in enumerate(targets):
        folder = lineval_dir(t)
        default = Path(t).name if Path(t).is_dir() else str(t)
        if default == "lineval":
            default = Path(t).resolve().parent.name
        row = Row(name=names[i] if names else default, folder=folder)
        run = _run_of(t, folder)
        _fill(row, lambda task, folder=folder: _load(folder, task, protocol), columns,
              lambda res, run=run: stale_reason(res, run, fingerprints))
        rows.append(row)
    return rows


def _fill(row: Row, load: Callable[[str], tuple[dict[str, Any] | None, str]], columns: Sequence[Column],
          stale: Callable[[dict[str, Any]], str | None] = lambda res: None) -> None:
    cache: dict[str, tuple[dict[str, Any] | None, str]] = {}
    for col in columns:
        values, protos = [], set()
        for task, get in col.parts:
            if task not in cache:
                res, proto = load(task)
                why = stale(res) if res is not None else None
                if why:
                    row.stale[task] = why
                    res, proto = None, "stale"
                cache[task] = res, proto
            res, proto = cache[task]
            if proto == "stale":
                values, protos = [], {"stale"}
                break
            v = get(res) if res is not None else None
            if v is None or (isinstance(v, float) and math.isnan(v)):
                values = []
                break
            values.append(v)
            protos.add(proto)
        row.cells[col.title] = (sum(values) / len(values) if values else None, protos)


def wandb_summaries(source: str) -> list[tuple[str, dict[str, Any]]]:
    """``[(run name, summary)]`` per training run in ``source``, its probes' results included: a folder holding offline
    runs (``RUN_DIR`` or its ``wandb/`` folder, searched recursively; the segments of a run and the probe runs of its
    wandb group are merged in time order) or an ``entity/project`` read through the wandb API (needs a network and
    a login; runs merged by group the same way)."""
    p = Path(source).expanduser()
    if p.is_dir():
        from mdistiller.engine.dashboards import group_summaries

        out = group_summaries(p)
        if not out:
            raise FileNotFoundError(f"no offline wandb runs under '{p}'; train with LOG.WANDB True first.")
        return out
    import wandb

    groups: dict[str, tuple[str, dict[str, Any]]] = {}
    for r in sorted(wandb.Api().runs(source), key=lambda r: str(r.created_at)):
        name, summary = groups.get(r.group or r.id, (r.name, {}))
        summary.update(dict(r.summary))
        groups[r.group or r.id] = (r.name if r.job_type in (None, "", "train") else name, summary)
    return list(groups.values())


def collect_wandb(source: str, protocol: str = "auto",
                  columns: Sequence[Column] = PAPER_COLUMNS + TOY_COLUMNS) -> list[Row]:
    """Rows from the probe results that ``tools/lineval/*.py --wandb`` logged into training runs (summary keys
    ``lineval/<task>`` and ``lineval/<task>.online``); runs without any are left out."""
    order = {"auto": ("online", "cached"), "online": ("online",), "cached": ("cached",)}[protocol]
    rows = []
    for name, summary in wandb_summaries(source):
        if not any(str(k).startswith("lineval/") for k in summary):
            continue

        def load(task: str, summary: dict[str, Any] = summary) -> tuple[dict[str, Any] | None, str]:
            for proto in order:
                res = summary.get(f"lineval/{task}.online" if proto == "online" else f"lineval/{task}")
                if isinstance(res, dict):
                    return res, proto
            return None, ""

        def stale(res: dict[str, Any], summary: dict[str, Any] = summary) -> str | None:
            measured, current = res.get("student_fingerprint"), summary.get("student_fingerprint")
            if measured and current and measured != current:
                return f"measured student {str(measured)[:12]}, but the run's student is now {str(current)[:12]}"
            return None

        row = Row(name=name, folder=Path(source))
        _fill(row, load, columns, stale)
        rows.append(row)
    return rows


def _active(rows: Sequence[Row], columns: Sequence[Column]) -> bool:
    cells = [r.cells.get(c.title, (None, set())) for r in rows for c in columns]
    return any(v is not None or "stale" in protos for v, protos in cells)


def _tables(rows: Sequence[Row]) -> list[tuple[str, tuple[Column, ...]]]:
    out = []
    if _active(rows, PAPER_COLUMNS) or not _active(rows, TOY_COLUMNS):
        out.append(("Linear evaluation (paper Table 1 columns)", PAPER_COLUMNS))
    if _active(rows, TOY_COLUMNS):
        out.append(("Linear evaluation on toy scenes", TOY_COLUMNS))
    return out


def render_markdown(rows: Sequence[Row]) -> str:
    """Markdown tables (paper columns and, when present, toy-scene columns); ``†`` marks online results."""
    parts = []
    any_online = any_stale = False
    tables = _tables(rows)
    for title, cols in tables:
        head = "| Model | " + " | ".join(f"{c.title} {'↑' if c.higher_is_better else '↓'}" for c in cols) + " |"
        sep = "|---|" + "|".join("---:" for _ in cols) + "|"
        lines = [f"**{title}**", "", head, sep]
        for r in rows:
            cells = []
            for c in cols:
                v, protos = r.cells.get(c.title, (None, set()))
                mark = "†" if "online" in protos else ""
                any_online |= bool(mark)
                any_stale |= "stale" in protos
                cells.append("stale" if "stale" in protos else "—" if v is None else f"{v:.{c.digits}f}{mark}")
            lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    notes = ["— = not evaluated."]
    if any(cols is PAPER_COLUMNS for _, cols in tables):
        notes.insert(0, "DS = mean of ImageNet-R and ImageNet-v2 top-1; FG = mean of Aircraft, Pets, Food-101, "
                        "Flowers-102 top-1;")
    if any_online:
        notes.append("† online protocol (augmented, backbone every step); other cells: cached protocol.")
    if any_stale:
        notes.append("stale = the result measured other weights than the run's current student (the run was "
                     "overwritten or trained further since): rerun that probe.")
    return "\n\n".join(parts) + "\n\n" + " ".join(notes) + "\n"


def render_csv(rows: Sequence[Row]) -> str:
    """One CSV row per run with every shown column, plus the protocol of each column."""
    cols = [c for _, cs in _tables(rows) for c in cs]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", *[c.title for c in cols], *[f"{c.title} protocol" for c in cols]])
    for r in rows:
        vals, protos = [], []
        for c in cols:
            v, p = r.cells.get(c.title, (None, set()))
            vals.append("" if v is None else f"{v:.{c.digits + 2}f}")
            protos.append("+".join(sorted(p)))
        w.writerow([r.name, *vals, *protos])
    return buf.getvalue()


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``tools/lineval/table.py`` / ``mdistiller-lineval table``: Markdown to stdout, ``--out`` .md/.csv files."""
    import argparse
    import sys

    p = argparse.ArgumentParser(
        prog=prog or "tools/lineval/table.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Render a Table-1-style summary from several runs' linear-probe results: IN-val top-1, ADE-20K "
                    "mIoU, NYUd-v2 RMSE, iNat2019 top-1, DS top-1 (mean of IN-R and IN-v2), FG top-1 (mean of the "
                    "four fine-grained sets), plus toy-scene columns when those results exist. Markdown goes to "
                    "stdout; --out writes Markdown (.md) or CSV (.csv) files.")
    p.add_argument("runs", nargs="*", help="run directories (or their lineval/ folders, or model names)")
    p.add_argument("--names", nargs="+", default=None, help="row labels, one per run (default: folder names)")
    p.add_argument("--protocol", choices=("auto", "online", "cached"), default="auto",
                   help="auto: online result when present (marked †), else cached (default)")
    p.add_argument("--wandb", metavar="DIR|ENTITY/PROJECT", default=None,
                   help="also read the results logged with --wandb: a folder of offline runs (e.g. output/demo/runs) "
                        "or a wandb project")
    p.add_argument("--out", action="append", default=[], help="write the table to a .md or .csv file (repeatable)")
    args = p.parse_args(argv)
    bad = [o for o in args.out if Path(o).suffix.lower() not in (".md", ".csv")]
    if bad:
        print(f"error: --out '{bad[0]}' must end in .md or .csv; pick one of those suffixes.", file=sys.stderr)
        return 1
    if not args.runs and not args.wandb:
        print("error: name run directories or --wandb DIR|ENTITY/PROJECT.", file=sys.stderr)
        return 2
    try:
        rows = collect_results(args.runs, args.names, args.protocol) if args.runs else []
        if args.wandb:
            rows += collect_wandb(args.wandb, args.protocol)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for r in rows:
        for task, why in r.stale.items():
            print(f"warning: {r.name}: the {task} result is stale ({why}); it is not shown, rerun that probe.",
                  file=sys.stderr)
    md = render_markdown(rows)
    print(md, end="")
    for o in args.out:
        path = Path(o)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_csv(rows) if path.suffix.lower() == ".csv" else md)
    return 0
