"""What training prints: whether a progress bar is drawn, the one definition of images per second, and the
start-of-run and end-of-run blocks (plain text, the same on the console and in ``RUN_DIR/train.log``).

**Images per second** (``img/s`` on the bar and in the log lines, ``img_per_s`` in ``metrics.jsonl``,
``epoch/img_per_s`` in the epoch records, ``img_per_s`` in the end-of-run summary) is always *the images of all
ranks (global batch × steps) divided by the wall-clock seconds of the training loop over the same span*. The span of
a log line is its logging window: from the end of the previous window (or the start of the loop) to the end of this
step, so data loading, the step, and the agreement, checkpoints and figures done in between all count. An epoch's
span is its windows and the end-of-run span is every window of the session, so those two figures are the log
lines' figures averaged with their durations as weights. Start-up (model build, first checkpoint, dashboards) and
the export after the last step are outside every span; the end-of-run summary gives them in its wall time.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

__all__ = ["ImageRate", "format_count", "format_table", "key_value_block", "layer_tables", "progress_bar_allowed",
           "wrap_items"]


def progress_bar_allowed(allowed: bool, stream: TextIO | None = None) -> bool:
    """A tqdm bar is drawn only when ``allowed`` (``LOG.PROGRESS``) and ``stream`` (default ``sys.stderr``, where
    tqdm writes) is a terminal: piped into ``tee`` or a cluster log file, training prints plain lines instead, so
    the file holds no carriage returns."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(allowed) and bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ImageRate:
    """Images per second of wall time over the training loop, all ranks (see the module docstring).

    Call :meth:`add` with the global images of every step, :meth:`window` at every log line (it closes the
    window and returns its rate), :meth:`epoch` at the end of every epoch (the rate over the epoch's closed windows)
    and read :attr:`rate` for the session. Windows tile the loop without gaps, so the figures agree by construction.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._mark = clock()
        self._window = 0
        self.images = self._epoch_images = 0
        self.seconds = self._epoch_seconds = 0.0

    def add(self, images: int) -> None:
        """Count the images (all ranks) of one step."""
        self._window += int(images)

    def window(self) -> float:
        """Close the current window: its images per second."""
        now = self._clock()
        seconds, images = now - self._mark, self._window
        self._mark, self._window = now, 0
        self.images += images
        self.seconds += seconds
        self._epoch_images += images
        self._epoch_seconds += seconds
        return images / max(seconds, 1e-9)

    def epoch(self) -> float:
        """Images per second over the windows closed since the previous call (one epoch's)."""
        rate = self._epoch_images / max(self._epoch_seconds, 1e-9)
        self._epoch_images, self._epoch_seconds = 0, 0.0
        return rate

    @property
    def rate(self) -> float:
        """Images per second over every closed window of the session."""
        return self.images / max(self.seconds, 1e-9)


# ------------------------------------------------------------------------------------------------------- text
def format_count(n: int | float) -> str:
    """A parameter count for people: ``5.72M``, ``86.6k``, ``312``."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{int(n)}"


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if spec == "s" or not isinstance(v, int | float):
        return str(v)
    return format(v, spec)


def format_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[tuple[str, str, str]], left: int = 0) -> str:
    """Fixed-width text table; ``cols`` are ``(key, header, format spec)``; a missing or non-finite value is ``-``.
    The first ``left`` columns are aligned left, the others right."""
    cells = [[_fmt(row.get(k), spec) for k, _, spec in cols] for row in rows]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, (_, h, _) in enumerate(cols)]

    def join(texts: Sequence[str]) -> str:
        return "  ".join(t.ljust(wd) if i < left else t.rjust(wd) for i, (t, wd) in enumerate(zip(texts, widths)))

    line = join([h for _, h, _ in cols])
    out = [line, "-" * len(line)]
    out += [join(cell) for cell in cells]
    return "\n".join(out)


def wrap_items(items: Sequence[str], width: int = 100, indent: str = "") -> list[str]:
    """``items`` joined by two spaces into lines of at most ``width`` characters (an item is never split)."""
    lines: list[str] = []
    line = ""
    for item in items:
        if line and len(indent) + len(line) + 2 + len(item) > width:
            lines.append(indent + line)
            line = item
        else:
            line = f"{line}  {item}" if line else item
    if line:
        lines.append(indent + line)
    return lines


def key_value_block(title: str, rows: Sequence[tuple[str, str | Sequence[str]]], indent: int = 3) -> str:
    """``== title ==`` and one aligned ``label  value`` line per row; a value given as a list of lines continues
    under the first one."""
    pad = " " * indent
    width = max((len(k) for k, _ in rows), default=0)
    out = [f"== {title} =="]
    for key, value in rows:
        lines = [value] if isinstance(value, str) else list(value) or ["-"]
        out.append(f"{pad}{key.ljust(width)}  {lines[0]}")
        out += [f"{pad}{' ' * width}  {line}" for line in lines[1:]]
    return "\n".join(out)


def _split_layer_key(key: str) -> tuple[str, str, str] | None:
    """``cos_teacher/L8`` → ``("", "cos_teacher", "L8")``; ``refine/L8/cos_inlier`` → ``("refine", "cos_inlier",
    "L8")``; None without a ``L<index>`` part."""
    parts = key.split("/")
    at = next((i for i, p in enumerate(parts) if p[:1] == "L" and p[1:].isdigit()), None)
    if at is None:
        return None
    if at + 1 < len(parts):
        return "/".join(parts[:at]), "/".join(parts[at + 1:]), parts[at]
    return "", "/".join(parts[:at]), parts[at]


def layer_tables(values: Mapping[str, float], titles: Mapping[str, str] | None = None, spec: str = ".4g",
                 indent: str = "   ") -> list[str]:
    """Per-layer statistics (``<stat>/L<l>`` or ``<group>/L<l>/<stat>`` keys) as small tables, one per group, a
    row per statistic and a column per layer; keys without a layer part are listed after them."""
    groups: dict[str, dict[str, dict[str, float]]] = {}
    loose: list[str] = []
    for key, v in values.items():
        got = _split_layer_key(key)
        if got is None:
            loose.append(f"{key} {_fmt(v, spec)}")
            continue
        group, stat, layer = got
        groups.setdefault(group, {}).setdefault(stat, {})[layer] = v
    out: list[str] = []
    for group, stats in groups.items():
        layers = sorted({layer for row in stats.values() for layer in row}, key=lambda s: int(s[1:]))
        rows = [{"stat": stat, **row} for stat, row in stats.items()]
        table = format_table(rows, [("stat", (titles or {}).get(group, group or "statistic"), "s"),
                                    *((layer, f"layer {layer[1:]}", spec) for layer in layers)], left=1)
        head, _rule, *body = table.splitlines()
        out += [indent + head, *(indent + line for line in body)]
    out += wrap_items(loose, indent=indent)
    return out
