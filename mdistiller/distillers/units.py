"""Units of the feature losses: the paper's raw teacher units, or the scale-aware per-layer median patch norm.

A part of the :class:`~.base.Distiller` chosen by ``SiNGER.SCALE`` / ``FITNET.SCALE`` (:data:`UNITS`). The state of
the scale-aware units (the buffer ``feature_scale``) lives on the distiller itself, so checkpoints keep their keys.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["MedianUnits", "RawUnits", "SCALES", "UNITS"]


class RawUnits:
    """The paper's units (eq. 9-12 as written): every term in the teacher's raw feature units, ``s = 1``."""

    name = "none"

    def attach(self, owner: Any) -> None:
        """Nothing to keep on ``owner``."""

    def scales(self, owner: Any, t_feats: dict[int, torch.Tensor], tgrid: tuple[int, int]) -> dict[int, tuple]:
        """``(1.0, 1.0)`` for every distilled layer."""
        return {t: (1.0, 1.0) for t in owner.plan.teacher}

    def express(self, x: torch.Tensor, unit: Any) -> torch.Tensor:
        """``x`` unchanged (already in the teacher's units)."""
        return x

    def flops(self) -> int:
        """No matmul of its own."""
        return 0


class MedianUnits(RawUnits):
    """**Not the paper** (scale-aware mode, ``docs/singer_modes.md``): every term in units of a fixed per-layer
    feature scale ``s`` — the median patch norm of ``F_l`` and of block l+1's output, measured once on the first
    training batch (averaged over ranks) and kept in the owner's buffer ``feature_scale [layer, 2]`` so a checkpoint
    resumes in the same units. Scaling the teacher's features by any ``c`` leaves every term unchanged."""

    name = "median"

    def attach(self, owner: Any) -> None:
        """Register ``feature_scale`` (zero until measured) on ``owner`` and forget it after a state-dict load."""
        owner.register_buffer("feature_scale", torch.zeros(len(owner.plan.teacher), 2))
        owner._scale_known = False
        owner.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "_scale_known", False))

    def scales(self, owner: Any, t_feats: dict[int, torch.Tensor], tgrid: tuple[int, int]) -> dict[int, tuple]:
        """Per layer ``(s_l, s_next)`` from ``feature_scale``, measured on this batch the first time (one host sync)."""
        if not owner._scale_known:
            if not bool((owner.feature_scale > 0).all()):
                owner.feature_scale.copy_(owner.measure_scale(t_feats, tgrid))
            owner._scale_known = True
        return {t: (owner.feature_scale[i, 0], owner.feature_scale[i, 1]) for i, t in enumerate(owner.plan.teacher)}

    def express(self, x: torch.Tensor, unit: Any) -> torch.Tensor:
        """``x / s`` in float32."""
        return x.float() / unit


#: the units by config value (``SiNGER.SCALE``, ``FITNET.SCALE``)
UNITS: dict[str, RawUnits] = {"none": RawUnits(), "median": MedianUnits()}
SCALES = tuple(UNITS)
