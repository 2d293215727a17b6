"""FitNet for ViTs: feature MSE on its own layers ``FITNET.LAYERS`` (paper eq. 1; the shipped configs give it the
same layers as SiNGER), and its controls for SiNGER's ablation ladder (scale-aware units, a fixed norm clamp of the
target, outliers left out of L_KD)."""

from __future__ import annotations

import torch

from .base import Distiller, LayerPlan
from .losses import inlier_mask, norm_clamp

#: ``FITNET.TARGET``: the teacher itself (eq. 1), its norm-clamped patches, or the teacher with outliers masked out
TARGETS = ("teacher", "clamp", "mask")


class FitNet(Distiller):
    """``L = λ Σ_{l∈𝒟} (1/n) Σ_i ‖F^T_{l,i} − P_l(F^S_{l,i})‖²`` (eq. 1) on raw (pre-norm) block outputs.

    Its layers are ``FITNET.LAYERS`` plus the last block; the shipped configs give it the same 𝒟 as SiNGER (the
    released baseline used {11, 17, 23} against SiNGER's {17, 23}, and a 10× weight, which made the comparison
    unfair).

    Controls that take SiNGER's changes to FitNet one at a time (**not the paper**; ``docs/singer_modes.md``):

    * ``scale="median"``: every layer's loss divided by ``s_l²``, the scale-aware SiNGER's median patch norm of
      ``F_l`` (:meth:`Distiller.units`: measured once on the first batch, kept in the buffer ``feature_scale``);
    * ``target="clamp"``: the target is ``F_i · min(1, q_α / ‖F_i‖)`` (:func:`~.losses.norm_clamp`), ``q_α`` each
      image's α-quantile of the original patch norms — eq. 10's goal met by a fixed map with no trained parameter;
    * ``target="mask"``: the target is the teacher, but the patches above their image's α-quantile are left out of
      L_KD (CLS, with ``kd_cls``, is always kept).
    """

    inter_layers_key = "FITNET.LAYERS"
    layer_keys = "DISTILLER.TEACHER_LAYERS / FITNET.LAYERS"

    def __init__(self, *args, feat_weight: float = 1.0, scale: str = "none", target: str = "teacher",
                 q: float = 0.95, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if target not in TARGETS:
            raise ValueError(f"FitNet target {target!r}: choose one of {TARGETS}.")
        self.feat_weight, self.target, self.q = feat_weight, target, float(q)
        self.use_feature_scale(scale)

    @classmethod
    def check_config(cls, cfg, teacher_width: int | None = None, plan: LayerPlan | None = None) -> None:
        """FitNet reads α from ``SiNGER.OUTLIER_Q`` (clamp and mask targets): the SiNGER section's own checks."""
        from .singer import SiNGER

        SiNGER.check_config(cfg)

    @classmethod
    def from_config(cls, cfg, student, teacher, plan) -> FitNet:
        """FitNet with its ``FITNET.*`` options (α from ``SiNGER.OUTLIER_Q``)."""
        return cls(student, teacher, plan, feat_weight=cfg.FITNET.LOSS.FEAT_WEIGHT, scale=cfg.FITNET.SCALE.lower(),
                   target=cfg.FITNET.TARGET.lower(), q=cfg.SiNGER.OUTLIER_Q, **cls.common_kwargs(cfg))

    @property
    def changes_target(self) -> bool:
        """Only the clamp control's target differs from the teacher."""
        return self.target == "clamp"

    def refine(self, t_feats: dict[int, torch.Tensor], tgrid: tuple[int, int]) -> dict[int, tuple]:
        """The teacher's patches, or with ``target="clamp"`` their norm clamp at the per-image α-quantile."""
        out = super().refine(t_feats, tgrid)
        if self.target == "clamp":
            out = {t: (split, norm_clamp(patches, self.q)) for t, (split, patches) in out.items()}
        return out

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 1 summed over 𝒟 (or the chosen control)."""
        sgrid = self.student_grid(images)
        s_feats = self.student(images, self.plan.student)
        t_feats, tgrid = self.teacher(images, self.plan.teacher, student_grid=sgrid)
        units, refined = self.units(t_feats, tgrid), self.refine(t_feats, tgrid)
        terms = []
        for t, s in self.plan.pairs():
            split, target = refined[t]
            target = self.teacher.to_student_grid(target, tgrid, sgrid)
            mask = None
            if self.target == "mask":
                mask = inlier_mask(target, self.q)
                if self.kd_cls and split.cls is not None:
                    mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
            proj, target = self.kd_tokens(self.student.split(s_feats[s], sgrid), target, split.cls, t)
            terms.append(self.kd_loss(proj, target, mask) / units[t][0] ** 2)
        loss_kd = self.feat_weight * self.reduce_layers(terms)
        self.keep({"kd": loss_kd})
        return {"loss": loss_kd, "loss_kd": loss_kd.detach()}
