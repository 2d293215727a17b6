"""Teacher → student layer mapping (indices normalised by :func:`mdistiller.models.indices.normalize_layers`)."""

from __future__ import annotations

from collections.abc import Sequence

from mdistiller.models.indices import normalize_layers

__all__ = ["map_layers", "normalize_layers"]


def map_layers(teacher_layers: Sequence[int], teacher_depth: int, student_depth: int) -> list[int]:
    """Student block for each teacher block by relative depth ``l/(T−1) ↔ s/(S−1)`` (rounded, strictly increasing).

    Endpoints align, so the teacher's last block always maps to the student's last block (24→12: 17→8, 23→11, the
    paper's "every second teacher layer"; 12→12: identity). The released code used ``l/T`` against ``s/(S−1)`` and
    mapped 12→12 depth's last block to student block 10, leaving the student's last block untrained.
    Collisions are resolved by moving a later layer one block deeper (or an earlier one shallower).
    """
    t_layers = normalize_layers(teacher_layers, teacher_depth)
    if len(t_layers) > student_depth:
        raise ValueError(
            f"{len(t_layers)} distillation layers cannot map to distinct blocks of a {student_depth}-block student; "
            "use fewer DISTILLER.TEACHER_LAYERS or set DISTILLER.STUDENT_LAYERS explicitly."
        )
    if teacher_depth == 1 or student_depth == 1:
        pos = [student_depth - 1 for _ in t_layers]
    else:
        pos = [round(t * (student_depth - 1) / (teacher_depth - 1)) for t in t_layers]
    # enforce strictly increasing, within range, keeping the last → last anchor when present
    for i in range(1, len(pos)):
        pos[i] = max(pos[i], pos[i - 1] + 1)
    overflow = pos[-1] - (student_depth - 1) if pos else 0
    if overflow > 0:
        pos[-1] = student_depth - 1
        for i in range(len(pos) - 2, -1, -1):
            pos[i] = min(pos[i], pos[i + 1] - 1)
    return pos
