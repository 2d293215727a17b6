"""SiNGER: nullspace-guided teacher refinement before feature distillation (paper §3.2-3.3, eq. 6-12)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mdistiller.models.flops import ViTShape, block_flops, gram_flops, linear_flops
from mdistiller.singer import SiNGERAdapter, linearize_ffn, null_basis, random_basis, threshold_basis

from .base import SCALES, Distiller, LayerPlan
from .losses import gram_mse, inlier_mask, masked_gram_mse, outlier_loss, token_mse

GRAMS = ("cosine", "raw", "none")
INFO_PATCHES = ("all", "inliers")


class SiNGER(Distiller):
    """``L = λ_kd L_KD + λ_out L_outlier + λ_info L_info`` (eq. 12) over 𝒟 = l_inter ∪ {l_final}.

    * One :class:`SiNGERAdapter` per layer on the teacher's *patch* tokens (CLS and registers pass unchanged),
      initialised with the left-nullspace basis of the next block's linearised FFN (eq. 8, 14-16). For
      ``l_final`` eq. 8 has no next block: the block's *own* FFN is used (as the released code does).
    * ``L_KD`` (eq. 9): student ↔ refined teacher ``F̂``; gradients reach student, projections and adapter
      (``detach_target`` stops the last).
    * ``L_outlier`` (eq. 10): per-image α-quantile of ``‖F̂_i‖``, detached threshold, mean over outliers.
    * ``L_info`` (eq. 11): intermediate l: Gram of teacher block l+1's output on ``F̂_l`` vs on ``F_l`` — the
      latter is reused from the teacher pass, never recomputed; the gradient flows through the frozen block into
      the adapter only (teacher weights have ``requires_grad=False``: no weight gradient is ever computed).
      Final l: Gram of ``F̂_l`` vs ``F_l``. ``gram="cosine"`` uses row-normalised tokens (default).
      ``info="official"`` reproduces the released code: plain MSE of block l+1's full output for intermediate
      layers, and the final layer's cosine Gram compared with the refined *intermediate* layer's.
    * ``info_fraction < 1`` (opt-in, **not the paper**): the intermediate L_info re-runs block l+1 on the first
      ``ceil(f·B)`` images of the local batch only. Gram losses are per-image means, so over the shuffled sampler
      this is an unbiased estimate of eq. 11 at about ``f`` of its cost; ``1.0`` is eq. 11 exactly.
    * ``scale="median"`` (scale-aware mode, **not the paper**): every term is expressed in units of a fixed per-layer
      feature scale ``s`` — the median patch norm of the original features, measured once on the first training
      batch (averaged over ranks) and kept in the buffer ``feature_scale`` (so checkpoints resume exactly):
      ``L_KD,l / s_l²``, ``L_outlier,l / s_l²`` and ``L_info,l`` on ``F / s`` (``s`` of block l+1's output for
      intermediate layers). Scaling the teacher's features by any ``c`` leaves every term unchanged, so λ mean the
      same for every teacher and layer. ``scale="none"`` is eq. 9-12 in the teacher's raw units.
    * ``info_patches="inliers"`` (not the paper): L_info compares only the patches at or below the α-quantile of the
      *original* features (per image; pairs of such patches for a Gram), so the information term preserves the
      inlier structure and does not fight L_outlier over the outliers it is meant to change. ``"all"``: every patch.
      ``gram="none"`` compares the tokens themselves (per-token squared error) instead of a Gram matrix.
    """

    refines_teacher = True

    def __init__(self, *args, rank: int = 16, q: float = 0.95, init: str = "nullspace", basis: str = "smallest",
                 null_thres: float = 0.05, linearize_norm: bool = False, linearize_layerscale: bool = False,
                 use_outlier: bool = True, use_info: bool = True, info: str = "paper", info_fraction: float = 1.0,
                 gram: str = "cosine", scale: str = "none", info_patches: str = "all",
                 adapter_lr_scale: float = 1.0, detach_target: bool = False, feat_weight: float = 1.0,
                 outlier_weight: float = 1.0, info_weight: float = 1.0, seed: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.q, self.info, self.gram, self.gram_normalize = q, info, gram, gram == "cosine"
        if not 0.0 < info_fraction <= 1.0:
            raise ValueError(f"SiNGER info_fraction is {info_fraction} but must lie in (0, 1]; "
                             "1.0 is the paper's L_info.")
        self.info_fraction = float(info_fraction)
        if scale not in SCALES or info_patches not in INFO_PATCHES or gram not in GRAMS:
            raise ValueError(f"SiNGER scale {scale!r} / info_patches {info_patches!r} / gram {gram!r}: choose scale "
                             f"from {SCALES}, info_patches from {INFO_PATCHES} and gram from {GRAMS}.")
        self.info_patches = info_patches
        self.adapter_lr_scale = float(adapter_lr_scale)
        self.use_outlier, self.use_info, self.detach_target = use_outlier, use_info, detach_target
        self.weights = {"kd": feat_weight, "outlier": outlier_weight, "info": info_weight}
        self.final = self.plan.teacher[-1]
        if info == "official" and use_info and len(self.plan.teacher) < 2:
            raise ValueError("SiNGER.INFO 'official' compares the final layer with an intermediate one; "
                             "add an intermediate layer to SiNGER.M_LAYERS or use INFO 'paper'.")
        d = self.teacher.width  # the rank bound is checked by check_config and guarded in mdistiller.singer
        self.rank = int(rank)
        self.linearize = {"include_norm": linearize_norm, "include_layerscale": linearize_layerscale}
        gen = torch.Generator().manual_seed(seed)
        self.null_counts: dict[int, int] = {}
        adapters = {}
        for t in self.plan.teacher:
            if init == "random":
                basis_t = random_basis(d, rank, generator=gen, orthonormal=False)
            else:
                w = self.init_weight(t)
                if basis == "threshold":
                    basis_t, self.null_counts[t] = threshold_basis(w, rank, null_thres, generator=gen)
                else:
                    basis_t = null_basis(w, rank)
            adapters[str(t)] = SiNGERAdapter(basis_t)
        self.adapters = nn.ModuleDict(adapters)
        self.use_feature_scale(scale)  # [layer, (F_l, next-block output)] median patch norms (scale-aware mode)

    def _split_params(self) -> tuple[list, list]:
        named = self.trainable_parameters()
        adapters = [x for x in named if x[0].startswith("adapters.")]
        return [x for x in named if not x[0].startswith("adapters.")], adapters

    def optimizer_groups(self) -> list:
        """One rate for everything (paper), or the adapters at ``adapter_lr_scale`` × the base rate."""
        if self.adapter_lr_scale == 1.0:
            return self.trainable_parameters()
        rest, adapters = self._split_params()
        return [{"params": rest}, {"params": adapters, "lr_scale": self.adapter_lr_scale}]

    def gradient_groups(self) -> dict[str, list[nn.Parameter]]:
        rest, adapters = self._split_params()
        return {"student": [p for _, p in rest], "adapter": [p for _, p in adapters]}

    @classmethod
    def from_config(cls, cfg, student, teacher, plan) -> SiNGER:
        s = cfg.SiNGER
        return cls(student, teacher, plan, rank=s.RANK, q=s.OUTLIER_Q, init=s.INIT.lower(),
                   basis=s.BASIS.lower(), null_thres=s.NULL_THRES, linearize_norm=s.LINEARIZE_NORM,
                   linearize_layerscale=s.LINEARIZE_LAYERSCALE, use_outlier=s.USE_OUTLIER, use_info=s.USE_INFO,
                   info=s.INFO.lower(), info_fraction=s.INFO_FRACTION, gram=s.GRAM.lower(),
                   scale=s.SCALE.lower(), info_patches=s.INFO_PATCHES.lower(),
                   adapter_lr_scale=s.ADAPTER_LR_SCALE, detach_target=s.DETACH_TARGET,
                   feat_weight=s.LOSS.FEAT_WEIGHT, outlier_weight=s.LOSS.OUTLIER_WEIGHT,
                   info_weight=s.LOSS.INFO_WEIGHT, seed=cfg.EXPERIMENT.SEED, **cls.common_kwargs(cfg))

    @classmethod
    def check_config(cls, cfg, teacher_width: int) -> None:
        """``SiNGER.RANK`` in ``[1, teacher width]`` (the one config-level check of the adapter rank)."""
        rank = cfg.SiNGER.RANK
        if rank < 1:
            raise ValueError(f"SiNGER.RANK is {rank} but must be a positive integer, e.g. 16.")
        if rank > teacher_width:
            raise ValueError(f"SiNGER.RANK {rank} exceeds the width {teacher_width} of teacher "
                             f"'{cfg.DISTILLER.TEACHER}'; use a rank ≤ {teacher_width}.")

    @classmethod
    def deepest_teacher_block(cls, cfg, plan: LayerPlan) -> int:
        """Block l+1 of every intermediate layer initialises its adapter and runs L_info: one block deeper."""
        return max(plan.teacher) + (1 if len(plan.teacher) > 1 else 0)

    @staticmethod
    def source_block(t: int, final: int) -> int:
        """The block whose FFN initialises the adapter of layer ``t`` (eq. 8): ``t+1``, or ``t`` itself for the final
        layer (no next block; the released code does the same)."""
        return t + 1 if t != final else t

    def init_weight(self, t: int) -> torch.Tensor:
        """``W̃`` (CPU) the adapter at teacher layer ``t`` is initialised from (eq. 14-16)."""
        block = self.teacher.blocks[self.source_block(t, self.final)]
        return linearize_ffn(block, **self.linearize).cpu()

    @classmethod
    def extra_flops(cls, teacher: ViTShape, student: ViTShape, *, teacher_patches: int, student_patches: int,
                    layers: list[int], kd_cls: bool = False, rank: int = 16, use_info: bool = True,
                    info: str = "paper", info_fraction: float = 1.0, **options) -> int:
        """Projections, adapters (on the teacher's patches) and L_info: block l+1 re-run with an input gradient for
        intermediate layers (scaled by ``info_fraction``) and the Gram matrices of eq. 11 or the released variant."""
        extras = super().extra_flops(teacher, student, teacher_patches=teacher_patches,
                                     student_patches=student_patches, layers=layers, kd_cls=kd_cls)
        p, d_t = teacher_patches, teacher.width
        adapter = linear_flops(p, d_t, rank) + linear_flops(p, rank, d_t)
        extras += 3 * len(layers) * adapter
        if use_info:
            final = layers[-1]
            block = block_flops(teacher.tokens(p), d_t, teacher.mlp_hidden)
            for t in layers:
                if t != final:  # block l+1 on F̂ (forward + input gradient only)
                    rerun = 2 * block
                    if info == "paper":  # Gram of block l+1 on F̂ (with gradient) and on F (without)
                        rerun += 3 * gram_flops(p, d_t) + gram_flops(p, d_t)
                    extras += round(info_fraction * rerun)
                elif info == "official" and len(layers) > 1:  # Grams of F̂_final and F̂_inter, both with gradient
                    extras += 2 * 3 * gram_flops(p, d_t)
                else:  # Gram of F̂_final (with gradient) vs Gram of F_final (without)
                    extras += 3 * gram_flops(p, d_t) + gram_flops(p, d_t)
        return extras

    def flops_options(self) -> dict:
        return {"kd_cls": self.kd_cls, "rank": self.rank, "use_info": self.use_info, "info": self.info,
                "info_fraction": self.info_fraction}

    def teacher_request(self) -> list[int]:
        """Teacher blocks to read: 𝒟 plus l+1 of every intermediate l (its output is reused by L_info)."""
        extra = [t + 1 for t in self.plan.teacher if t != self.final] if self.use_info else []
        return sorted(set(self.plan.teacher) | set(extra))

    def refine(self, t_feats: dict[int, torch.Tensor], tgrid: tuple[int, int]) -> dict[int, tuple]:
        """Per layer ``(split teacher tokens, F̂ patches)`` on the teacher's grid (eq. 6)."""
        out = {}
        for t in self.plan.teacher:
            split = self.teacher.net.split(t_feats[t], tgrid)
            out[t] = (split, self.adapters[str(t)](split.patches))
        return out

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        sgrid = self.student_grid(images)
        s_feats = self.student(images, self.plan.student)
        t_feats, tgrid = self.teacher(images, self.teacher_request(), student_grid=sgrid)
        refined = self.refine(t_feats, tgrid)
        units = self.units(t_feats, tgrid)
        kd, out, info = [], [], []
        for t, s in self.plan.pairs():
            split, f_hat = refined[t]
            unit2 = units[t][0] ** 2
            target = f_hat.detach() if self.detach_target else f_hat
            target = self.teacher.to_student_grid(target, tgrid, sgrid)
            proj, target = self.kd_tokens(self.student.split(s_feats[s], sgrid), target, split.cls, t)
            kd.append(self.kd_loss(proj, target) / unit2)  # eq. 9
            if self.use_outlier:
                out.append(outlier_loss(f_hat, self.q) / unit2)  # eq. 10
            if self.use_info:
                info.append(self.info_term(t, split, f_hat, t_feats, tgrid, refined, units[t]))  # eq. 11
        terms = {"kd": self.reduce_layers(kd)}
        if out:
            terms["outlier"] = self.reduce_layers(out)
        if info:
            terms["info"] = self.reduce_layers(info)
        weighted = {k: self.weights[k] * v for k, v in terms.items()}
        self.keep(weighted)
        result = {"loss": sum(weighted.values())}
        result.update({f"loss_{k}": v.detach() for k, v in terms.items()})
        return result

    def info_term(self, t: int, split, f_hat: torch.Tensor, t_feats: dict[int, torch.Tensor],
                  tgrid: tuple[int, int], refined: dict[int, tuple], units: tuple = (1.0, 1.0)) -> torch.Tensor:
        """L_info for one layer (eq. 11, or the released variant), in the units of ``units = (s_l, s_next)``."""
        if t == self.final:
            if self.info == "official":
                inter = refined[self.plan.teacher[-2]][1]
                return gram_mse(f_hat, inter, normalize=True)
            return self.gram_term(f_hat, split.patches, units[0])
        block = self.teacher.blocks[t + 1]
        n = self.info_batch(f_hat.shape[0])
        y_hat = block(torch.cat([split.prefix[:n].to(f_hat.dtype), f_hat[:n]], dim=1))  # grad → adapter only
        y = t_feats[t + 1][:n]  # block l+1 on the original features, from the teacher pass
        if self.info == "official":
            return F.mse_loss(y_hat.float(), y.float()) / units[1] ** 2
        p_hat = self.teacher.net.split(y_hat, tgrid).patches
        p = self.teacher.net.split(y, tgrid).patches
        return self.gram_term(p_hat, p, units[1])

    def gram_term(self, x_hat: torch.Tensor, x: torch.Tensor, unit) -> torch.Tensor:
        """``MSE(G(x̂ / s), G(x / s))`` over all patches, or over the original features' inlier pairs; with
        ``gram="none"`` the tokens themselves (``G(F) = F``, per-token squared error)."""
        if self.scale != "none":
            x_hat, x = x_hat.float() / unit, x.float() / unit
        if self.gram == "none":
            return token_mse(x_hat, x, inlier_mask(x, self.q) if self.info_patches == "inliers" else None)
        if self.info_patches == "inliers":
            return masked_gram_mse(x_hat, x, inlier_mask(x, self.q), normalize=self.gram_normalize)
        return gram_mse(x_hat, x, normalize=self.gram_normalize)

    def info_batch(self, batch: int) -> int:
        """Images of a local batch on which block l+1 is re-run for L_info (all of them unless ``info_fraction``)."""
        return batch if self.info_fraction >= 1.0 else max(1, math.ceil(self.info_fraction * batch))
