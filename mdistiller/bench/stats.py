"""Spread of a ratio measured over a few rounds: a seeded percentile-bootstrap interval of the median.

Step times on a shared CPU drift and jump; the median of the per-round paired ratios is robust, but one number
without its spread invites wrong conclusions. :func:`bootstrap_interval` resamples the per-round ratios with
replacement, takes the median of each resample and returns the 2.5 % and 97.5 % quantiles of those medians (the
percentile bootstrap). With few rounds the interval is coarse (the resampled medians take only a handful of values),
and it describes the rounds measured on one machine, not other machines.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["bootstrap_interval"]


def bootstrap_interval(values: Sequence[float], *, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float] | None:
    """Percentile-bootstrap ``level`` interval ``(low, high)`` of the median of ``values``; ``None`` when empty.

    Seeded (``numpy.random.default_rng(seed)``), so the same values always give the same interval. A constant
    sample gives a zero-width interval; the interval always lies within ``[min(values), max(values)]``.
    """
    import numpy as np

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}.")
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    if x.size == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    medians = np.median(x[idx], axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(medians, [tail, 1 - tail])
    return float(low), float(high)
