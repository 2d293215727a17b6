"""Undecodable training images: stop with one sentence naming the file, or skip and count them.

:class:`GuardedImages` wraps a training dataset. A sample whose image cannot be read or decoded raises
:class:`BadImageError` naming the file (``skip=False``, the default of ``DATASET.SKIP_BAD_IMAGES``), or is replaced by
the next decodable sample of the dataset and counted in :attr:`GuardedImages.skipped` (``skip=True``), a counter in
shared memory that the loader's worker processes update too. The replacement is a pure function of the index, so
resumed runs stay exact. The trainer's held-out batch (``val/``) is read through it as well, with the same setting.
"""

from __future__ import annotations

import multiprocessing
import re
import warnings
from typing import Any

from torch.utils.data import Dataset

__all__ = ["BadImageError", "GuardedImages", "bad_image_sentence"]

_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError)
try:  # PIL's own error types (UnidentifiedImageError is an OSError; DecompressionBombError is not)
    from PIL import Image as _Image

    _DECODE_ERRORS = (*_DECODE_ERRORS, _Image.DecompressionBombError)
except ImportError:  # pragma: no cover
    pass


class BadImageError(RuntimeError):
    """A training image that cannot be decoded (one sentence naming the file)."""


def bad_image_sentence(exc: BaseException) -> str:
    """The one sentence of a :class:`BadImageError` (or of a reader's ``OSError``, e.g. a probe's test image), also
    when a loader worker re-raised it with the worker's traceback in the message: that traceback's last
    ``SomeError: message`` line gives the message."""
    text = str(exc).strip()
    found = re.findall(r"BadImageError: (.+)", text) or re.findall(r"(?m)^[\w.]*(?:Error|Exception): (.+)$", text)
    return (found[-1] if found else text.splitlines()[-1] if text else type(exc).__name__).strip()


class GuardedImages(Dataset):
    """See the module doc. ``dataset`` needs ``samples`` (``[(path, label), ...]``) to name a file; otherwise the
    index is named. ``what`` names the images in the sentences (the held-out batch passes "held-out (val) image")."""

    def __init__(self, dataset: Dataset, skip: bool = False, what: str = "training image") -> None:
        self.dataset = dataset
        self.skip = bool(skip)
        self.what = what
        # a spawn-context counter is shared with workers started any way (fork inherits it, spawn/forkserver pickle
        # it while starting); a fork-context one cannot reach spawn/forkserver workers
        self.skipped = multiprocessing.get_context("spawn").Value("i", 0) if skip else None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # num_classes, classes, samples, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _name(self, index: int) -> str:
        samples = getattr(self.dataset, "samples", None)
        try:
            return f"'{samples[index][0]}'" if samples is not None else f"#{index}"
        except (IndexError, TypeError, KeyError):
            return f"#{index}"

    def __getitem__(self, index: int) -> Any:
        n = len(self)
        for attempt in range(min(n, 64)):
            i = (index + attempt) % n
            try:
                return self.dataset[i]
            except _DECODE_ERRORS as e:
                root = e.__cause__ if isinstance(e.__cause__, Exception) else e  # the reader's own error
                why = f"{type(root).__name__}: {str(root).splitlines()[0] if str(root) else ''}".rstrip(": ")
                if not self.skip:
                    raise BadImageError(
                        f"{self.what} {self._name(i)} cannot be decoded ({why}); replace or delete it, or set "
                        "DATASET.SKIP_BAD_IMAGES True to skip undecodable images."
                    ) from None
                with self.skipped.get_lock():  # type: ignore[union-attr]
                    self.skipped.value += 1  # type: ignore[union-attr]
                warnings.warn(f"skipped undecodable {self.what} {self._name(i)} ({why}).", stacklevel=2)
        raise BadImageError(f"64 {self.what}s in a row from #{index} cannot be decoded; check the dataset files.")
