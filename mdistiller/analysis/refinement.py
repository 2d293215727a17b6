"""Does SiNGER *refine* the teacher? The acceptance check and table of ``Distiller.refinement_stats`` (eq. 6, 10, 11).

``Distiller.refinement_stats(images)`` measures, for every distilled layer l (``F̂_l``: SiNGER's refined teacher,
or the clamp control's clamped one):

* **outliers**: the emulated-artifact patches when the teacher carries an implant (the patches we know are
  artifacts), otherwise the patches of ``F_l`` above the per-image α-quantile of ``‖F_l‖`` (the set 𝒪_l of eq. 10
  taken on the original features); every other patch is an **inlier**;
* ``ratio_before`` / ``ratio_after``: an outlier's norm divided by its image's α-quantile of the patch norms,
  in ``F_l`` and in ``F̂_l`` (mean and max over outliers) — 1 means "pulled down to the quantile";
* ``cos_inlier``: mean cosine between ``F̂_l`` and ``F_l`` over inlier patches;
* ``cos_next``: the same after teacher block l+1 (intermediate layers: block l+1 run on ``F̂_l`` vs on ``F_l``);
* ``cos_final``: the same at the teacher's last distilled block (intermediate layers: blocks l+1 … l_final run on
  ``F̂_l``), i.e. how far the refinement travels.

:func:`refinement_passes` turns the numbers into the acceptance check used by the demo and the study: every
outlier ends at most ``max_ratio`` × the quantile, and every inlier cosine is at least ``min_cos``.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["refinement_passes", "format_refinement", "ACCEPT_MAX_RATIO", "ACCEPT_MIN_COS"]

#: acceptance thresholds: outliers end within 1.5× the α-quantile; inliers keep cosine ≥ 0.97 with the teacher
ACCEPT_MAX_RATIO = 1.5
ACCEPT_MIN_COS = 0.97


def refinement_passes(stats: dict[int, dict[str, float]], max_ratio: float = ACCEPT_MAX_RATIO,
                      min_cos: float = ACCEPT_MIN_COS) -> bool:
    """True when every layer's outliers end ≤ ``max_ratio`` × the α-quantile (worst patch) and its inlier cosines
    at l and after block l+1 are ≥ ``min_cos``."""
    for s in stats.values():
        if s.get("ratio_after_max", 0.0) > max_ratio:
            return False
        if s["cos_inlier"] < min_cos or s.get("cos_next", 1.0) < min_cos:
            return False
    return True


def _cells(stats: Mapping[str, float], keys: tuple[str, ...], spec: str) -> list[str]:
    """``stats[key]`` formatted with ``spec`` for each key, ``–`` where it is missing."""
    return [format(stats[k], spec) if stats.get(k) is not None else "–" for k in keys]


def format_refinement(stats: Mapping[int, Mapping[str, float]] | Mapping[str, Mapping[int, Mapping[str, float]]],
                      title: str = "") -> str:
    """A markdown table of :func:`refinement_stats` (one row per layer) with a pass/fail column.

    ``stats`` is one run's ``{layer: numbers}``, or ``{run name: {layer: numbers}}`` for several runs in one table
    (a leading ``run`` column); a missing number prints as ``–``.
    """
    runs = stats if stats and all(isinstance(k, str) for k in stats) else {"": stats}
    label = "| run " if len(runs) > 1 or "" not in runs else ""
    head = f"{label}| layer | outlier ‖F‖/q before | after (mean / max) | cos inliers @l | @l+1 | @final | pass |"
    rule = ("|---" if label else "") + "|---|---:|---:|---:|---:|---:|:---:|"
    rows = ([f"**{title}**", ""] if title else []) + [head, rule]
    for run, per_layer in runs.items():
        for t, s in sorted(per_layer.items()):
            ratios, cosines = (_cells(s, keys, spec) for keys, spec in (
                (("ratio_before", "ratio_after", "ratio_after_max"), ".2f"),
                (("cos_inlier", "cos_next", "cos_final"), ".4f")))
            rows.append((f"| {run} " if label else "") + f"| {t} | {ratios[0]} | {ratios[1]} / {ratios[2]} | "
                        f"{' | '.join(cosines)} | {'✓' if refinement_passes({t: s}) else '✗'} |")
    return "\n".join(rows)
