"""FitNet for ViTs: feature MSE on the same layers as SiNGER (paper eq. 1)."""

from __future__ import annotations

import torch

from .base import Distiller


class FitNet(Distiller):
    """``L = λ Σ_{l∈𝒟} (1/n) Σ_i ‖F^T_{l,i} − P_l(F^S_{l,i})‖²`` (eq. 1) on raw (pre-norm) block outputs.

    Uses the same distillation layers 𝒟 as SiNGER by default (the released baseline used {11, 17, 23} against
    SiNGER's {17, 23}, and a 10× weight, which made the comparison unfair).
    """

    def __init__(self, *args, feat_weight: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.feat_weight = feat_weight

    @classmethod
    def from_config(cls, cfg, student, teacher, plan) -> FitNet:
        return cls(student, teacher, plan, feat_weight=cfg.FITNET.LOSS.FEAT_WEIGHT, **cls.common_kwargs(cfg))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        sgrid = self.student_grid(images)
        s_feats = self.student(images, self.plan.student)
        t_feats, tgrid = self.teacher(images, self.plan.teacher, student_grid=sgrid)
        terms = []
        for t, s in self.plan.pairs():
            tt = self.teacher.net.split(t_feats[t], tgrid)
            target = self.teacher.to_student_grid(tt.patches, tgrid, sgrid)
            proj, target = self.kd_tokens(self.student.split(s_feats[s], sgrid), target, tt.cls, t)
            terms.append(self.kd_loss(proj, target))
        loss_kd = self.feat_weight * self.reduce_layers(terms)
        self.keep({"kd": loss_kd})
        return {"loss": loss_kd, "loss_kd": loss_kd.detach()}
