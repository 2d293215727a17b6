"""The analysis commands by name (:data:`COMMANDS`), built from their options in :mod:`.options`; light (argparse
only), so the command line's ``--help`` never waits for torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import options as _o
from .base import Command

__all__ = ["COMMANDS", "NAMES", "command_of"]

#: the commands in the order the command line lists them; each one's module is its name with ``_`` for ``-``
NAMES = ("artifacts", "nullspace", "null-vs-reality", "subspace", "adapter", "similarity", "figures")


def _command(name: str) -> Command:
    module = name.replace("-", "_")
    options = getattr(_o, f"{module}_options")
    return Command(name, options.__doc__.strip(), options, module)


#: command name → :class:`Command`
COMMANDS: dict[str, Command] = {name: _command(name) for name in NAMES}


def command_of(report: Mapping[str, Any]) -> Command:
    """The :class:`Command` that wrote ``report`` (its ``"command"`` entry)."""
    cmd = report["command"]
    if cmd not in COMMANDS:
        raise ValueError(f"unknown report '{cmd}'; expected one of {', '.join(COMMANDS)}.")
    return COMMANDS[cmd]
