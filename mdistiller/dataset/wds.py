"""WebDataset shards (``DATASET.FORMAT wds``): ``ROOT/{train,val}-*.tar`` of ``<key>.jpg|jpeg|png`` + ``<key>.cls``.

Two readers of the same samples (those of :mod:`mdistiller.dataset.wds_index`):

* :class:`WdsShards` (``DATASET.WDS_MODE index``, the default): map-style. Sample ``i`` is one positional read from
  its shard at the offset in the index, so the resumable sampler orders the samples exactly as it orders a folder's
  files, and a resumed run sees the very batches of an uninterrupted one.
* :class:`WdsStream` (``DATASET.WDS_MODE stream``, training only): each loader worker reads its own shards front to
  back through ``webdataset``'s tar iterator and a shuffle buffer of ``DATASET.SHUFFLE_BUFFER`` samples, so its
  memory is bounded by that buffer whatever the number or size of the shards. Its order is a pure function of the
  seed, the epoch and the layout (world size × loader workers = streams); see :class:`WdsStream` for the epoch and
  resume rules.

Items are ``(transform(RGB image), label)``, the label -1 when the shards carry no ``.cls`` members.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from mdistiller.dataset.bad_images import DECODE_ERRORS, handle_bad_image, skip_counter
from mdistiller.dataset.finegrained import decode_rgb
from mdistiller.dataset.transforms import eval_transform
from mdistiller.dataset.wds_index import IMAGE_EXTS, LABEL_EXT, load_index

__all__ = ["WdsShards", "WdsStream", "require_webdataset", "sample_seed"]

MAX_OPEN_SHARDS = 64
"""Shard files each process keeps open (least recently used first closed): far below the usual 1024-descriptor limit."""


def require_webdataset() -> None:
    """One sentence when the ``webdataset`` package is missing."""
    try:
        import webdataset  # noqa: F401
    except ImportError:
        raise ImportError("DATASET.FORMAT wds needs the webdataset package: pip install 'mdistiller[formats]' (or "
                          "pip install webdataset).") from None


def sample_seed(*entropy: int) -> int:
    """A 32-bit seed that is a pure function of ``entropy`` (numpy's ``SeedSequence``, as ``SeededSamples``)."""
    return int(np.random.SeedSequence([int(v) for v in entropy]).generate_state(1)[0])


def _classes(root: Path, labels: np.ndarray) -> list[str]:
    """``ROOT/classes.txt`` (one class name per line, line i = label i) when present, else ``"0"``, ``"1"``, ..."""
    names = root / "classes.txt"
    if names.is_file():
        return [line.strip() for line in names.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [str(i) for i in range(int(labels.max()) + 1)] if len(labels) and labels.min() >= 0 else []


class WdsShards(Dataset):
    """One split of WebDataset shards as a map-style dataset (see the module docstring); attributes ``classes``,
    ``targets`` (int64 array) and ``num_classes`` as the folder datasets have them (0 classes when unlabelled)."""

    def __init__(self, root: str | os.PathLike[str], split: str = "train",
                 transform: Callable[[Image.Image], Any] | None = None) -> None:
        require_webdataset()
        self.index = load_index(root, split)
        self.root, self.split = self.index.root, split
        self.transform = transform if transform is not None else eval_transform(224)
        self.targets = self.index.label
        self.classes = _classes(self.root, self.targets)
        self._fds: OrderedDict[int, int] = OrderedDict()

    @property
    def num_classes(self) -> int:
        """Number of classes (``classes.txt``, else the largest label + 1; 0 when unlabelled)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:  # spawn/forkserver workers open their own files
        return {**self.__dict__, "_fds": OrderedDict()}

    def sample_name(self, i: int) -> str:
        """``'<shard>' sample '<key>'``, for messages."""
        return self.index.name(i)

    def _fd(self, shard: int) -> int:
        fd = self._fds.pop(shard, None)
        if fd is None:
            fd = os.open(self.root / self.index.shards[shard], os.O_RDONLY)
            if len(self._fds) >= MAX_OPEN_SHARDS:
                os.close(self._fds.popitem(last=False)[1])
        self._fds[shard] = fd
        return fd

    def read(self, i: int) -> bytes:
        """The encoded image of sample ``i`` (one ``pread``: safe in forked workers that share descriptors)."""
        size = int(self.index.size[i])
        data = os.pread(self._fd(int(self.index.shard[i])), size, int(self.index.offset[i]))
        if len(data) != size:
            raise OSError(f"shard ends after {len(data)} of the image's {size} bytes: the shard is truncated")
        return data

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            data = self.read(i)
        except OSError as err:
            raise OSError(f"image {self.sample_name(i)} cannot be read ({err}): replace the shard.") from err
        return self.transform(decode_rgb(data, self.sample_name(i))), int(self.targets[i])

    def __repr__(self) -> str:
        return (f"WdsShards(root='{self.root}', split={self.split!r}, shards={len(self.index.shards)}, "
                f"images={len(self)}, classes={self.num_classes})")


class WdsStream(IterableDataset):
    """Streaming read of one split's shards (training). Call :meth:`configure` once (the loader builder does), then
    :meth:`set_position` before every pass over the loader.

    Layout: ``S = world_size × W`` streams, ``W = max(1, num_workers)``; each epoch permutes the shards with
    ``(seed, epoch)`` and stream ``s`` reads shards ``s, s+S, s+2S, ...`` of that permutation in turn (again from its
    first shard if it runs out: a second pass) through a shuffle buffer seeded by ``(seed, epoch, s, pass)``. Every
    stream yields exactly
    ``q·b`` samples, ``q = ⌊N / (S·b)⌋`` (``N`` samples in the split, ``b`` the per-rank batch), so every rank runs
    ``q·W`` steps per epoch and ``N − q·S·b`` samples (plus whatever uneven shards leave over) wait for the next
    epoch's permutation. Sample ``j`` of stream ``s`` is augmented under torch's RNG seeded by ``(seed, epoch, s, j)``.

    Resume: the loader serves its workers' batches in turn, so step ``t`` of an epoch is batch ``⌊t/W⌋`` of stream
    role ``t mod W``. Resuming at step ``k``, worker ``w`` plays role ``(w + k) mod W`` and first reads past the
    ``⌈(k − role)/W⌉`` batches that role already gave (no decoding), so the resumed batches are exactly the
    uninterrupted ones, for the same world size, ``NUM_WORKERS``, batch, seed and ``SHUFFLE_BUFFER``. With
    ``DATASET.SKIP_BAD_IMAGES True`` a skipped image is replaced by the next sample of the stream, which the
    read-past does not know about: each image skipped before the resume point shifts its stream by one sample (one
    sample seen twice).
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train",
                 transform: Callable[[Image.Image], Any] | None = None, shuffle_buffer: int = 1000) -> None:
        require_webdataset()
        if shuffle_buffer < 0:
            raise ValueError(f"DATASET.SHUFFLE_BUFFER is {shuffle_buffer}; use a number of samples >= 0 "
                             "(0 or 1: no shuffling within a stream).")
        index = load_index(root, split)  # only the shard list and counts are kept: memory does not grow with N
        self.root, self.split = index.root, split
        self.paths = [str(self.root / name) for name in index.shards]
        self.counts = index.counts.copy()
        self.labelled = index.labelled
        self.classes = _classes(self.root, index.label)
        self.transform = transform if transform is not None else eval_transform(224)
        self.shuffle_buffer = int(shuffle_buffer)
        self.skipped: Any = None
        self.layout: dict[str, int] | None = None
        ctx = multiprocessing.get_context("spawn")
        self._epoch, self._start_step = ctx.Value("q", 0), ctx.Value("q", 0)  # read by the workers at each pass

    @property
    def num_classes(self) -> int:
        """Number of classes (``classes.txt``, else the largest label + 1; 0 when unlabelled)."""
        return len(self.classes)

    def guard(self, skip: bool) -> None:
        """``DATASET.SKIP_BAD_IMAGES``: raise on an undecodable image, or skip it and count it in :attr:`skipped`."""
        self.skipped = skip_counter(bool(skip))

    def configure(self, *, world_size: int, rank: int, batch_size: int, seed: int, num_workers: int) -> None:
        """Fix the layout (see the class docstring); one sentence when the shards cannot feed it."""
        workers = max(1, int(num_workers))
        streams = world_size * workers
        if len(self.paths) < streams:
            raise ValueError(
                f"DATASET.WDS_MODE stream gives each of the {streams} streams (world size {world_size} x "
                f"{workers} loader worker(s)) its own shards, but '{self.root}' has {len(self.paths)} {self.split} "
                "shard(s); write more shards, lower DATASET.NUM_WORKERS, or use DATASET.WDS_MODE index.")
        per_stream = int(self.counts.sum()) // (streams * batch_size)
        if per_stream < 1:
            raise ValueError(
                f"the {int(self.counts.sum())} {self.split} samples of '{self.root}' are fewer than one batch of "
                f"{batch_size} for each of the {streams} streams; lower SOLVER.BATCH_SIZE or DATASET.NUM_WORKERS.")
        self.layout = {"world_size": int(world_size), "rank": int(rank), "batch": int(batch_size),
                       "seed": int(seed), "workers": workers, "streams": streams, "batches": per_stream}

    @property
    def steps_per_epoch(self) -> int:
        """Loader batches per rank and epoch: ``q·W``."""
        lay = self._layout()
        return lay["batches"] * lay["workers"]

    def set_position(self, epoch: int, start_step: int) -> None:
        """Start the next pass over the loader at ``start_step`` of ``epoch`` (shared with the worker processes)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start step {start_step} is outside [0, {self.steps_per_epoch}] for this epoch; resume "
                             "from a checkpoint of the same run.")
        self._epoch.value, self._start_step.value = int(epoch), int(start_step)

    def _layout(self) -> dict[str, int]:
        if self.layout is None:
            raise RuntimeError("WdsStream.configure(...) must be called before the stream is read (build the loader "
                               "with mdistiller.engine.data.build_train_loader).")
        return self.layout

    def __len__(self) -> int:
        return self.steps_per_epoch * self._layout()["batch"]

    def shards_of(self, epoch: int, stream: int) -> list[str]:
        """The shard files stream ``stream`` reads in ``epoch``, in order."""
        lay = self._layout()
        order = np.random.default_rng([lay["seed"], epoch]).permutation(len(self.paths))
        return [self.paths[i] for i in order[stream::lay["streams"]]]

    def raw_samples(self, epoch: int, stream: int) -> Iterator[dict[str, Any]]:
        """The stream's undecoded samples (``webdataset`` dicts), endless: its shards are read in turn, and again from
        the first when they run out. Each pass goes through its own shuffle buffer (seeded by ``(seed, epoch, stream,
        pass)``), which it empties before the next pass begins, so the first pass yields each sample once."""
        import webdataset as wds

        paths = self.shards_of(epoch, stream)
        seed = self._layout()["seed"]
        for n_pass in itertools.count():
            # fresh dicts, made one at a time: webdataset stores each opened file in its dict, so a kept list would
            # keep every shard of the pass open (memory and descriptors growing with the number of shards)
            samples = wds.tarfile_to_samples(handler=wds.reraise_exception)({"url": p} for p in paths)
            if self.shuffle_buffer > 1:
                rng = random.Random(sample_seed(seed, epoch, stream, n_pass, 0x5EED))
                samples = wds.shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples)
            n = 0
            for n, sample in enumerate(samples, 1):  # noqa: B007
                yield sample
            if n == 0:
                raise ValueError(f"the wds shards {', '.join(paths[:3])} hold no samples; "
                                 "rewrite them or remove them from DATASET.ROOT.")

    def _item(self, sample: dict[str, Any], seed: int) -> tuple[torch.Tensor, int]:
        name = f"'{sample.get('__url__')}' sample '{sample.get('__key__')}'"
        data = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
        if data is None:
            raise OSError(f"sample {name} has no .jpg/.jpeg/.png member")
        label = int(sample[LABEL_EXT].decode("ascii").strip()) if LABEL_EXT in sample else -1
        image = decode_rgb(data, name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        lay = self._layout()
        info = get_worker_info()
        worker = info.id if info is not None else 0
        epoch, start = int(self._epoch.value), int(self._start_step.value)
        role = (worker + start) % lay["workers"]
        stream = lay["rank"] * lay["workers"] + role
        done = max(0, math.ceil((start - role) / lay["workers"]))  # batches this role gave before the resume point
        raw = self.raw_samples(epoch, stream)
        b = lay["batch"]
        for _ in range(done * b):  # read past without decoding
            next(raw)
        j = done * b
        while j < lay["batches"] * b:
            sample = next(raw)
            try:
                item = self._item(sample, sample_seed(lay["seed"], epoch, stream, j))
            except DECODE_ERRORS as err:
                handle_bad_image(f"'{sample.get('__url__')}' sample '{sample.get('__key__')}'", err, self.skipped)
                continue
            j += 1
            yield item

    def __repr__(self) -> str:
        return (f"WdsStream(root='{self.root}', split={self.split!r}, shards={len(self.paths)}, "
                f"images={int(self.counts.sum())}, shuffle_buffer={self.shuffle_buffer})")
