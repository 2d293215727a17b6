"""Shared test helpers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_tool(rel: str) -> ModuleType:
    """Import ``tools/<rel>`` in-process (tools/ is not a package; a subprocess would pay torch's import again)."""
    name = "_tools_" + rel.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / rel)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module
