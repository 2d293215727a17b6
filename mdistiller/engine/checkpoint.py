"""Atomic checkpoints, compatibility checks and RNG capture.

A checkpoint is a plain dict written by rank 0 only (call :func:`barrier` afterwards if other ranks read it). Keep its
content to tensors, numbers, strings and plain containers (lists, tuples, dicts), e.g. the config as its YAML dump:
:func:`load_checkpoint` then loads with ``weights_only=True`` and never runs arbitrary pickled code. The RNG states of
:func:`rng_state` follow that rule too. Suggested layout for the trainer::

    {"meta": {"distiller": ..., "student": ..., "teacher": ..., "params": param_shapes(trainable)},
     "model": trainable_state_dict, "optimizer": ..., "scheduler": ..., "scaler": ..., "sampler": ...,
     "epoch": ..., "step": ..., "rng": [rng_state() of every rank], "config": cfg.dump(), "git": ...}

The frozen teacher never goes in: :func:`assert_no_teacher` guards that.

Every checkpoint carries a content checksum (:func:`state_checksum`, verified by :func:`load_checkpoint`), so bytes
flipped on disk are reported instead of loaded; ``save_checkpoint(..., keep_previous=True)`` keeps the checkpoint it
replaces as ``prev.pth`` next to it. A failed write (disk full, I/O error) raises :class:`CheckpointWriteError` with
one sentence and leaves the previous file intact.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import random
import re
import shutil
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdistiller.config import flatten
from mdistiller.fileio import atomic_write

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointWriteError",
    "state_checksum",
    "nonfinite_tensors",
    "previous_path",
    "clean_stale_temps",
    "atomic_save",
    "atomic_write_text",
    "save_checkpoint",
    "write_failure",
    "load_checkpoint",
    "param_shapes",
    "check_compatible",
    "find_teacher_keys",
    "assert_no_teacher",
    "rng_state",
    "set_rng_state",
    "seed_everything",
]

_FORMAT_KEY = "__mdistiller_checkpoint__"
_FORMAT_VERSION = 1
_CHECKSUM_KEY = "__checksum__"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, or does not belong to this run."""

    exit_code = 1


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint that this run's configuration may not resume (a usage error: exit code 2)."""

    exit_code = 2


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (disk full, I/O error); the previous checkpoint is intact."""


def _atomic_write(path: str | os.PathLike[str], write: Any) -> Path:
    """``write(f)`` into a binary file object with :func:`mdistiller.fileio.atomic_write`'s guarantees."""

    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    return atomic_write(path, to_file)


def _write_payload(obj: Any, f: Any) -> None:
    """The bytes of a checkpoint (``torch.save``); one function so tests can make it fail like a full disk."""
    torch.save(obj, f)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically.

    The bytes go to a temporary file in the same directory, are fsync'ed, then renamed over ``path`` with
    ``os.replace``; if anything fails (or the process dies) ``path`` keeps its previous content and the temporary file
    is removed (a hard kill may leave a hidden ``.<name>.*.tmp`` behind, never a partial ``path``).
    """
    return _atomic_write(path, lambda f: _write_payload(obj, f))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (same guarantees as :func:`atomic_save`)."""
    return _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(repr(k).encode() + b":")
            _feed(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, list | tuple):
        h.update(b"[")
        for v in obj:
            _feed(h, v)
        h.update(b"]")
    else:
        h.update(repr(obj).encode() + b";")


def state_checksum(state: Mapping[str, Any]) -> str:
    """A BLAKE2b digest of a checkpoint's whole content (every tensor's bytes, dtype and shape; every other value's
    ``repr``), independent of dict order and of tuple-vs-list round trips."""
    h = hashlib.blake2b(digest_size=16)
    _feed(h, {k: v for k, v in state.items() if k not in (_CHECKSUM_KEY, _FORMAT_KEY)})
    return h.hexdigest()


def nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """Names (dotted paths) of the floating-point tensors in ``obj`` (nested dicts/lists) holding NaN or inf."""
    out: list[str] = []
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel() and not bool(torch.isfinite(obj.detach()).all()):
            out.append(prefix.rstrip("."))
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            out += nonfinite_tensors(v, f"{prefix}{k}.")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            out += nonfinite_tensors(v, f"{prefix}{i}.")
    return out


def previous_path(path: str | os.PathLike[str]) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint it replaced: ``last.pth`` → ``prev.pth``, ``x.pth`` →
    ``x.prev.pth``."""
    path = Path(path)
    return path.with_name("prev.pth" if path.name == "last.pth" else f"{path.stem}.prev{path.suffix}")


def clean_stale_temps(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the hidden ``.<name>.*.tmp`` files a killed atomic write left in ``directory``; returns them.
    Call only while no other process writes there (the run-directory lock)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (itself, or in its cause/context chain: torch's zip writer wraps it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _keep_previous(path: Path) -> None:
    """Hard-link (or copy) ``path`` to its :func:`previous_path` atomically; ``path`` itself is never absent."""
    prev = previous_path(path)
    tmp = prev.with_name(f".{prev.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copy2(path, tmp)
    os.replace(tmp, prev)


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any], keep_previous: bool = False) -> Path:
    """Write a training checkpoint atomically, with its checksum; call on the main process only.

    ``keep_previous``: first keep the file being replaced as :func:`previous_path` (``prev.pth``).

    Raises:
        CheckpointWriteError: the disk is full or another I/O error stopped the write (one sentence; the previous
            checkpoint is intact).
    """
    if _FORMAT_KEY in state or _CHECKSUM_KEY in state:
        raise ValueError(f"checkpoint state may not use the reserved keys {_FORMAT_KEY!r}, {_CHECKSUM_KEY!r}.")
    path = Path(path)
    payload = {_FORMAT_KEY: _FORMAT_VERSION, **state, _CHECKSUM_KEY: state_checksum(state)}
    try:
        if keep_previous and path.is_file():
            _keep_previous(path)
        return atomic_save(payload, path)
    except (OSError, RuntimeError) as e:
        kept = f"the previous checkpoint {path} is intact" if path.is_file() else "no earlier checkpoint exists"
        failure = write_failure(path, e, kept)
        if failure is None:
            raise
        raise failure from None


def write_failure(path: str | os.PathLike[str], exc: BaseException, kept: str) -> CheckpointWriteError | None:
    """The one-sentence :class:`CheckpointWriteError` for a write of ``path`` that failed with ``exc``, or ``None``
    when ``exc`` is not a write failure. Recognised: an ``OSError`` in the exception chain (torch's zip writer wraps
    it in a ``RuntimeError``), a ``RuntimeError`` about the write, and safetensors' ``(os error N)`` messages.
    ``kept`` says what is intact (e.g. "the previous checkpoint … is intact"); a full disk or quota reads
    "no space left on device while writing PATH; KEPT; free space and rerun the same command."
    """
    os_err = _os_error(exc)
    code = os_err.errno if os_err is not None else None
    text = str(exc).strip()
    if os_err is None:
        found = re.search(r"\(os error (\d+)\)", text)  # safetensors (Rust) names the OS error in its message
        if found:
            code = int(found.group(1))
        elif not (isinstance(exc, RuntimeError) and "write" in text.lower()):
            return None
    if code in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointWriteError(
            f"no space left on device while writing {path}; {kept}; free space and rerun the same command.")
    if os_err is not None and os_err.strerror:
        why = os_err.strerror
    else:
        why = os.strerror(code) if code else (text.splitlines()[0] if text else type(exc).__name__)
    return CheckpointWriteError(
        f"I/O error while writing {path} ({why}); {kept}; fix the disk or the path and rerun the same command.")


def _fallback(path: Path) -> str:
    prev = previous_path(path)
    if prev.is_file() and prev != path:
        return f"resume from the previous one with --resume {prev}, or start over with --resume none --overwrite"
    return "no older checkpoint exists: start over with --resume none --overwrite"


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu", weights_only: bool = True) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (or any dict saved with ``torch.save``) and verify its
    checksum when it has one.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt (checksum mismatch included), or holds something
            other than a dict; the sentence names the fallback (``prev.pth`` when it exists).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path or start without resuming.")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if weights_only and "weights_only" in str(e).lower() and zipfile.is_zipfile(path):
            raise CheckpointError(
                f"checkpoint {path} holds objects other than tensors and plain containers; "
                "if you trust the file, load it with weights_only=False."
            ) from e
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}); {_fallback(path)}."
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, KeyError) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            f"); {_fallback(path)}."
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a dict; pass a checkpoint written by the trainer."
        )
    expected = obj.pop(_CHECKSUM_KEY, None)
    obj.pop(_FORMAT_KEY, None)
    if expected is not None and state_checksum(obj) != expected:
        raise CheckpointError(f"checkpoint {path} fails its checksum (its bytes changed on disk); {_fallback(path)}.")
    return obj


def param_shapes(named_params: Iterable[tuple[str, torch.Tensor]] | torch.nn.Module) -> dict[str, list[int]]:
    """``{name: shape}`` of the trainable (``requires_grad``) parameters, for checkpoint metadata."""
    items = named_params.named_parameters() if isinstance(named_params, torch.nn.Module) else named_params
    return {n: list(p.shape) for n, p in items if p.requires_grad}


def check_compatible(
    state: Mapping[str, Any],
    expected: Mapping[str, Any],
    path: str | os.PathLike[str] | None = None,
    key: str = "meta",
    max_report: int = 5,
) -> None:
    """Check that a checkpoint's metadata ``state[key]`` matches ``expected`` (nested dicts compared leaf by leaf).

    Every leaf of ``expected`` must be present with an equal value (shapes may be lists, tuples or ``torch.Size``);
    leaves only the checkpoint has are reported as unexpected when ``expected`` has a sibling dict of the same name
    (e.g. a parameter the current model lacks).

    Raises:
        CheckpointError: naming the file and the first ``max_report`` mismatching keys.
    """
    where = f"checkpoint {path}" if path is not None else "checkpoint"
    meta = state.get(key)
    if not isinstance(meta, Mapping):
        raise CheckpointMismatchError(
            f"{where} has no '{key}' metadata; it was not written by this trainer, start a new run.")
    have, want = flatten(meta), flatten(expected)
    problems: list[str] = []
    for k, v in want.items():
        if k not in have:
            problems.append(f"{k} missing (expected {v!r})")
        elif have[k] != v:
            problems.append(f"{k}: checkpoint {have[k]!r} vs run {v!r}")
    groups = {k for k, v in expected.items() if isinstance(v, Mapping)}
    problems += [
        f"{k} unexpected (checkpoint {have[k]!r})" for k in have if k not in want and k.split(".", 1)[0] in groups
    ]
    if problems:
        shown = "; ".join(problems[:max_report])
        if len(problems) > max_report:
            shown += f"; and {len(problems) - max_report} more"
        raise CheckpointMismatchError(
            f"{where} does not match this run ({shown}); resume with the config that wrote it or use a new run dir."
        )


def _strip(name: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def _tensor_keys(d: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            out += _tensor_keys(v, f"{prefix}{k}.")
        elif isinstance(v, torch.Tensor):
            out.append(f"{prefix}{k}")
    return out


def find_teacher_keys(
    state_dict: Mapping[str, Any], teacher_param_names: Iterable[str], prefixes: Iterable[str] = ("teacher.",)
) -> list[str]:
    """Keys of ``state_dict`` (nested dicts walked, ``module.``/``_orig_mod.`` ignored) that belong to the teacher.

    A key is a teacher key when, after stripping wrapper prefixes, it equals one of ``teacher_param_names`` (the
    teacher's names *as they appear in the saved module*, e.g. ``teacher.blocks.0.norm1.weight``) or starts with one of
    ``prefixes``; a nested key also matches by its part after the top-level entry (``model.teacher.x`` → ``teacher.x``).
    """
    names = {_strip(n) for n in teacher_param_names}
    pre = tuple(prefixes)
    hits = []
    for full in _tensor_keys(state_dict):
        cands = {_strip(full)}
        if "." in full:
            cands.add(_strip(full.split(".", 1)[1]))
        if any(c in names or c.startswith(pre) for c in cands):
            hits.append(full)
    return hits


def assert_no_teacher(
    state_dict: Mapping[str, Any], teacher_param_names: Iterable[str], prefixes: Iterable[str] = ("teacher.",)
) -> None:
    """Raise ``CheckpointError`` if any teacher tensor is about to be saved (see :func:`find_teacher_keys`)."""
    hits = find_teacher_keys(state_dict, teacher_param_names, prefixes)
    if hits:
        raise CheckpointError(
            f"{len(hits)} teacher tensors (e.g. {hits[:3]}) are in the checkpoint state; save only the trainable "
            "module's state_dict, never the frozen teacher."
        )


def rng_state() -> dict[str, Any]:
    """This process's RNG states: python ``random``, numpy's global RNG, torch CPU and (if present) every CUDA device.

    Everything is a tensor, number, string or tuple/list, so the result loads with ``weights_only=True``. RNG states
    are per rank: gather them (``all_gather_object``) to resume each rank exactly.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": [int(x) for x in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore states captured by :func:`rng_state` (entries that are absent are left alone).

    CUDA states are restored only when the number of visible devices matches the capture.
    """
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state((s["kind"], np.asarray(s["keys"], dtype=np.uint32), s["pos"], s["has_gauss"], s["gauss"]))
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (CPU and CUDA); pass ``base_seed + rank`` for per-rank streams."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
