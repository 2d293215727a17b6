"""Copy an ImageNet-style tree with every image's shorter side reduced to a fixed length (``tools/preresize.py``).

ImageNet's training JPEGs average about 400 × 350 px (some are several thousand pixels wide), while training
reads a 224-px crop.  Decoding and resizing the full image dominates the data loader's CPU time, so storing a
copy with the shorter side at 256 px cuts both the decode cost and the bytes read per image several-fold.

Rules, so that :class:`~mdistiller.dataset.folders.ImageFolderSplit` sees the same samples and labels:

* the files listed are exactly those the folder dataset reads (visible class folders of ``<split>/``, files
  ending in ``.JPEG``/``.jpg``/``.jpeg``/``.png``, any case); every class folder is created in the copy, and
  each file keeps its relative path and name;
* an image whose shorter side exceeds ``short_side`` is resized (bicubic, PIL's antialiasing kernel, aspect ratio
  kept, long side rounded to the nearest pixel); a smaller one keeps its size (never upscaled);
* every output is an RGB JPEG (CMYK, greyscale, palette and RGBA are converted with ``Image.convert("RGB")``,
  exactly what the dataset's loader does).  A ``.png`` file therefore holds JPEG data after conversion; PIL and
  ``torchvision.io.decode_image`` detect the format from the content, not the name;
* EXIF orientation is not applied (the folder loader ignores it too) and metadata is not copied;
* each file is written under a hidden temporary name in its destination folder and then renamed with
  :func:`os.replace`, so an interrupted run never leaves a truncated JPEG under the final name; a rerun skips
  every file whose destination exists and so resumes where the previous one stopped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from mdistiller.dataset.folders import SPLIT_NAMES, _class_dirs, _images

DEFAULT_SHORT_SIDE = 256
DEFAULT_QUALITY = 90
TMP_SUFFIX = ".preresize-part"
"""Temporary files are named ``.<file name>.preresize-part`` (hidden, so the folder dataset never lists them)."""


class PreresizeError(ValueError):
    """A bad source/destination/option; the message is one sentence saying what to pass instead."""


@dataclass(frozen=True)
class FileJob:
    """One image to convert: source and destination paths (same relative path under the two roots)."""

    src: str
    dst: str


@dataclass
class Plan:
    """What a run would do: the files still to write, the number already present, per-split counts."""

    jobs: list[FileJob] = field(default_factory=list)
    skipped: int = 0
    class_dirs: list[Path] = field(default_factory=list)
    per_split: dict[str, dict[str, int]] = field(default_factory=dict)
    src_bytes: int = 0
    """Total size of the source files in :attr:`jobs` (the files to write)."""

    @property
    def total(self) -> int:
        """Images found in the requested splits."""
        return len(self.jobs) + self.skipped


@dataclass
class Summary:
    """Outcome of :func:`preresize_tree`; ``bytes_before``/``bytes_after`` cover the files written by this run."""

    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0

    def format(self) -> str:
        """A few human-readable lines."""
        lines = [f"written {self.written}, skipped (already present) {self.skipped}, failed {len(self.failed)}"]
        if self.written:
            ratio = self.bytes_after / self.bytes_before if self.bytes_before else float("nan")
            lines.append(
                f"bytes of the written files: {human_bytes(self.bytes_before)} before -> "
                f"{human_bytes(self.bytes_after)} after ({ratio:.2f}x)"
            )
        for path, msg in self.failed[:10]:
            lines.append(f"failed: {path}: {msg}")
        if len(self.failed) > 10:
            lines.append(f"... and {len(self.failed) - 10} more failures")
        return "\n".join(lines)


def human_bytes(n: int) -> str:
    """``n`` bytes as a short string with a binary unit."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """``(width, height)`` after scaling the shorter side to ``short_side``; unchanged if already that small.

    The longer side is rounded to the nearest pixel (at least 1), so the aspect ratio is kept within half a pixel.
    """
    short = min(width, height)
    if short <= short_side:
        return width, height
    scale = short_side / short
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


def resize_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], short_side: int, quality: int) -> int:
    """Write ``src`` as an RGB JPEG with its shorter side at most ``short_side`` to ``dst``; return bytes written.

    The parent folder of ``dst`` must exist.  The file is first written to a hidden temporary name in the same
    folder and then renamed onto ``dst`` with :func:`os.replace` (atomic on one file system); on any error the
    temporary file is removed and the exception propagates.
    """
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}{TMP_SUFFIX}")
    try:
        with Image.open(src) as im:
            rgb = im.convert("RGB")
        size = resized_size(rgb.width, rgb.height, short_side)
        if size != rgb.size:
            rgb = rgb.resize(size, Image.Resampling.BICUBIC)
        rgb.save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst.stat().st_size


def check_options(short_side: int, quality: int, workers: int) -> None:
    """Raise :class:`PreresizeError` for a non-positive ``short_side`` or ``workers`` or a quality outside 1-100."""
    if short_side < 1:
        raise PreresizeError(f"short side {short_side} is invalid: pass a positive number of pixels, e.g. 256.")
    if not 1 <= quality <= 100:
        raise PreresizeError(f"JPEG quality {quality} is invalid: pass an integer from 1 to 100, e.g. 90.")
    if workers < 1:
        raise PreresizeError(f"{workers} workers is invalid: pass a positive number of processes.")


def check_roots(src: str | os.PathLike[str], dst: str | os.PathLike[str], splits: Sequence[str]) -> tuple[Path, Path]:
    """Validated ``(src, dst)`` as absolute paths; a bad combination raises :class:`PreresizeError`.

    Errors: ``src`` missing; none of ``splits`` present under ``src``; ``dst`` equal to ``src`` or inside it; a
    split name that is not a plain folder name.
    """
    s, d = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    if not splits:
        raise PreresizeError("no split given: pass --splits with folder names such as train,val.")
    for name in splits:
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise PreresizeError(f"split '{name}' is not a folder name: pass names such as train,val.")
    layout = f"expected {s}/train/<class>/*.JPEG and {s}/val/<class>/*.JPEG"
    if not s.is_dir():
        raise PreresizeError(f"source folder '{s}' not found: pass --src an ImageNet-style root ({layout}).")
    if not any((s / name).is_dir() for name in splits):
        raise PreresizeError(f"source folder '{s}' has no {' or '.join(splits)} split folder: {layout}.")
    if d == s:
        raise PreresizeError(f"destination '{d}' is the source folder itself: pass --dst a new folder, e.g. {s}-256.")
    if d.is_relative_to(s):
        raise PreresizeError(f"destination '{d}' lies inside the source folder '{s}': pass --dst a folder outside it.")
    return s, d


def plan_tree(src: Path, dst: Path, splits: Iterable[str] = SPLIT_NAMES) -> Plan:
    """List the images of ``src/<split>/<class>/`` and sort them into files to write and files already in ``dst``.

    Splits that do not exist under ``src`` are left out (``per_split`` then has no entry for them).
    """
    plan = Plan()
    for split in splits:
        split_dir = src / split
        if not split_dir.is_dir():
            continue
        counts = {"classes": 0, "images": 0, "to_write": 0, "present": 0}
        for cls in _class_dirs(split_dir):
            counts["classes"] += 1
            out_dir = dst / split / cls
            plan.class_dirs.append(out_dir)
            for name in _images(split_dir / cls):
                counts["images"] += 1
                out = out_dir / name
                if out.exists():
                    counts["present"] += 1
                    plan.skipped += 1
                else:
                    counts["to_write"] += 1
                    src_file = split_dir / cls / name
                    plan.jobs.append(FileJob(str(src_file), str(out)))
                    plan.src_bytes += src_file.stat().st_size
        plan.per_split[split] = counts
    return plan


def _run_job(args: tuple[FileJob, int, int]) -> tuple[str, int, int, str | None]:
    """Pool worker: convert one file; returns ``(src, src bytes, dst bytes, error message or None)``."""
    job, short_side, quality = args
    src_bytes = os.path.getsize(job.src)
    try:
        return job.src, src_bytes, resize_file(job.src, job.dst, short_side, quality), None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return job.src, src_bytes, 0, f"{type(err).__name__}: {err}"


def preresize_tree(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    short_side: int = DEFAULT_SHORT_SIDE,
    quality: int = DEFAULT_QUALITY,
    splits: Sequence[str] = SPLIT_NAMES,
    workers: int | None = None,
    progress: bool = True,
) -> Summary:
    """Copy the ``splits`` of ``src`` to ``dst`` with every image's shorter side at most ``short_side`` px.

    ``quality`` is the JPEG quality (1-100).  ``workers`` processes convert files in parallel
    (a :class:`multiprocessing.Pool` of *spawned* processes, never forked: a fork after torch or another library
    started its threads can copy a held lock into the child and hang it; default ``os.cpu_count()``; 1 converts
    in this process).  ``progress``
    shows a tqdm bar.  Files whose destination exists are skipped; a file that cannot be read or written is
    recorded in :attr:`Summary.failed` and the run goes on.  Bad arguments raise :class:`PreresizeError`.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    check_options(short_side, quality, workers)
    s, d = check_roots(src, dst, splits)
    plan = plan_tree(s, d, splits)
    for folder in plan.class_dirs:
        folder.mkdir(parents=True, exist_ok=True)
    summary = Summary(skipped=plan.skipped)
    args = [(job, short_side, quality) for job in plan.jobs]
    bar = tqdm(total=len(args), unit="img", disable=not progress or not args, dynamic_ncols=True)
    try:
        if workers == 1 or len(args) <= 1:
            results: Iterable[tuple[str, int, int, str | None]] = map(_run_job, args)
            _collect(results, summary, bar)
        else:
            import multiprocessing

            chunk = max(1, min(64, len(args) // (workers * 8)))
            ctx = multiprocessing.get_context("spawn")  # never fork: see the docstring
            with ctx.Pool(min(workers, len(args))) as pool:
                _collect(pool.imap_unordered(_run_job, args, chunksize=chunk), summary, bar)
    finally:
        bar.close()
    return summary


def _collect(results: Iterable[tuple[str, int, int, str | None]], summary: Summary, bar: tqdm) -> None:
    """Add worker results to ``summary`` and advance the progress bar."""
    for path, before, after, error in results:
        if error is None:
            summary.written += 1
            summary.bytes_before += before
            summary.bytes_after += after
        else:
            summary.failed.append((path, error))
        bar.update(1)
