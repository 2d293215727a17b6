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

__all__ = ["DECODE_ERRORS", "BadImageError", "GuardedImages", "bad_image_sentence", "guard_images", "handle_bad_image",
           "skip_counter"]

DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError)
"""What reading or decoding one image may raise (PIL's ``UnidentifiedImageError`` is an ``OSError``)."""
try:  # PIL's DecompressionBombError is not an OSError
    from PIL import Image as _Image

    DECODE_ERRORS = (*DECODE_ERRORS, _Image.DecompressionBombError)
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


def skip_counter(skip: bool) -> Any:
    """A counter of skipped images in shared memory (``None`` when ``skip`` is off), updated by loader workers too:
    a spawn-context value reaches workers started any way (fork inherits it, spawn/forkserver pickle it while
    starting); a fork-context one cannot reach spawn/forkserver workers."""
    return multiprocessing.get_context("spawn").Value("i", 0) if skip else None


def handle_bad_image(name: str, err: BaseException, counter: Any, what: str = "training image") -> None:
    """The one policy for an image ``name`` that raised ``err`` while read or decoded: raise :class:`BadImageError`
    (``counter`` is ``None``: ``DATASET.SKIP_BAD_IMAGES False``), or count it in ``counter`` and warn. ``what`` names
    the kind of image in the sentence."""
    root = err.__cause__ if isinstance(err.__cause__, Exception) else err  # the reader's own error
    why = f"{type(root).__name__}: {str(root).splitlines()[0] if str(root) else ''}".rstrip(": ")
    if counter is None:
        raise BadImageError(
            f"{what} {name} cannot be decoded ({why}); replace or delete it, or set "
            "DATASET.SKIP_BAD_IMAGES True to skip undecodable images."
        ) from None
    with counter.get_lock():
        counter.value += 1
    warnings.warn(f"skipped undecodable {what} {name} ({why}).", stacklevel=3)


def guard_images(dataset: Any, skip: bool) -> Any:
    """The training dataset under the ``DATASET.SKIP_BAD_IMAGES`` policy: a map-style dataset wrapped in
    :class:`GuardedImages`; a stream that applies the policy itself (it has ``guard(skip)``) told to."""
    if hasattr(dataset, "guard"):
        dataset.guard(skip)
        return dataset
    return GuardedImages(dataset, skip=skip)


class GuardedImages(Dataset):
    """See the module doc. A file is named by ``dataset.sample_name(index)`` or by ``dataset.samples``
    (``[(path, label), ...]``); otherwise the index is named. ``what`` names the images in the sentences (the held-out
    batch passes "held-out (val) image")."""

    def __init__(self, dataset: Dataset, skip: bool = False, what: str = "training image") -> None:
        self.dataset = dataset
        self.skip = bool(skip)
        self.what = what
        self.skipped = skip_counter(self.skip)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:  # num_classes, classes, samples, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _name(self, index: int) -> str:
        if hasattr(self.dataset, "sample_name"):
            return self.dataset.sample_name(index)
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
            except DECODE_ERRORS as e:
                handle_bad_image(self._name(i), e, self.skipped, self.what)
        raise BadImageError(f"64 {self.what}s in a row from #{index} cannot be decoded; check the dataset files.")
