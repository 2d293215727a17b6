"""Loading a weights file into a model strictly, and a weights file's identity.

``load_weights_file`` is what :func:`mdistiller.models.build_model` uses for a local ``.safetensors``/``.pth`` path:
every parameter and buffer of the model must come from the file (after timm's own checkpoint conversion, e.g. a
position-embedding resize), and every tensor of the file must be used; anything else is one sentence naming the first
missing/unexpected keys. ``strict=False`` (``DISTILLER.STRICT_WEIGHTS False``) allows a partial load: the missing
tensors keep their random initialisation and the sentence becomes a warning.
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

__all__ = ["WeightsError", "file_identity", "load_weights_file", "read_state_dict"]

_SHOW = 3  # keys named per problem


class WeightsError(ConfigError):
    """A weights file that cannot be read or does not fit the model (a configuration error: exit code 2)."""


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
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} file '{path}' does not exist; check the path.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every reader failure becomes one sentence
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"{what} file '{path}' cannot be read as a .safetensors or torch state_dict ({type(e).__name__}: {first}); "
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
