"""Feature caches for the cached linear-probe protocol: ONE memory-mapped ``.npy`` file per split.

Each split is a single numpy ``.npy`` file holding a 1-D *structured* array with one record per image, so the
features and the targets of an image sit side by side in the same file (never one file per image)::

    <dir>/<split>.npy    records: index int64 | feat f16[D]                | label int64     (classification)
                                  index int64 | patch f16[D, h, w] | cls f16[D] | mask u8[H, W] (segmentation)
                                  index int64 | patch ... | cls ...         | depth f32[H, W] (depth)
    <dir>/<split>.json   sidecar: format, fingerprint, fields, shapes, the feature spec, the backbone,
                         the dataset, timing; written last, so a split without a sidecar is incomplete.

Files open with ``np.load(path, mmap_mode="r")``: a probe reads only the records of the current batch, and the
whole ImageNet-train CLS cache of a ViT-Ti (1.28 M × 192 × 2 B ≈ 0.5 GB) need not fit in RAM.

Under ``torchrun`` the extraction is sharded: rank ``r`` computes rows ``r, r + W, r + 2W, …`` and writes them
into the same file (on a file system all ranks see), rank 0 checks that every row was written (the ``index``
field) and publishes the file with an atomic rename.

Two processes that need the same cache at once (a sweep's probes of one model into one ``--cache-dir``) do not both
write it: the builder holds an exclusive lock on ``<dir>/.<split>.npy.lock`` from the reuse check to the publication,
and the other waits for it, then reuses the finished file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data._utils.collate import default_collate

from mdistiller.engine.distributed import barrier, broadcast_object, get_rank, get_world_size
from mdistiller.fileio import atomic_write, file_lock

__all__ = ["CACHE_FORMAT", "CachedSplit", "build_cache", "open_cache", "record_dtype"]

CACHE_FORMAT = "mdistiller-feature-cache/1"
_FLOAT_DTYPES = {"float16": np.float16, "float32": np.float32}


def record_dtype(fields: Mapping[str, tuple[Any, tuple[int, ...]]]) -> np.dtype:
    """The structured dtype ``[(name, dtype, shape), ...]`` of one record (packed, little-endian)."""
    return np.dtype([(name, np.dtype(dt).newbyteorder("<"), tuple(shape)) for name, (dt, shape) in fields.items()])


def _holds(split: CachedSplit, n: int, fields: Mapping[str, tuple[Any, tuple[int, ...]]]) -> bool:
    """True when ``split`` has ``n`` records and every field of ``fields`` with that dtype and shape."""
    have = split.array.dtype.fields or {}
    want = {k: np.dtype((np.dtype(dt).newbyteorder("<"), shape)) for k, (dt, shape) in fields.items()}
    return len(split) == n and all(k in have and have[k][0] == d for k, d in want.items())


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


class CachedSplit:
    """A finished cache file opened read-only as a memory map.

    ``read(rows, device)`` returns ``{field: tensor}`` for those rows (float16 features become float32);
    ``meta`` is the sidecar. ``preload()`` copies the file into RAM (small caches, many epochs).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        side = _sidecar(self.path)
        if not self.path.is_file() or not side.is_file():
            raise FileNotFoundError(f"feature cache '{self.path}' (or its sidecar .json) is missing; rebuild it.")
        self.meta: dict[str, Any] = json.loads(side.read_text())
        self.array: np.ndarray = np.load(self.path, mmap_mode="r")
        if self.array.dtype.names is None or len(self.array) != self.meta.get("num_items"):
            raise ValueError(f"feature cache '{self.path}' does not match its sidecar; delete it so it is rebuilt.")

    def __len__(self) -> int:
        return len(self.array)

    @property
    def fields(self) -> tuple[str, ...]:
        """The record fields stored in the file (``index`` included)."""
        return tuple(self.array.dtype.names or ())

    def preload(self) -> CachedSplit:
        """Copy the records into memory (returns ``self``)."""
        self.array = np.array(self.array)
        return self

    def read(self, rows: np.ndarray | slice | None = None, device: torch.device | str = "cpu",
             fields: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """Tensors of ``fields`` (default: all but ``index``) for ``rows`` (default: all), on ``device``."""
        rec = self.array if rows is None else self.array[rows]
        out = {}
        for name in fields or tuple(f for f in self.fields if f != "index"):
            a = np.ascontiguousarray(rec[name])
            t = torch.from_numpy(a)
            if t.dtype == torch.float16:
                t = t.float()
            out[name] = t.to(device, non_blocking=True)
        return out


def open_cache(path: str | os.PathLike[str], fingerprint: str | None = None) -> CachedSplit | None:
    """The cache at ``path`` if it is complete (and built for ``fingerprint`` when given), else ``None``."""
    p = Path(path)
    side = _sidecar(p)
    if not p.is_file() or not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("format") != CACHE_FORMAT or not meta.get("complete"):
        return None
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        return None
    try:
        return CachedSplit(p)
    except (OSError, ValueError):
        return None


def build_cache(
    path: str | os.PathLike[str],
    dataset: Dataset,
    extractor: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    feature_shapes: Callable[[tuple[int, int]], dict[str, tuple[int, ...]]],
    target_of: Callable[[Any], torch.Tensor],
    target_field: tuple[str, Any],
    *,
    fingerprint: str,
    meta: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    dtype: str = "float16",
    device: torch.device | str = "cpu",
    reuse: bool = True,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
    features_from: Callable[[], CachedSplit | None] | None = None,
) -> CachedSplit:
    """Extract ``dataset`` once into the single file ``path`` (``<split>.npy``) and return it opened.

    ``extractor(images) -> {name: tensor [B, ...]}`` gives the features, ``feature_shapes(image_hw)`` their
    per-image shapes, ``target_of(collated targets) -> tensor [B, ...]`` the target stored in the field
    ``target_field = (name, numpy dtype)``. A complete cache with the same ``fingerprint`` is reused when
    ``reuse``. Every rank of a process group must call this (collective); each extracts its stride of rows. Another
    process building the same ``path`` is waited for (rank 0 holds the file lock of the module doc).

    ``features_from``: called (on every rank) only when the cache must be built; it may return a complete cache of
    the same images, backbone and feature spec built for another target (segmentation and depth on toy scenes),
    whose feature fields are then copied row by row instead of running the backbone, and only the targets are read
    from ``dataset``. The copy is exact (the same stored dtype); the sidecar's ``features_from`` names the source.
    """
    path = Path(path)
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"cache dtype '{dtype}' is not one of {', '.join(_FLOAT_DTYPES)}; pick one of those.")
    n = len(dataset)  # type: ignore[arg-type]
    if n < 1:
        raise ValueError(f"cannot cache an empty dataset for '{path.name}'; check the split and its size options.")
    with _build_lock(path, log) if get_rank() == 0 else contextlib.nullcontext():
        if reuse:
            found = open_cache(path, fingerprint) if get_rank() == 0 else None
            if broadcast_object(found is not None):
                barrier()
                cached = open_cache(path, fingerprint)
                if cached is not None:
                    if log:
                        log(f"reusing feature cache {path} ({len(cached)} items)")
                    return cached
        rank, world = get_rank(), get_world_size()
        image0, target0 = dataset[0]
        hw = (int(image0.shape[-2]), int(image0.shape[-1]))
        tgt0 = target_of(default_collate([target0]))
        tname, tdtype = target_field
        fields: dict[str, tuple[Any, tuple[int, ...]]] = {"index": (np.int64, ())}
        shapes = feature_shapes(hw)
        fields.update({k: (_FLOAT_DTYPES[dtype], s) for k, s in shapes.items()})
        source = features_from() if features_from is not None else None
        if source is not None and not _holds(source, n, {k: fields[k] for k in shapes}):
            source = None  # not the same features after all: extract
        if source is not None and log:
            log(f"features of '{path.stem}' copied from {source.path} (same images, backbone and tokens)")
        fields[tname] = (tdtype, tuple(tgt0.shape[1:]))
        rdtype = record_dtype(fields)
        partial = path.with_name(path.name + ".partial")
        if rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            for stale in (path, _sidecar(path)):
                stale.unlink(missing_ok=True)
            mm = np.lib.format.open_memmap(partial, mode="w+", dtype=rdtype, shape=(n,))
            mm["index"] = -1
            mm.flush()
            del mm
        barrier()
        mm = np.load(partial, mmap_mode="r+")
        rows = np.arange(rank, n, world)
        loader = DataLoader(Subset(dataset, rows.tolist()), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, pin_memory=torch.device(device).type == "cuda")
        start, pos = time.perf_counter(), 0
        last_log = start
        from tqdm import tqdm

        show = (progress if progress is not None else sys.stderr.isatty()) and rank == 0
        bar = tqdm(total=len(rows), desc=f"features {path.stem}", unit="img", disable=not show, dynamic_ncols=True,
                   leave=False)
        for images, targets in loader:
            bar.update(images.shape[0])
            if tuple(images.shape[-2:]) != hw:
                raise ValueError(
                    f"images of '{path.stem}' have different sizes ({tuple(images.shape[-2:])} vs {hw}); the cached "
                    "protocol needs a fixed evaluation size (use a crop/resize evaluation transform)."
                )
            b = images.shape[0]
            idx = rows[pos : pos + b]
            pos += b
            if source is not None:
                feats = source.read(idx, fields=tuple(shapes))
            else:
                feats = extractor(images.to(device, non_blocking=True))
            buf = np.empty(b, dtype=rdtype)
            buf["index"] = idx
            for k in feats:
                buf[k] = feats[k].detach().to("cpu", torch.float32).numpy()
            tgt = target_of(targets)
            if tuple(tgt.shape[1:]) != fields[tname][1]:
                raise ValueError(
                    f"targets of '{path.stem}' change shape ({tuple(tgt.shape[1:])} vs {fields[tname][1]}); the cached "
                    "protocol needs targets of a fixed size."
                )
            buf[tname] = tgt.cpu().numpy()
            if world == 1:
                mm[idx[0] : idx[-1] + 1] = buf
            else:
                mm[idx] = buf
            if log and time.perf_counter() - last_log > 30:
                last_log = time.perf_counter()
                log(f"extracting '{path.stem}': {pos}/{len(rows)} rows on this rank, "
                    f"{pos / (last_log - start):.1f} img/s")
        bar.close()
        mm.flush()
        del mm
        seconds = time.perf_counter() - start
        barrier()
        if rank == 0:
            check = np.load(partial, mmap_mode="r")
            missing = int((check["index"] != np.arange(n)).sum())
            del check
            if missing:
                raise RuntimeError(
                    f"{missing} rows of feature cache '{partial}' were not written; all ranks must see the same cache "
                    "directory (pass --cache-dir on a shared file system)."
                )
            os.replace(partial, path)
            side = {
                "format": CACHE_FORMAT, "complete": True, "fingerprint": fingerprint, "split": path.stem,
                "num_items": n, "image_size": list(hw), "dtype": dtype, "bytes": path.stat().st_size,
                "fields": {k: {"dtype": np.dtype(dt).name, "shape": list(s)} for k, (dt, s) in fields.items()},
                "extract_seconds": round(seconds, 3), "world_size": world,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "features_from": str(source.path) if source is not None else None, **dict(meta or {}),
            }
            atomic_write(_sidecar(path), lambda tmp: Path(tmp).write_text(json.dumps(side, indent=2, default=str)))
            if log:
                log(f"cached {n} items of '{path.stem}' in {seconds:.1f} s -> {path} ({side['bytes'] / 2**20:.1f} MiB)")
        barrier()
        out = open_cache(path, fingerprint)
        if out is None:
            raise RuntimeError(f"feature cache '{path}' could not be reopened after writing; check the disk.")
        return out



def _build_lock(path: Path, log: Callable[[str], None] | None) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on ``<dir>/.<split>.npy.lock`` (:func:`mdistiller.fileio.file_lock`) held while this process
    reuses or builds ``path``: a second process (two probes of one model into one ``--cache-dir``, as a sweep's
    evaluation jobs run) waits for the first to publish the cache, then reuses it, instead of writing the same
    ``.partial`` file."""
    def waiting() -> None:
        if log:
            log(f"waiting for another process that is building feature cache {path}")

    return file_lock(path.with_name(f".{path.name}.lock"), on_wait=waiting)
