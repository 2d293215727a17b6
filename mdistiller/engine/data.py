"""Training data plumbing: per-sample seeded augmentation and the resumable, DDP-aligned loader."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from .sampler import ResumableDistributedSampler, StreamPosition

__all__ = ["SeededSamples", "EpochKeySampler", "DeviceDecodedBatches", "build_train_loader"]


class SeededSamples(Dataset):
    """Makes augmentation a pure function of ``(seed, epoch, index)``.

    Items are requested with a key ``epoch * len(dataset) + index`` (see :class:`EpochKeySampler`); before the
    wrapped ``__getitem__`` runs, torch's RNG is forked and seeded from ``(seed, epoch, index)``. The random crop and
    flip of a sample therefore do not depend on the worker that loads it, on the world size, or on where a resumed
    run restarted — which is what makes a resumed run match an uninterrupted one exactly.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.n = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int) -> Any:
        epoch, index = divmod(int(key), self.n)
        sample_seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.dataset[index]


class EpochKeySampler(Sampler[int]):
    """Wraps a :class:`ResumableDistributedSampler` and yields ``epoch * n + index`` keys for :class:`SeededSamples`."""

    def __init__(self, sampler: ResumableDistributedSampler) -> None:
        self.sampler = sampler

    def __iter__(self):
        offset = self.sampler.epoch * self.sampler.dataset_len
        return (offset + i for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class DeviceDecodedBatches:
    """Turns a loader of encoded batches into ``(images on the device, labels)`` batches (``DATASET.DECODE device``).

    ``loader`` yields what :func:`~mdistiller.dataset.device_decode.collate_encoded` builds: ``(byte tensors,
    (B, 5) params, labels)`` for training augmentation, whose crops/flips were drawn per sample in the workers, or
    ``(byte tensors, labels)`` for the evaluation geometry.  ``transform`` is a
    :class:`~mdistiller.dataset.device_decode.DeviceDecodeTransform`; it decodes on its device and applies the
    given params, drawing nothing, so the images stay a pure function of the sample keys.
    """

    def __init__(self, loader: DataLoader, transform: Callable[..., torch.Tensor]) -> None:
        self.loader = loader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            if len(batch) == 3:
                data, params, labels = batch
                yield self.transform(data, params=params), labels
            else:
                data, labels = batch
                yield self.transform(data), labels


def build_train_loader(dataset: Dataset, *, world_size: int, rank: int, batch_size: int, seed: int,
                       num_workers: int, pin_memory: bool, persistent_workers: bool, prefetch_factor: int,
                       collate_fn: Callable[[list[Any]], Any] | None = None, worker_start: str = "",
                       ) -> tuple[DataLoader, ResumableDistributedSampler | StreamPosition]:
    """A loader whose global batch at step t is the same set of samples for any world size (same global batch).

    ``collate_fn`` replaces the default collate (e.g. ``collate_encoded`` for device decoding); ``worker_start``
    names the workers' start method (``""``: the platform default). A streaming dataset (an ``IterableDataset``
    with ``configure``, e.g. :class:`~mdistiller.dataset.wds.WdsStream`) orders its own samples: it gets a
    :class:`~.sampler.StreamPosition` instead of the sampler, with the same ``set_epoch`` / ``steps_per_epoch``.
    """
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs = {"persistent_workers": persistent_workers, "prefetch_factor": prefetch_factor}
        if worker_start:
            import multiprocessing

            kwargs["multiprocessing_context"] = multiprocessing.get_context(worker_start)
    if isinstance(dataset, IterableDataset):
        position = StreamPosition(dataset, world_size, rank, batch_size, seed=seed, num_workers=num_workers)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                            drop_last=True, collate_fn=collate_fn, **kwargs)
        return loader, position
    sampler = ResumableDistributedSampler(len(dataset), world_size, rank, batch_size, shuffle=True, seed=seed,
                                          drop_last=True)
    loader = DataLoader(SeededSamples(dataset, seed), batch_size=batch_size, sampler=EpochKeySampler(sampler),
                        num_workers=num_workers, pin_memory=pin_memory, drop_last=False, collate_fn=collate_fn,
                        **kwargs)
    return loader, sampler
