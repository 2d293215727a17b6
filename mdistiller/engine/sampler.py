"""A distributed sampler that shuffles per epoch, resumes mid-epoch exactly, and is world-size invariant.

Layout of one epoch (``N`` samples, ``W`` ranks, per-rank batch ``b``, global batch ``G = W·b``):

1. ``order`` = a permutation of ``range(N)`` that depends only on ``(seed, epoch)`` (identity when ``shuffle=False``);
2. ``order`` is cut into global batches of ``G``; rank ``r`` takes the slice ``[r·b, (r+1)·b)`` of each one;
3. the tail (``N mod G`` samples) is dropped with ``drop_last=True``; otherwise it is padded by wrapping around
   ``order`` to a multiple of ``W`` and split evenly, so every rank still gets the same number of samples.

Hence the samples of global step ``t`` are the same set whatever ``W`` is, as long as ``G`` is the same: a 2-process
run with batch ``b`` sees exactly the batches of a 1-process run with batch ``2b``. Use the sampler with
``DataLoader(dataset, batch_size=b, sampler=sampler)`` (the same ``b``) so loader batches line up with global batches.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler

__all__ = ["ResumableDistributedSampler", "StreamPosition"]


class ResumableDistributedSampler(Sampler[int]):
    """Per-rank index stream of a global-batch-aligned, epoch-seeded permutation (see the module docstring).

    Call :meth:`set_epoch` at the start of every epoch (it changes the shuffle and resets the start to 0), then, when
    resuming in the middle of an epoch, :meth:`set_start` with the number of this rank's samples already consumed
    (``steps_done_in_epoch * batch_size``).

    Args:
        dataset_len: number of samples in the dataset.
        num_replicas: world size ``W``.
        rank: global rank of this process.
        batch_size: per-rank batch ``b`` (the one given to the DataLoader); the global batch is ``W·b``.
        shuffle: shuffle with a permutation seeded by ``(seed, epoch)``.
        seed: base seed; must be the same on all ranks.
        drop_last: drop the incomplete last global batch (otherwise pad it by wrapping around).
    """

    def __init__(
        self,
        dataset_len: int,
        num_replicas: int,
        rank: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        if dataset_len < 1:
            raise ValueError(f"dataset_len={dataset_len}: the dataset is empty; check the data folder.")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas}); pass the global rank and the world size.")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1; fix SOLVER.BATCH_SIZE.")
        if seed < 0:
            raise ValueError(f"seed={seed} must be non-negative; pass a seed >= 0.")
        self.dataset_len = int(dataset_len)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        g = self.global_batch_size
        self._full_batches = self.dataset_len // g
        tail = self.dataset_len - self._full_batches * g
        self._tail_per_rank = 0 if (drop_last or tail == 0) else math.ceil(tail / self.num_replicas)
        if self.num_samples == 0:
            raise ValueError(
                f"the dataset has {self.dataset_len} samples, fewer than one global batch of {g} "
                f"({self.num_replicas} ranks x {self.batch_size}); lower the batch size or use drop_last=False."
            )
        self.epoch = 0
        self.start = 0
        self._iterated = False

    @property
    def global_batch_size(self) -> int:
        """``num_replicas * batch_size``."""
        return self.num_replicas * self.batch_size

    @property
    def num_samples(self) -> int:
        """Samples this rank yields over a whole epoch (ignoring :attr:`start`); equal on every rank."""
        return self._full_batches * self.batch_size + self._tail_per_rank

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one full epoch (loader batches per rank); use it for the LR schedule length."""
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and reset the start (``start`` > 0 resumes inside that epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be non-negative; pass the 0-based epoch index.")
        self.epoch = int(epoch)
        self._iterated = False
        self.set_start(start)

    def set_start(self, index: int) -> None:
        """Skip this rank's first ``index`` samples of the current epoch (call after :meth:`set_epoch`)."""
        if not 0 <= index <= self.num_samples:
            raise ValueError(
                f"start index {index} is outside [0, {self.num_samples}] for this rank's epoch; "
                "pass steps_done_in_epoch * batch_size from the checkpoint of the same run."
            )
        self.start = int(index)
        self._iterated = False

    def global_order(self) -> np.ndarray:
        """The epoch's permutation of ``range(dataset_len)``, a pure function of ``(seed, epoch)``."""
        if not self.shuffle:
            return np.arange(self.dataset_len, dtype=np.int64)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.dataset_len).astype(np.int64)

    def rank_indices(self) -> np.ndarray:
        """This rank's whole-epoch stream (before :attr:`start` is applied)."""
        order = self.global_order()
        w, b, r = self.num_replicas, self.batch_size, self.rank
        nfull = self._full_batches
        body = order[: nfull * w * b].reshape(nfull, w, b)[:, r, :].reshape(-1)
        if self._tail_per_rank:
            k = self._tail_per_rank
            tail = order[nfull * w * b :]
            pad = k * w - len(tail)
            if pad:
                tail = np.concatenate([tail, np.resize(order, pad)])
            body = np.concatenate([body, tail[r * k : (r + 1) * k]])
        return body

    def __iter__(self) -> Iterator[int]:
        if self._iterated and self.shuffle:
            warnings.warn(
                f"ResumableDistributedSampler iterated twice in epoch {self.epoch}; call set_epoch(epoch) at the "
                "start of every epoch or each epoch replays the same order.",
                RuntimeWarning,
                stacklevel=2,
            )
        self._iterated = True
        return iter(self.rank_indices()[self.start :].tolist())

    def __len__(self) -> int:
        return self.num_samples - self.start

    def state_dict(self) -> dict[str, Any]:
        """Position in the data stream: epoch, start and the layout it refers to."""
        keys = ("epoch", "start", "seed", "num_replicas", "batch_size", "dataset_len")
        return {key: getattr(self, key) for key in keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position; a different world size with the same global batch is converted by whole steps."""
        if state["dataset_len"] != self.dataset_len or state["seed"] != self.seed:
            raise ValueError(
                f"sampler state is for {state['dataset_len']} samples / seed {state['seed']} but this run has "
                f"{self.dataset_len} / {self.seed}; resume with the same dataset and seed."
            )
        saved_global = state["num_replicas"] * state["batch_size"]
        if saved_global != self.global_batch_size:
            raise ValueError(
                f"sampler state was saved with a global batch of {saved_global} but this run uses "
                f"{self.global_batch_size}; resume with the same global batch size."
            )
        steps, rest = divmod(int(state["start"]), int(state["batch_size"]))
        if rest and state["batch_size"] != self.batch_size:
            raise ValueError(
                f"sampler start {state['start']} is not a whole number of steps, so it cannot move to another world "
                "size; resume with the original number of processes."
            )
        self.set_epoch(int(state["epoch"]), steps * self.batch_size + rest)


class StreamPosition:
    """The sampler's place for a streaming dataset (``DATASET.WDS_MODE stream``): the same ``set_epoch`` /
    ``steps_per_epoch`` interface, with the order kept by the stream itself.

    ``dataset`` provides ``configure(world_size=, rank=, batch_size=, seed=, num_workers=)``, ``steps_per_epoch``
    and ``set_position(epoch, start_step)`` (:class:`mdistiller.dataset.wds.WdsStream`); the position reaches its
    loader workers through shared memory when the next pass over the loader starts.
    """

    def __init__(self, dataset: Any, num_replicas: int, rank: int, batch_size: int, seed: int = 0,
                 num_workers: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1; fix SOLVER.BATCH_SIZE.")
        dataset.configure(world_size=num_replicas, rank=rank, batch_size=batch_size, seed=seed,
                          num_workers=num_workers)
        self.dataset = dataset
        self.num_replicas, self.rank, self.batch_size = int(num_replicas), int(rank), int(batch_size)
        self.seed, self.num_workers = int(seed), int(num_workers)
        self.epoch = 0
        self.start = 0

    @property
    def steps_per_epoch(self) -> int:
        """Loader batches per rank and epoch (equal on every rank)."""
        return int(self.dataset.steps_per_epoch)

    @property
    def num_samples(self) -> int:
        """Samples per rank and epoch: ``steps_per_epoch × batch_size``."""
        return self.steps_per_epoch * self.batch_size

    @property
    def dataset_len(self) -> int:
        """The images in the stream (all shards), as :attr:`ResumableDistributedSampler.dataset_len`."""
        counts = getattr(self.dataset, "counts", None)
        return int(counts.sum()) if counts is not None else self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and skip this rank's first ``start`` samples (a whole number of batches)."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be non-negative; pass the 0-based epoch index.")
        steps, rest = divmod(int(start), self.batch_size)
        if rest:
            raise ValueError(f"start {start} is not a whole number of batches of {self.batch_size}; a stream resumes "
                             "at a step boundary.")
        self.dataset.set_position(int(epoch), steps)
        self.epoch, self.start = int(epoch), int(start)

    def __len__(self) -> int:
        return self.num_samples - self.start

    def state_dict(self) -> dict[str, Any]:
        """Position and the layout it refers to (the stream's order depends on all of it)."""
        keys = ("epoch", "start", "seed", "num_replicas", "batch_size", "num_workers")
        return {key: getattr(self, key) for key in keys}
