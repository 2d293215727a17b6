"""Write labelled images as WebDataset shards or as a saved Hugging Face dataset (``tools/convert_data.py``).

The inputs are ``samples = [(image path, label), ...]`` (a folder dataset's ``samples``); the image files are copied
byte for byte (no re-encoding), so every format holds the very same images.

* :func:`write_wds`: ``<out>/<split>-000000.tar``, ... with ``shard_size`` samples each, written by ``webdataset``'s
  ``ShardWriter``: per sample ``<key>.<jpg|jpeg|png>`` and ``<key>.cls``. The samples are shuffled (``seed``) before
  they are cut into shards, as WebDataset converters do, so a stream's shuffle buffer mixes classes from its first
  samples on. Shards are written into ``<out>/.partial/`` and moved into ``<out>`` when the split is complete.
* :func:`write_hfds`: a ``DatasetDict`` of the splits, ``image`` (``datasets.Image``) + ``label`` (``ClassLabel``),
  saved with ``save_to_disk``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_hfds", "write_wds"]

_EXT = {".jpg": "jpg", ".jpeg": "jpeg", ".png": "png"}


def _ext(path: str) -> str:
    ext = _EXT.get(Path(path).suffix.lower())
    if ext is None:
        raise ValueError(f"'{path}' is not a .jpg/.jpeg/.png file; WebDataset shards here hold those three only.")
    return ext


def write_wds(samples: Sequence[tuple[str, int]], out: str | os.PathLike[str], split: str, shard_size: int = 1000,
              seed: int = 0, classes: Sequence[str] | None = None) -> list[Path]:
    """Write ``samples`` as ``out/<split>-%06d.tar`` shards (see the module docstring); returns the shard paths.
    ``classes`` (label i = ``classes[i]``) is written to ``out/classes.txt``."""
    import webdataset as wds

    if shard_size < 1:
        raise ValueError(f"shard_size {shard_size} must be at least 1.")
    out = Path(out)
    stage = out / ".partial"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    order = np.random.default_rng(seed).permutation(len(samples)) if seed is not None else range(len(samples))
    with wds.ShardWriter(str(stage / f"{split}-%06d.tar"), maxcount=shard_size, verbose=0) as sink:
        for n, i in enumerate(order):
            path, label = samples[int(i)]
            stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(path).stem)
            with open(path, "rb") as f:
                sink.write({"__key__": f"{n:08d}_{stem}", _ext(path): f.read(), "cls": int(label)})
    shards = []
    for p in sorted(stage.glob(f"{split}-*.tar")):
        os.replace(p, out / p.name)
        shards.append(out / p.name)
    stage.rmdir()
    if classes is not None:
        (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    return shards


def _rows(samples: Sequence[tuple[str, int]]) -> Iterator[dict[str, Any]]:
    for path, label in samples:
        with open(path, "rb") as f:
            yield {"image": {"bytes": f.read(), "path": None}, "label": int(label)}


def write_hfds(splits: Mapping[str, Sequence[tuple[str, int]]], out: str | os.PathLike[str],
               classes: Sequence[str]) -> Path:
    """Save ``splits`` (e.g. ``{"train": samples, "validation": samples}``) as one ``DatasetDict`` in ``out``."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes))})
    with tempfile.TemporaryDirectory(prefix="mdistiller-hfds-") as cache:
        parts = {name: datasets.Dataset.from_generator(_rows, gen_kwargs={"samples": list(rows)}, features=features,
                                                       cache_dir=cache)
                 for name, rows in splits.items()}
        datasets.DatasetDict(parts).save_to_disk(str(out))
    return Path(out)
