"""Shared rendering of the analysis reports: JSON-ready values, fixed-width text tables, the header line and
writing ``<command>.json`` / ``<command>.txt``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdistiller.engine.console import format_table
from mdistiller.models.emulated import ArtifactImplant

EMULATED_LABEL = ArtifactImplant.label  # "emulated artifacts"
__all__ = ["EMULATED_LABEL", "format_table", "header", "save_report", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """Drop ``_``-prefixed keys, turn tensors/numpy scalars into Python numbers and non-finite floats into None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def header(report: Mapping[str, Any], title: str) -> str:
    """A report's title line: ``title`` with the model or run name, prefixed with the emulated-artifacts label when
    the report was made on emulated artifacts.
    """
    tag = f"[{EMULATED_LABEL}] " if report.get("emulated_artifacts") else ""
    where = report.get("model") or report.get("run_name") or ""
    return f"{tag}{title}" + (f" — {where}" if where else "")


def save_report(report: dict[str, Any], out_dir: str | Path, text: str) -> dict[str, Path]:
    """Write ``<command>.json`` and ``<command>.txt`` (``text``, the command's tables) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = report["command"].replace("-", "_")
    jpath, tpath = out_dir / f"{stem}.json", out_dir / f"{stem}.txt"
    jpath.write_text(json.dumps(to_jsonable(report), indent=2, ensure_ascii=False))
    tpath.write_text(text + "\n")
    return {"json": jpath, "text": tpath}
