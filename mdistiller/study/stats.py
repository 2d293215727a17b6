"""The study's statistics: mean ± std over seeds, and paired differences with a two-sided 95 % Student-t interval.

Pure Python on plain numbers (``values[(method, artifacts, seed)][probe] → number``); no torch, no scipy at run
time. The t-quantiles are a table (:data:`T_95`), checked against ``scipy.stats.t.ppf`` by the tests.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["T_95", "paired_interval", "summarize", "t_quantile_95"]

#: two-sided 95 % Student-t quantiles ``t_{0.975, df}`` by degrees of freedom, rounded to 3 decimals
#: the standard normal quantile z_{0.975}
_Z_975 = 1.959963984540054
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def t_quantile_95(df: int) -> float:
    """``t_{0.975, df}``: :data:`T_95` for ``df`` ≤ 9 (the printed intervals of 2-10 seeds), beyond it the
    Cornish-Fisher expansion of the t quantile around the normal one (five terms; within 1e-5 of the exact value
    from ``df`` = 10 on, checked against ``scipy.stats.t.ppf`` by the tests)."""
    if df < 1:
        raise ValueError(f"a t quantile needs at least one degree of freedom, not {df}.")
    if df in T_95:
        return T_95[df]
    z = _Z_975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4))


def paired_interval(diffs: Sequence[float]) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided 95 % Student-t interval ``(mean, low, high)``.

    With one pair the interval is unbounded (``±inf``)."""
    n = len(diffs)
    if n == 0:
        raise ValueError("paired_interval needs at least one difference.")
    mean = statistics.fmean(diffs)
    if n == 1:
        return mean, -math.inf, math.inf
    half = t_quantile_95(n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def summarize(values: dict[tuple[str, bool, int], dict[str, float]], probes: Sequence[str],
              baseline: str = "fitnet", paired_prefix: str = "singer",
              pairs: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """``values[(method, artifacts, seed)][probe] → number`` into per-cell mean/std, and the paired differences
    (same teacher and seed) of each ``(method, reference)`` in ``pairs`` — by default of the methods whose name
    starts with ``paired_prefix`` to ``baseline``. ``paired`` is keyed by ``(method, reference, artifacts)``."""
    cells: dict[tuple[str, bool], dict[str, list[float]]] = {}
    for (method, art, _seed), vals in sorted(values.items()):
        for p in probes:
            if p in vals:
                cells.setdefault((method, art), {}).setdefault(p, []).append(vals[p])
    table = {k: {p: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                 for p, v in d.items()} for k, d in cells.items()}
    if not pairs:
        pairs = sorted({(m, baseline) for m, _a, _s in values if m.startswith(paired_prefix)})
    paired: dict[tuple[str, str, bool], dict[str, list[float]]] = {}
    for method, reference in pairs:
        for (m, art, seed), vals in sorted(values.items()):
            base = values.get((reference, art, seed))
            if m != method or base is None:
                continue
            for p in probes:
                if p in vals and p in base:
                    paired.setdefault((method, reference, art), {}).setdefault(p, []).append(vals[p] - base[p])
    intervals = {k: {p: (*paired_interval(d), len(d)) for p, d in v.items()} for k, v in paired.items()}
    return {"cells": table, "paired": intervals}
