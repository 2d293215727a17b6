"""Run identity: a run is what its config says.

Two uses of one comparison, key by key over :func:`mdistiller.config.flatten`:

* **resume** (:func:`config_changes`, :func:`refusal`): the config of a resumed run is compared with the one its
  checkpoint was trained with. Keys of :data:`~mdistiller.config.RESUME_FREE_KEYS` (logging, workers, paths, names,
  device) may differ; a key of :data:`~mdistiller.config.RESUME_ALLOWABLE_KEYS` may differ when
  ``EXPERIMENT.RESUME_ALLOW_CHANGES`` lists it (the change is recorded with its step); every other difference is
  refused in one sentence naming each key as ``old → new``.
* **naming** (:func:`run_name`): without ``--run-dir`` or a command-line ``EXPERIMENT.NAME``, command-line
  overrides of keys that change what is trained become part of the run directory's name
  (``singer,SOLVER.LR=0.001``), so ``for lr in ...; do tools/train.py --cfg X SOLVER.LR $lr; done`` gives one run
  directory per value and a rerun of the same command resumes its own run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mdistiller.config import CN, RESUME_ALLOWABLE_KEYS, RESUME_SCHEDULE_KEYS, flatten, get_default_config, resume_free

__all__ = ["Change", "config_changes", "flat_config", "permitted", "refusal", "run_name", "schedule_changes",
           "show"]

_UNSET = "(unset)"
_NEVER = {"SOLVER.TYPE": "the state of one optimizer cannot drive another",
          "DATASET.NUM_WORKERS": "a streamed dataset (DATASET.WDS_MODE stream) splits its shards over the loader "
                                 "workers, so their number sets the sample order"}
_WEIGHT_WORDS = ("pretrained", "random", "true", "false", "none", "")


@dataclass(frozen=True)
class Change:
    """One config key whose value differs between a checkpoint (``old``) and this run (``new``)."""

    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key} {show(self.old)} → {show(self.new)}"

    def record(self, step: int) -> dict[str, Any]:
        """The entry of ``run_info.json``'s ``changes`` list: the change and the step it took effect from."""
        return {"step": int(step), "key": self.key, "old": self.old, "new": self.new}


def show(value: Any) -> str:
    """A config value as the user would type it (``0.001``, ``[1, 2]``, ``none``); ``(unset)`` for a missing key."""
    if value is _UNSET:
        return _UNSET
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def flat_config(cfg: CN | str | Mapping[str, Any]) -> dict[str, Any]:
    """``{"SECTION.KEY": value}`` of a config node, its YAML dump (a checkpoint's ``config``) or a nested dict, with
    the values a YAML round trip gives (so a node and its dump compare equal)."""
    import yaml

    if isinstance(cfg, CN):
        cfg = cfg.dump()
    node = yaml.safe_load(cfg) if isinstance(cfg, str) else cfg
    return flatten(node or {})


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, str) and isinstance(new, str):
        return old.lower() == new.lower()  # choices are case-insensitive (adamw/AdamW, SiNGER/singer)
    return old == new


def _is_file(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() not in _WEIGHT_WORDS


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """The keys outside :data:`~mdistiller.config.RESUME_FREE_KEYS` whose values differ between two flat configs, in
    the order of ``new``. A default key absent from ``old`` (added to the defaults after it was written) or from
    ``new`` (removed since) is skipped; a key under an open node (``DISTILLER.TEACHER_KWARGS.depth``) present on one
    side only is a change. A teacher
    weights file may move (``DISTILLER.TEACHER_WEIGHTS`` path to path): the checkpoint's record of the file's bytes
    decides that one (:meth:`mdistiller.engine.trainer.Trainer.check_resumable`)."""
    defaults = get_default_config()
    known = flatten(defaults)
    out = []
    for key in [*new, *(k for k in old if k not in new)]:
        if _free(key, new) or (key not in old and key in known) or (key not in new and not _open(defaults, key)):
            continue
        a, b = old.get(key, _UNSET), new.get(key, _UNSET)
        if key == "DISTILLER.TEACHER_WEIGHTS" and _is_file(a) and _is_file(b):
            continue
        if not _same(a, b):
            out.append(Change(key, a, b))
    return out


def _streamed(flat: Mapping[str, Any]) -> bool:
    """Whether a flat config reads its training data as a stream (``DATASET.FORMAT wds``, ``WDS_MODE stream``)."""
    return (str(flat.get("DATASET.FORMAT", "")).lower() == "wds"
            and str(flat.get("DATASET.WDS_MODE", "")).lower() == "stream")


def _free(key: str, new: Mapping[str, Any]) -> bool:
    """:func:`~mdistiller.config.resume_free`, except ``DATASET.NUM_WORKERS`` of a streamed dataset, whose sample
    order depends on it (``docs/data-formats.md``)."""
    return resume_free(key) and not (key == "DATASET.NUM_WORKERS" and _streamed(new))


def _open(cfg: CN, key: str) -> bool:
    """Whether ``key`` lies under a node that takes new keys (``DISTILLER.TEACHER_KWARGS``): only such a key can be
    set in one config and unset in another; any other key missing here was removed from the defaults."""
    node: Any = cfg
    for part in key.split(".")[:-1]:
        if not isinstance(node, CN) or part not in node:
            return False
        node = node[part]
    return isinstance(node, CN) and node.is_new_allowed()


def _listing(keys: Sequence[str]) -> str:
    return ", ".join(keys[:-1]) + (" and " if len(keys) > 1 else "") + keys[-1]


def permitted(changes: Sequence[Change], allowed: Iterable[str]) -> tuple[list[Change], list[Change]]:
    """``(accepted, refused)``: the changes ``allowed`` (``EXPERIMENT.RESUME_ALLOW_CHANGES``) lists among the
    allowable keys, and the others."""
    listed = {str(k).upper() for k in allowed}
    ok = [c for c in changes if c.key in RESUME_ALLOWABLE_KEYS and c.key.upper() in listed]
    return ok, [c for c in changes if c not in ok]


def refusal(where: str, step: int, refused: Sequence[Change]) -> str:
    """The one sentence refusing to resume ``where`` (a checkpoint at ``step``) with the ``refused`` changes: each
    key as ``old → new``, and what to do (a new run, or ``EXPERIMENT.RESUME_ALLOW_CHANGES`` where that is sound)."""
    head = f"{where} (step {step}) was trained with another config ({'; '.join(str(c) for c in refused)})"
    new_run = ("start a new run (another EXPERIMENT.NAME or --run-dir, or neither, so that command-line overrides "
               "name their own run directory)")
    never = [c.key for c in refused if c.key not in RESUME_ALLOWABLE_KEYS]
    if never:
        why = "; ".join(f"{k}: {_NEVER[k]}" for k in never if k in _NEVER)
        return (f"{head}; {_listing(never)} cannot change within a run{f' ({why})' if why else ''}, so {new_run} or "
                "resume with the checkpoint's values.")
    listing = "[" + ", ".join(f"'{c.key}'" for c in refused) + "]"
    return (f"{head}; {new_run}, or continue this run with the new values from step {step} by adding "
            f"EXPERIMENT.RESUME_ALLOW_CHANGES \"{listing}\" (recorded in run_info.json).")


def schedule_changes(changes: Sequence[Change]) -> list[Change]:
    """The changes of learning-rate schedule keys (:data:`~mdistiller.config.RESUME_SCHEDULE_KEYS`)."""
    return [c for c in changes if c.key in RESUME_SCHEDULE_KEYS]


_SAFE = re.compile(r"^[A-Za-z0-9._+\-\[\],]*$")


def _hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _part(key: str, value: Any) -> str:
    text = json.dumps(value, separators=(",", ":")) if isinstance(value, list) else show(value)
    if not _SAFE.match(text) or len(text) > 32:
        text = "@" + _hash(json.dumps(value, sort_keys=True, default=str))
    return f"{key}={text}"


def run_name(cfg: CN, base: CN, override_keys: Sequence[str]) -> str:
    """The run directory name of ``cfg``: ``EXPERIMENT.NAME`` (else ``TAG``), followed by ``,KEY=VALUE`` for each
    command-line override (``override_keys``, in their order) that changes what is trained relative to ``base``
    (the config files alone). An override of ``EXPERIMENT.NAME`` itself is taken as given. Unsafe or long values
    become ``@<hash>``; a suffix over 96 characters becomes one hash of all of them."""
    e = cfg.EXPERIMENT
    name = str(e.NAME or e.TAG)
    if "EXPERIMENT.NAME" in override_keys:
        return name
    old, new = flat_config(base), flat_config(cfg)
    parts = [_part(k, new.get(k)) for k in dict.fromkeys(override_keys)
             if not resume_free(k) and not _same(old.get(k, _UNSET), new.get(k, _UNSET))]
    suffix = ",".join(parts)
    if len(suffix) > 96:
        suffix = "@" + _hash(suffix, 12)
    return f"{name},{suffix}" if suffix else name
