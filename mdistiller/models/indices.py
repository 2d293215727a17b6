"""Block indices: the one normaliser of user-given layer lists (negative counts from the end)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["LayerIndexError", "normalize_layers"]


class LayerIndexError(IndexError, ValueError):
    """A block index outside ``[0, depth)``; both an ``IndexError`` and a ``ValueError`` so callers of either
    kind (layer plans, analysis options) catch it."""


def normalize_layers(layers: int | Sequence[int] | None, depth: int, what: str = "teacher") -> list[int]:
    """0-based, sorted, de-duplicated block indices of a ``depth``-block model; negative indices count from the end.

    ``None`` means every block and a single ``int`` one block. Raises :class:`LayerIndexError` with one sentence
    naming ``what`` (teacher, student, model, …) when an index is outside ``[0, depth)``.
    """
    if layers is None:
        return list(range(depth))
    if isinstance(layers, int):
        layers = [layers]
    out = []
    for layer in layers:
        i = int(layer) + depth if int(layer) < 0 else int(layer)
        if not 0 <= i < depth:
            raise LayerIndexError(
                f"{what} layer {layer} is out of range for a {depth}-block {what} (valid: 0…{depth - 1})."
            )
        out.append(i)
    return sorted(set(out))
