"""ViTKD (Yang et al., CVPRW 2024) with the official numerics, every parameter trained."""

from __future__ import annotations

import torch
from torch import nn

from mdistiller.models.flops import ViTShape, linear_flops

from .base import Distiller, LayerPlan
from .layers import normalize_layers


class ViTKD(Distiller):
    """Mimicking + generation, as in the official ``ViTKDLoss``:

    * mimicking: patch tokens of the first blocks (``VITKD.MIMIC_LAYERS``, default 0 and 1) with one
      ``Linear(d_S → d_T)`` aligner each: ``α Σ_l ‖A_l(F^S_l) − F^T_l‖²_sum / B``;
    * generation: the last block's patch tokens *after the final norm*: align, random masking with ratio λ
      (per image, ``⌊P(1−λ)⌋`` kept), masked positions replaced by a learned mask token, reshape to the grid,
      Conv3×3 – ReLU – Conv3×3 at teacher width, ``β ‖(G − F^T_last) ⊙ M‖²_sum / B / λ`` on masked positions.

    Unlike both released ports, the generator, mask token and aligners are all registered parameters, so the
    optimizer trains them (a test asserts each receives a gradient).
    """

    uses_student_final_norm = True
    layer_keys = "VITKD.MIMIC_LAYERS"

    def __init__(self, *args, mask_ratio: float = 0.5, alpha: float = 3e-5, beta: float = 3e-6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        d_t = self.teacher.width
        self.mask_ratio, self.alpha, self.beta = mask_ratio, alpha, beta
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d_t))
        self.generator = nn.Sequential(
            nn.Conv2d(d_t, d_t, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(d_t, d_t, 3, padding=1)
        )

    @classmethod
    def plan_layers(cls, cfg, teacher_depth: int, student_depth: int) -> LayerPlan:
        """``VITKD.MIMIC_LAYERS`` on both sides (the first blocks), plus last ↔ last for generation."""
        mimic_t = normalize_layers(cfg.VITKD.MIMIC_LAYERS, teacher_depth - 1, "teacher (ViTKD mimic)")
        mimic_s = normalize_layers(cfg.VITKD.MIMIC_LAYERS, student_depth - 1, "student (ViTKD mimic)")
        return LayerPlan(mimic_t + [teacher_depth - 1], mimic_s + [student_depth - 1])

    @classmethod
    def from_config(cls, cfg, student, teacher, plan) -> ViTKD:
        """ViTKD with ``VITKD.MASK_RATIO`` (λ), ``VITKD.ALPHA`` (α) and ``VITKD.BETA`` (β)."""
        v = cfg.VITKD
        return cls(student, teacher, plan, mask_ratio=v.MASK_RATIO, alpha=v.ALPHA, beta=v.BETA,
                   **cls.common_kwargs(cfg))

    @classmethod
    def extra_flops(cls, teacher: ViTShape, student: ViTShape, *, teacher_patches: int, student_patches: int,
                    layers: list[int], **options) -> int:
        """Aligners on the student's patches (no CLS) and the generator's two 3×3 convolutions at teacher width."""
        d_s, d_t = student.width, teacher.width
        conv = 2 * linear_flops(student_patches, 9 * d_t, d_t)
        return 3 * len(layers) * linear_flops(student_patches, d_s, d_t) + 3 * conv

    @property
    def mimic_pairs(self) -> list[tuple[int, int]]:
        """``(teacher block, student block)`` of the mimicking layers: every pair of the plan but the last."""
        return self.plan.pairs()[:-1]

    def random_mask(self, b: int, p: int, device: torch.device) -> torch.Tensor:
        """Bool ``[B, P]``, True = masked; exactly ``P − ⌊P(1−λ)⌋`` masked per image (argsort of uniform noise)."""
        keep = int(p * (1 - self.mask_ratio))
        order = torch.rand(b, p, device=device).argsort(dim=1)
        mask = torch.ones(b, p, dtype=torch.bool, device=device)
        mask.scatter_(1, order[:, :keep], False)
        return mask

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mimicking plus generation (see the class): ``loss``, ``loss_mimic`` and ``loss_gen``."""
        sgrid = self.student_grid(images)
        s_feats = self.student(images, self.plan.student)
        t_last, s_last = self.plan.pairs()[-1]
        t_feats, tgrid = self.teacher(images, self.plan.teacher, student_grid=sgrid)
        t_final = self.teacher.net.model.norm(t_feats[t_last])  # the teacher's last block after its final norm
        b = images.shape[0]

        mimic = []
        for t, s in self.mimic_pairs:
            target = self.teacher.to_student_grid(self.teacher.net.split(t_feats[t], tgrid).patches, tgrid, sgrid)
            pred = self.proj[str(t)](self.student.split(s_feats[s], sgrid).patches)
            mimic.append((pred.float() - target.float()).pow(2).sum() / b)
        loss_mimic = self.alpha * torch.stack(mimic).sum() if mimic else images.new_zeros(())

        s_tokens = self.student.split(self.student.model.norm(s_feats[s_last]), sgrid).patches
        x = self.proj[str(t_last)](s_tokens)  # [B, P, d_T]
        target = self.teacher.to_student_grid(self.teacher.net.split(t_final, tgrid).patches, tgrid, sgrid)
        p = x.shape[1]
        mask = self.random_mask(b, p, x.device)
        x = torch.where(mask[..., None], self.mask_token.to(x.dtype).expand_as(x), x)
        h, w = sgrid
        g = self.generator(x.transpose(1, 2).reshape(b, -1, h, w)).flatten(2).transpose(1, 2)
        loss_gen = self.beta * ((g.float() - target.float()).pow(2) * mask[..., None]).sum() / b / self.mask_ratio
        total = loss_mimic + loss_gen
        self.keep({"mimic": loss_mimic, "gen": loss_gen})
        return {"loss": total, "loss_mimic": loss_mimic.detach(), "loss_gen": loss_gen.detach()}
