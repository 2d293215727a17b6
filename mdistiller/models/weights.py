"""Loading a weights file into a model strictly, and a weights file's identity.

``load_weights_file`` is what :func:`mdistiller.models.build_model` uses for a local ``.safetensors``/``.pth`` path:
every parameter and buffer of the model must come from the file (after timm's own checkpoint conversion, e.g. a
position-embedding resize), and every tensor of the file must be used; anything else is one sentence naming the first
missing/unexpected keys. ``strict=False`` (``DISTILLER.STRICT_WEIGHTS False``) allows a partial load: the missing
tensors keep their random initialisation and the sentence becomes a warning. A file holding NaN or inf is refused
whatever ``strict`` says, and a path that is missing or a directory is named as such (:func:`check_weights_path`).
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mdistiller.config import ConfigError

__all__ = ["WeightsError", "WeightsFileMissingError", "check_weights_path", "file_identity", "load_weights_file",
           "read_state_dict"]

_SHOW = 3  # keys named per problem


class WeightsError(ConfigError):
    """A weights file that cannot be read or does not fit the model (a configuration error: exit code 2)."""


class WeightsFileMissingError(WeightsError, FileNotFoundError):
    """A weights path that does not exist (also a ``FileNotFoundError``, for callers that catch that)."""


def check_weights_path(path: str | os.PathLike[str], what: str = "weights") -> Path:
    """``path`` when it is a file; else :class:`WeightsFileMissingError` (nothing there) or :class:`WeightsError`
    (a directory), each one sentence saying which."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{what} file '{path}' is a directory, not a weights file; point it at the .safetensors "
                           "or .pth file inside it.")
    if not path.is_file():
        raise WeightsFileMissingError(f"{what} file '{path}' does not exist; check the path.")
    return path


def _reader_reason(e: BaseException) -> str:
    """The reason of a reader failure without torch's preamble: a ``weights_only`` refusal carries the unpickler's
    own reason (``Unsupported operand 149``, ``Unsupported global: ...``) between a paragraph about torch 2.6's
    default and a documentation link; that reason is what the user needs."""
    text = str(e).strip()
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0].strip()
        first = reason.splitlines()[0].strip() if reason else ""
        return f"torch.load: {first}" if first else "torch.load refused it"
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def file_identity(path: str | os.PathLike[str], sample: int = 1 << 20) -> dict[str, Any]:
    """``{"size": bytes, "hash": hex}`` of a file: BLAKE2b over the size, the first and last ``sample`` bytes and 14
    evenly spaced ``sample``-byte blocks in between (the whole file when it is smaller than 16 samples). Reads at most
    16 MiB, so a multi-GB teacher costs milliseconds, and any replaced, re-exported or truncated file changes it."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=16)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= 16 * sample:
            h.update(f.read())
        else:
            for i in range(16):
                f.seek(round(i * (size - sample) / 15))
                h.update(f.read(sample))
    return {"size": size, "hash": h.hexdigest()}


def read_state_dict(path: str | os.PathLike[str], what: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or ``torch.save`` file (a ``state_dict``/``model``/``module`` entry of a
    training checkpoint is unwrapped). Raises :class:`WeightsError` with one sentence for anything unreadable."""
    path = check_weights_path(path, what)
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol warning would print before the sentence below
            warnings.simplefilter("ignore")
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                obj: Any = load_file(str(path), device="cpu")
            else:
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every reader failure becomes one sentence
        raise WeightsError(
            f"{what} file '{path}' cannot be read as a .safetensors or torch state_dict ({_reader_reason(e)}); "
            "pass a weights file saved with safetensors or torch.save(model.state_dict())."
        ) from None
    for key in ("state_dict", "model", "module", "state_dict_ema"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{what} file '{path}' holds no state_dict of tensors; pass a file saved with safetensors or "
            "torch.save(model.state_dict())."
        )
    return dict(obj)


def _filter_fn(model: nn.Module) -> Any:
    """timm's checkpoint conversion of the model's family (``checkpoint_filter_fn`` of its module), if any."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else "")


def _prefix_hint(unexpected: list[str], missing: list[str]) -> str:
    """`` (the file's keys carry the prefix 'foo.')`` when stripping one common prefix would fix the keys."""
    if not unexpected or not missing:
        return ""
    first = unexpected[0].split(".", 1)[0] + "."
    if all(k.startswith(first) for k in unexpected) and any(k[len(first):] in set(missing) for k in unexpected):
        return f" (the file's keys carry the prefix '{first}'; save the model's own state_dict)"
    return ""


def load_weights_file(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True,
                      what: str = "weights") -> nn.Module:
    """Load ``path`` into ``model`` (see the module doc); returns ``model``.

    Raises:
        WeightsError: unreadable file, a tensor of the wrong shape, or (``strict``) missing/unexpected keys.
    """
    path = Path(path)
    sd = read_state_dict(path, what)
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(
            f"{what} file '{path}' holds non-finite values (NaN or inf) in {len(bad)} tensor(s) ({_names(bad)}); the "
            "file is damaged or was saved from a diverged model: re-export or re-download it."
        )
    fn = _filter_fn(model)
    if fn is not None:
        try:
            sd = fn(sd, model)
        except Exception:  # noqa: BLE001 - the conversion is a convenience; the checks below still run
            pass
    own = model.state_dict()
    if getattr(model, "num_classes", None) == 0:  # a headless model: a classifier in the file is expected
        for k in [k for k in sd if k.split(".", 1)[0] in ("head", "fc") and k not in own]:
            sd.pop(k)
    wrong = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise WeightsError(
            f"{what} file '{path}' does not fit the model: {len(wrong)} tensor(s) have the wrong shape "
            f"({_names(wrong)}); pass weights of the same architecture or fix the *_KWARGS."
        )
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} model tensor(s) missing from the file ({_names(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected file tensor(s) ({_names(unexpected)})")
        detail = "; ".join(parts) + _prefix_hint(unexpected, missing)
        if strict:
            raise WeightsError(
                f"{what} file '{path}' does not match the model: {detail}; pass the right file, or set "
                "DISTILLER.STRICT_WEIGHTS False to load it partially (missing tensors keep their random init)."
            )
        warnings.warn(f"partial load of {what} file '{path}': {detail}; the missing tensors keep their random init.",
                      stacklevel=2)
    model.load_state_dict(sd, strict=False)
    return model
