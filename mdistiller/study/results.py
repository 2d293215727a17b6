"""The study's results once its jobs have run: the probes' numbers, the refinement statistics, ``study.json``.

Reads only what exists, so a report written while the study is still running (``--report-only``) shows what has
finished.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .matrix import StudyRun, target_changes

__all__ = ["read_values", "refinement_run", "refinements", "save_json"]


def refinement_run(run_dir: Path, images: Any, device: str = "cpu", q: float = 0.95) -> dict[int, dict[str, float]]:
    """``SiNGER.refinement_stats`` of a finished run on ``images`` at the α-quantile ``q`` (the paper's 0.95 for
    every mode, so the released preset's α = 0.97 does not move the yardstick); cached in
    ``RUN_DIR/refinement.json`` with the fingerprint of the student it measured, and recomputed when the run's
    ``student.safetensors`` is another (the run was overwritten or trained further)."""
    from mdistiller.engine.fingerprint import student_fingerprint, weights_fingerprint

    path = Path(run_dir) / "refinement.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("student_fingerprint") == student_fingerprint(run_dir) and "layers" in cached:
            return {int(k): v for k, v in cached["layers"].items()}
    from mdistiller.engine.load import load_run
    from mdistiller.fileio import atomic_write

    _, distiller = load_run(run_dir, device=device)
    stats = distiller.refinement_stats(images.to(device), q=q)
    record = {"student_fingerprint": weights_fingerprint(distiller.student.model.state_dict()), "q": q,
              "layers": stats}
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    return stats


def refinements(out: Path, runs: Sequence[StudyRun], images: Any, device: str = "cpu"
                ) -> dict[str, dict[int, dict[str, float]]]:
    """:func:`refinement_run` of every finished run in ``OUT/runs`` whose L_KD target differs from the teacher
    (:func:`mdistiller.study.target_changes`), by run name."""
    return {run.name: refinement_run(out / "runs" / run.name, images, device=device)
            for run in runs if target_changes(run.method)
            and (out / "runs" / run.name / "student.safetensors").exists()}


def read_values(results: Mapping[tuple[tuple[str, bool, int], str], tuple[Path, str]]
                ) -> dict[tuple[str, bool, int], dict[str, float]]:
    """The finished probes' numbers: ``(method, artifacts, seed) → probe label → metric`` (mIoU in %), from the
    result files of :func:`mdistiller.study.probe_jobs`; a missing file (not finished yet) is left out."""
    values: dict[tuple[str, bool, int], dict[str, float]] = {}
    for (key, label), (result, metric) in results.items():
        if not result.exists():  # --report-only: not finished yet
            continue
        scale = 100.0 if metric == "miou" else 1.0
        values.setdefault(key, {})[label] = float(json.loads(result.read_text())["metrics"][metric]) * scale
    return values


def save_json(path: Path, args: Mapping[str, Any], amp: str, values: Mapping[tuple[str, bool, int], Any],
              refine: Mapping[str, Any]) -> None:
    """``study.json``: the invocation's arguments, its precision, the probes' numbers (keyed ``method|artifacts|seed``)
    and the refinement statistics."""
    path.write_text(json.dumps({
        "args": dict(args), "amp": amp, "values": {"|".join(map(str, k)): v for k, v in values.items()},
        "refinement": refine}, indent=1))
