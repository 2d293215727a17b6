"""Named hooks: code that a lower layer calls and an upper layer provides, so no module imports upwards.

A hook is a ``"package.module:function"`` string registered by the package (``mdistiller/__init__.py``); the
module is imported only when the hook is first looked up. The trainer (``engine``) uses ``"run_figures"`` to draw
feature-map figures of a run directory with the analysis package for the dashboard. The config checks of the upper
layers (:func:`register_check`, run by ``mdistiller.config.validate_config``) are kept here too, so that
``import mdistiller`` imports nothing but this module (no yacs, no torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["register_hook", "get_hook", "resolve", "register_check", "config_checks"]

_HOOKS: dict[str, str] = {}
#: ``"module:function"`` config checks, in registration order (see :func:`register_check`)
_CHECKS: list[str] = []


def register_check(path: str) -> None:
    """Add a config check ``"package.module:function"`` (called with the config; raises ``ConfigError``).

    The layers above ``mdistiller.config`` register theirs (``mdistiller/__init__.py``), so the checks live beside
    the code they protect while ``load_config`` still runs all of them; the module is imported only when a check runs.
    """
    if path not in _CHECKS:
        _CHECKS.append(path)


def config_checks() -> list[str]:
    """The registered config checks, in registration order."""
    return list(_CHECKS)


def register_hook(name: str, path: str) -> None:
    """Provide hook ``name`` as the function at ``"package.module:function"`` (a later registration replaces it)."""
    if ":" not in path:
        raise ValueError(f"hook '{name}' path '{path}' has no ':'; write it as 'package.module:function'.")
    _HOOKS[name] = path


def resolve(path: str) -> Callable[..., Any]:
    """The function at ``"package.module:function"``, its module imported now (hooks and registered config checks)."""
    module, _, func = path.partition(":")
    return getattr(importlib.import_module(module), func)


def get_hook(name: str) -> Callable[..., Any] | None:
    """The function registered for ``name`` (its module imported now), or ``None`` when nothing provides it."""
    path = _HOOKS.get(name)
    return resolve(path) if path is not None else None
