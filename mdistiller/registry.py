"""One small decorator registry, used for distillers, models and datasets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class Registry:
    """Maps names to callables; ``@REG.register("Name")`` adds one, ``REG.get("Name")`` finds it.

    Lookup is case-insensitive and an unknown name raises a ``KeyError`` whose message lists the valid names.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str | None = None) -> Callable[[Any], Any]:
        """Decorator that registers the decorated object under ``name`` (default: its ``__name__``), lower-cased;
        a name registered twice is a ``KeyError``.
        """
        def deco(obj: Any) -> Any:
            key = (name or obj.__name__).lower()
            if key in self._items:
                raise KeyError(f"{self.kind} '{key}' is registered twice; pick another name.")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        """The object registered under ``name`` (case-insensitive); a ``KeyError`` listing the valid names otherwise."""
        key = name.lower()
        if key not in self._items:
            raise KeyError(f"unknown {self.kind} '{name}'; valid names: {', '.join(self.names())}.")
        return self._items[key]

    def names(self) -> list[str]:
        """All registered names, lower-cased and sorted."""
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
