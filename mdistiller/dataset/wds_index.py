"""An index over WebDataset shards: where each sample's image lies in its tar file, and its label.

A WebDataset split is a set of uncompressed tar files ``ROOT/<split>-*.tar``; a sample is the run of consecutive
members sharing a key (``<key>.jpg`` and ``<key>.cls``, the key being the member name up to its first dot: the
rule of ``webdataset.tariterators.base_plus_ext``, which this module calls). Reading the member headers once with
:mod:`tarfile` (as timm's ``ReaderImageInTar`` does) gives each image's byte offset and size, so a sample can be
read with one positional read: the shards become a map-style dataset that the resumable sampler indexes.

The index of a split is cached as ``<split>.npz`` in ``ROOT/.mdistiller-index/`` (or, when ``ROOT`` is read-only,
in ``~/.cache/mdistiller/wds-index/<hash of ROOT>/``) and rebuilt whenever a shard's name, size or modification
time differs from the cached ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdistiller.fileio import atomic_write, file_lock

__all__ = ["IMAGE_EXTS", "LABEL_EXT", "ShardIndex", "load_index", "shard_paths", "wds_layout"]

IMAGE_EXTS = ("jpg", "jpeg", "png")
"""Member extensions read as the sample's image (the first present wins), compared in lower case."""
LABEL_EXT = "cls"
"""Member extension of the integer class label (ASCII text, e.g. ``b"417"``)."""
INDEX_VERSION = 1
_META = re.compile(r"__[^/]*__($|/)")  # webdataset skips such members (tar_file_iterator's skip_meta)


def wds_layout(root: Path | str) -> str:
    """The expected layout, for error messages."""
    return (f"expected {root}/train-000000.tar, {root}/train-000001.tar, ... (and val-*.tar) holding "
            "<key>.jpg|jpeg|png + <key>.cls members (WebDataset layout)")


def shard_paths(root: Path, split: str) -> list[Path]:
    """The split's shards ``root/<split>-*.tar``, sorted by name; one sentence when there are none."""
    if not root.is_dir():
        raise FileNotFoundError(f"DATASET.ROOT '{root}' (DATASET.FORMAT wds) is not a folder: {wds_layout(root)}.")
    shards = sorted(p for p in root.glob(f"{split}-*.tar") if p.is_file())
    if not shards:
        others = sorted(p.name for p in root.glob("*.tar"))[:3]
        seen = f" (found {', '.join(others)})" if others else ""
        raise FileNotFoundError(
            f"DATASET.ROOT '{root}' has no {split}-*.tar shards{seen}: {wds_layout(root)}; point DATASET.ROOT at the "
            "shard folder or use another DATASET.FORMAT.")
    return shards


@dataclass
class ShardIndex:
    """Per-sample arrays of one split (``shard`` indexes ``shards``); ``label`` is -1 for every sample when the
    shards carry no ``.cls`` members."""

    root: Path
    split: str
    shards: list[str]  # file names, relative to root
    counts: np.ndarray  # samples per shard (int64)
    shard: np.ndarray  # int32 per sample
    offset: np.ndarray  # int64 byte offset of the image data in its shard
    size: np.ndarray  # int64 byte size of the image
    label: np.ndarray  # int64
    key: np.ndarray  # bytes (numpy 'S') sample keys, for messages

    def __len__(self) -> int:
        return len(self.offset)

    @property
    def labelled(self) -> bool:
        """Whether the samples carry ``.cls`` labels."""
        return bool(len(self.label)) and int(self.label.min()) >= 0

    def name(self, i: int) -> str:
        """``'<shard>' member '<key>.<ext>'`` of sample ``i``, for messages."""
        return f"'{self.root / self.shards[int(self.shard[i])]}' sample '{self.key[i].decode(errors='replace')}'"


def _parse_label(data: bytes, shard: Path, key: str) -> int:
    try:
        value = int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"wds shard '{shard}' sample '{key}' has a .cls member {data[:20]!r} that is not an integer "
                         "class index; rewrite the shard with integer labels.") from None
    if value < 0:
        raise ValueError(f"wds shard '{shard}' sample '{key}' has the negative label {value}; labels are class "
                         "indices 0, 1, ...")
    return value


def index_shard(path: Path) -> tuple[list[bytes], list[int], list[int], list[int]]:
    """``(keys, image offsets, image sizes, labels)`` of one shard, samples in file order (-1: no ``.cls``)."""
    from webdataset.tariterators import base_plus_ext

    keys: list[bytes] = []
    offsets: list[int] = []
    sizes: list[int] = []
    labels: list[int] = []
    current: str | None = None
    image: tuple[int, int] | None = None
    label = -1

    def close() -> None:
        if current is None:
            return
        if image is None:
            raise ValueError(f"wds shard '{path}' has sample '{current}' without a .jpg/.jpeg/.png member; every "
                             "sample needs one image (<key>.jpg + <key>.cls).")
        keys.append(current.encode())
        offsets.append(image[0])
        sizes.append(image[1])
        labels.append(label)

    try:
        tf = tarfile.open(path, mode="r:")  # plain tar only: compressed shards allow no positional reads
    except tarfile.ReadError as err:
        raise ValueError(f"wds shard '{path}' is not an uncompressed tar file ({err}); rewrite it as a plain .tar "
                         "(WebDataset's TarWriter/ShardWriter do).") from None
    with tf:
        for ti in tf:
            if not ti.isreg() or _META.match(ti.name):
                continue
            key, ext = base_plus_ext(ti.name)
            if key is None:
                continue
            ext = ext.lower()
            if key != current:
                close()
                current, image, label = key, None, -1
            if ext in IMAGE_EXTS and image is None:
                image = (ti.offset_data, ti.size)
            elif ext == LABEL_EXT:
                member = tf.extractfile(ti)
                label = _parse_label(member.read() if member else b"", path, key)
            tf.members = []  # headers of members already indexed are not needed again (memory stays flat)
        close()
    return keys, offsets, sizes, labels


def _stamp(paths: list[Path]) -> np.ndarray:
    stats = [p.stat() for p in paths]
    return np.array([[s.st_size, s.st_mtime_ns] for s in stats], dtype=np.int64).reshape(-1, 2)


def _cache_candidates(root: Path, split: str) -> list[Path]:
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return [root / ".mdistiller-index" / f"{split}.npz", home / "mdistiller" / "wds-index" / digest / f"{split}.npz"]


def _read_cache(path: Path, names: list[str], stamp: np.ndarray) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        return None
    try:
        same = (int(arrays["version"]) == INDEX_VERSION and arrays["names"].tolist() == names
                and np.array_equal(arrays["stamp"], stamp))
    except KeyError:
        return None
    return arrays if same else None


def _build(root: Path, split: str, paths: list[Path]) -> dict[str, np.ndarray]:
    print(f"[mdistiller] indexing {len(paths)} wds shard(s) of '{root}' split {split} (once; the index is cached)",
          file=sys.stderr, flush=True)
    keys: list[bytes] = []
    offsets: list[int] = []
    sizes: list[int] = []
    labels: list[int] = []
    counts, shard = [], []
    for i, p in enumerate(paths):
        k, o, s, lab = index_shard(p)
        keys += k
        offsets += o
        sizes += s
        labels += lab
        counts.append(len(k))
        shard += [i] * len(k)
    label = np.array(labels, dtype=np.int64)
    if len(label) and (label < 0).any() and (label >= 0).any():
        first = int(np.flatnonzero(label < 0)[0])
        raise ValueError(f"wds split {split} of '{root}' labels some samples and not others (sample "
                         f"'{keys[first].decode(errors='replace')}' has no .cls member); give every sample a .cls "
                         "or none.")
    return {"version": np.array(INDEX_VERSION), "counts": np.array(counts, dtype=np.int64),
            "shard": np.array(shard, dtype=np.int32), "offset": np.array(offsets, dtype=np.int64),
            "size": np.array(sizes, dtype=np.int64), "label": label, "key": np.array(keys, dtype=np.bytes_)}


def _write_cache(arrays: dict[str, np.ndarray], candidates: list[Path]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    for path in candidates:
        try:
            atomic_write(path, write)
            return
        except OSError:
            continue  # a read-only dataset folder: the next candidate is the user's cache


@contextlib.contextmanager
def _build_lock(candidates: list[Path]) -> Iterator[None]:
    """:func:`mdistiller.fileio.file_lock` on ``<cache>.lock`` beside the first writable cache location while the
    index is built, so the ranks of a multi-GPU run that start together index the shards once (the others then read
    the cache); none if no location is writable."""
    with contextlib.ExitStack() as stack:
        for path in candidates:
            try:
                stack.enter_context(file_lock(path.with_suffix(".lock")))
            except OSError:
                continue  # a read-only dataset folder: the next candidate is the user's cache
            break
        yield


def load_index(root: str | os.PathLike[str], split: str) -> ShardIndex:
    """The index of ``root/<split>-*.tar`` (see the module docstring), built on first use and cached."""
    root = Path(root).expanduser()
    paths = shard_paths(root, split)
    names = [p.name for p in paths]
    stamp = _stamp(paths)
    candidates = _cache_candidates(root, split)

    def cached() -> dict[str, np.ndarray] | None:
        return next((a for a in (_read_cache(c, names, stamp) for c in candidates if c.is_file()) if a is not None),
                    None)

    arrays = cached()
    if arrays is None:
        with _build_lock(candidates):
            arrays = cached()  # another process may have built it while this one waited
            if arrays is None:
                arrays = _build(root, split, paths)
                _write_cache(arrays | {"names": np.array(names), "stamp": stamp}, candidates)
    if not len(arrays["offset"]):
        raise ValueError(f"the {split}-*.tar shards of '{root}' hold no samples: {wds_layout(root)}.")
    return ShardIndex(root=root, split=split, shards=names, counts=arrays["counts"], shard=arrays["shard"],
                      offset=arrays["offset"], size=arrays["size"], label=arrays["label"], key=arrays["key"])
