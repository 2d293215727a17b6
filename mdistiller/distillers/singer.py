"""SiNGER: nullspace-guided teacher refinement before feature distillation (paper §3.2-3.3, eq. 6-12)."""

from __future__ import annotations

import torch
from torch import nn

from mdistiller.models.flops import ViTShape, block_flops, linear_flops
from mdistiller.singer import SiNGERAdapter, linearize_ffn

from .base import AdapterInit, Distiller, LayerPlan, RefinedFeatures
from .losses import outlier_loss
from .singer_parts import (
    CHOICES,
    AttachedTarget,
    DetachedTarget,
    PaperInfo,
    SmallestBasis,
    make_basis,
    make_info,
)


class SiNGER(Distiller):
    """``L = λ_kd L_KD + λ_out L_outlier + λ_info L_info`` (eq. 12) over 𝒟 = l_inter ∪ {l_final}.

    * One :class:`SiNGERAdapter` per layer on the teacher's *patch* tokens (CLS and registers pass unchanged),
      ``F̂ = F + (F φ_down) φ_up`` (eq. 6), initialised from a basis of the FFN of the layer's source block
      (:meth:`LayerPlan.source_block`: block l+1, the block itself for ``l_final``; eq. 7-8, 14-16).
    * ``L_KD`` (eq. 9): student ↔ refined teacher ``F̂``.
    * ``L_outlier`` (eq. 10): per-image α-quantile of ``‖F̂_i‖``, detached threshold, mean over outliers.
    * ``L_info`` (eq. 11): teacher block l+1 on ``[prefix, F̂_l]`` vs on ``[prefix, F_l]`` (the latter reused from
      the teacher pass), or ``F̂_l`` vs ``F_l`` for the final layer.

    The choices around that path are named parts (:mod:`.singer_parts`, ``docs/singer_modes.md``), built by
    :meth:`from_config`: ``basis`` (eq. 8's rule or the released/random ones), ``target`` (L_KD's target attached or
    detached), ``info`` (eq. 11 with its G and patches, the released term, or None without L_info) and the units
    (``scale``, :mod:`.units`). ``use_outlier`` is Table 4's switch of L_outlier.
    """

    inter_layers_key = "SiNGER.M_LAYERS"
    layer_keys = "DISTILLER.TEACHER_LAYERS / SiNGER.M_LAYERS"

    def __init__(self, *args, rank: int = 16, q: float = 0.95, basis: SmallestBasis | None = None,
                 linearize: dict | None = None, target: AttachedTarget | None = None, use_outlier: bool = True,
                 info: PaperInfo | None = None, scale: str = "none", adapter_lr_scale: float = 1.0,
                 weights: dict[str, float] | None = None, seed: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.q, self.rank = float(q), int(rank)
        self.basis = basis or SmallestBasis()
        self.linearize = dict(linearize or {"include_norm": False, "include_layerscale": False})
        self.target = target or AttachedTarget()
        self.use_outlier = bool(use_outlier)
        self.info = info
        self.adapter_lr_scale = float(adapter_lr_scale)
        self.weights = {"kd": 1.0, "outlier": 1.0, "info": 1.0, **(weights or {})}
        gen = torch.Generator().manual_seed(seed)
        self.null_counts: dict[int, int] = {}
        adapters = {}
        for t in self.plan.teacher:  # the rank bound is checked by check_config and guarded in mdistiller.singer
            basis_t, count = self.basis(lambda t=t: self.init_weight(t), self.teacher.width, self.rank, gen)
            if count is not None:
                self.null_counts[t] = count
            adapters[str(t)] = SiNGERAdapter(basis_t)
        self.adapters = nn.ModuleDict(adapters)
        self.use_feature_scale(scale)  # [layer, (F_l, next-block output)] median patch norms (scale-aware units)

    @property
    def use_info(self) -> bool:
        """Whether L_info is on (Table 4's switch, ``SiNGER.USE_INFO``)."""
        return self.info is not None

    @property
    def changes_target(self) -> bool:
        """Always: the target is the refined ``F̂``."""
        return True

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
        """The student's parameters and the adapters' (per-term gradient norms)."""
        rest, adapters = self._split_params()
        return {"student": [p for _, p in rest], "adapter": [p for _, p in adapters]}

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg, student, teacher, plan) -> SiNGER:
        """The paper's path with the parts the ``SiNGER.*`` keys choose (checked first by :meth:`check_config`)."""
        cls.check_config(cfg, teacher.width, plan)
        s = cfg.SiNGER
        info = make_info(s.INFO.lower(), s.GRAM.lower(), s.INFO_PATCHES.lower(), s.OUTLIER_Q, s.INFO_FRACTION)
        return cls(student, teacher, plan, rank=s.RANK, q=s.OUTLIER_Q,
                   basis=make_basis(s.INIT.lower(), s.BASIS.lower(), s.NULL_THRES),
                   linearize={"include_norm": s.LINEARIZE_NORM, "include_layerscale": s.LINEARIZE_LAYERSCALE},
                   target=DetachedTarget() if s.DETACH_TARGET else AttachedTarget(), use_outlier=s.USE_OUTLIER,
                   info=info if s.USE_INFO else None, scale=s.SCALE.lower(), adapter_lr_scale=s.ADAPTER_LR_SCALE,
                   weights={"kd": s.LOSS.FEAT_WEIGHT, "outlier": s.LOSS.OUTLIER_WEIGHT, "info": s.LOSS.INFO_WEIGHT},
                   seed=cfg.EXPERIMENT.SEED, **cls.common_kwargs(cfg))

    @classmethod
    def check_config(cls, cfg, teacher_width: int | None = None, plan: LayerPlan | None = None) -> None:
        """Every check of the ``SiNGER.*`` keys: the part choices, α, ``INFO_FRACTION``, ``ADAPTER_LR_SCALE``; with
        ``teacher_width`` the rank bound ``1 ≤ RANK ≤ width``; with ``plan`` the released L_info's intermediate
        layer. Without either it checks what other methods read from the section (FitNet's α)."""
        s = cfg.SiNGER
        for key, choices in CHOICES.items():
            value = str(s[key.split(".")[1]])
            if value.lower() not in choices:
                raise ValueError(f"{key} is '{value}' but must be one of: {', '.join(choices)}.")
        if not 0.0 < s.OUTLIER_Q < 1.0:
            raise ValueError(f"SiNGER.OUTLIER_Q is {s.OUTLIER_Q} but must lie strictly inside (0, 1), e.g. 0.95.")
        if not 0.0 < s.INFO_FRACTION <= 1.0:
            raise ValueError(f"SiNGER.INFO_FRACTION is {s.INFO_FRACTION} but must lie in (0, 1]; use 1.0 for the "
                             "paper's L_info.")
        if not s.ADAPTER_LR_SCALE > 0:
            raise ValueError(f"SiNGER.ADAPTER_LR_SCALE is {s.ADAPTER_LR_SCALE} but must be positive; 1.0 = the "
                             "paper's single learning rate.")
        if teacher_width is not None and s.RANK < 1:
            raise ValueError(f"SiNGER.RANK is {s.RANK} but must be a positive integer, e.g. 16.")
        if teacher_width is not None and s.RANK > teacher_width:
            raise ValueError(f"SiNGER.RANK {s.RANK} exceeds the width {teacher_width} of teacher "
                             f"'{cfg.DISTILLER.TEACHER}'; use a rank ≤ {teacher_width}.")
        if plan is not None and s.USE_INFO and s.INFO.lower() == "official" and len(plan.teacher) < 2:
            raise ValueError("SiNGER.INFO 'official' compares the final layer with an intermediate one; "
                             "add an intermediate layer to SiNGER.M_LAYERS or use INFO 'paper'.")

    def init_weight(self, t: int) -> torch.Tensor:
        """``W̃`` (CPU) of the source block of layer ``t`` (eq. 14), the adapter's initialisation (eq. 8, 16)."""
        block = self.teacher.blocks[self.plan.source_block(t)]
        return linearize_ffn(block, **self.linearize).cpu()

    def adapter_inits(self) -> dict[int, AdapterInit]:
        """Per layer the trained adapter and ``W̃`` of its source block (eq. 13's alignment compares the two)."""
        return {t: AdapterInit(self.adapters[str(t)], self.init_weight(t), self.plan.source_block(t))
                for t in self.plan.teacher}

    # ------------------------------------------------------------------------------------------ cost
    @classmethod
    def extra_flops(cls, teacher: ViTShape, student: ViTShape, *, teacher_patches: int, student_patches: int,
                    layers: list[int], kd_cls: bool = False, rank: int = 16, use_info: bool = True,
                    info: str | PaperInfo | None = "paper", info_fraction: float = 1.0, gram: str = "cosine",
                    **options) -> int:
        """Projections, adapters (on the teacher's patches) and the L_info part's own FLOPs (:meth:`flops_parts`).
        ``info`` is the part itself (a built distiller's :meth:`flops_options`) or its ``SiNGER.INFO`` name."""
        return sum(cls.flops_parts(teacher, student, teacher_patches=teacher_patches,
                                   student_patches=student_patches, layers=layers, kd_cls=kd_cls, rank=rank,
                                   use_info=use_info, info=info, info_fraction=info_fraction, gram=gram).values())

    @classmethod
    def flops_parts(cls, teacher: ViTShape, student: ViTShape, *, teacher_patches: int, student_patches: int,
                    layers: list[int], kd_cls: bool = False, rank: int = 16, use_info: bool = True,
                    info: str | PaperInfo | None = "paper", info_fraction: float = 1.0,
                    gram: str = "cosine") -> dict[str, int]:
        """:meth:`extra_flops` part by part: ``projections``, ``adapters`` (eq. 6, forward + backward) and ``info``
        (what the L_info part reports; the other parts have no matmul of their own)."""
        if isinstance(info, str):
            info = make_info(info, gram, fraction=info_fraction) if use_info else None
        p, d_t = teacher_patches, teacher.width
        adapter = linear_flops(p, d_t, rank) + linear_flops(p, rank, d_t)
        block = block_flops(teacher.tokens(p), d_t, teacher.mlp_hidden)
        return {"projections": Distiller.extra_flops(teacher, student, teacher_patches=teacher_patches,
                                                     student_patches=student_patches, layers=layers, kd_cls=kd_cls),
                "adapters": 3 * len(layers) * adapter,
                "info": info.flops(layers, p, d_t, block) if info is not None else 0}

    def flops_options(self) -> dict:
        """``kd_cls``, the rank and the L_info part itself (so :meth:`extra_flops` counts this distiller's parts)."""
        return {"kd_cls": self.kd_cls, "rank": self.rank, "info": self.info}

    # ------------------------------------------------------------------------------------------ training step
    def teacher_request(self) -> list[int]:
        """Teacher blocks to read: 𝒟 plus block l+1 of every intermediate l when L_info reuses its output."""
        nxt = {self.plan.next_block(t) for t in self.plan.teacher} - {None} if self.use_info else set()
        return sorted(set(self.plan.teacher) | nxt)

    def refine(self, t_feats: dict[int, torch.Tensor], tgrid: tuple[int, int]) -> dict[int, tuple]:
        """Per layer ``(split teacher tokens, F̂ patches)`` on the teacher's grid (eq. 6)."""
        return {t: (split, self.adapters[str(t)](patches))
                for t, (split, patches) in super().refine(t_feats, tgrid).items()}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 12 over 𝒟: ``λ_kd L_KD`` (eq. 9) ``+ λ_out L_outlier`` (eq. 10) ``+ λ_info L_info`` (eq. 11)."""
        sgrid = self.student_grid(images)
        s_feats = self.student(images, self.plan.student)
        t_feats, tgrid = self.teacher(images, self.teacher_request(), student_grid=sgrid)
        refined = self.refine(t_feats, tgrid)  # eq. 6
        units = self.units(t_feats, tgrid)
        per_layer: dict[str, list[torch.Tensor]] = {"kd": [], "outlier": [], "info": []}
        for t, s in self.plan.pairs():
            split, f_hat = refined[t]
            unit2 = units[t][0] ** 2
            target = self.teacher.to_student_grid(self.target(f_hat), tgrid, sgrid)
            proj, target = self.kd_tokens(self.student.split(s_feats[s], sgrid), target, split.cls, t)
            per_layer["kd"].append(self.kd_loss(proj, target) / unit2)  # eq. 9
            if self.use_outlier:
                per_layer["outlier"].append(outlier_loss(f_hat, self.q) / unit2)  # eq. 10
            if self.info is not None:
                per_layer["info"].append(self.info(self, t, split, f_hat, t_feats, tgrid, refined, units[t]))  # eq. 11
        terms = {k: self.reduce_layers(v) for k, v in per_layer.items() if v}
        weighted = {k: self.weights[k] * v for k, v in terms.items()}  # eq. 12
        self.keep(weighted)
        result = {"loss": sum(weighted.values())}
        result.update({f"loss_{k}": v.detach() for k, v in terms.items()})
        return result

    def info_term(self, t: int, split, f_hat: torch.Tensor, t_feats: dict[int, torch.Tensor],
                  tgrid: tuple[int, int], refined: dict[int, tuple], units: tuple = (1.0, 1.0)) -> torch.Tensor:
        """L_info of one layer (eq. 11, or the chosen part's variant) in the units ``(s_l, s_next)``."""
        return (self.info or PaperInfo())(self, t, split, f_hat, t_feats, tgrid, refined, units)

    def info_batch(self, batch: int) -> int:
        """Images of a local batch on which block l+1 is re-run for L_info (all of them unless ``INFO_FRACTION``)."""
        return (self.info or PaperInfo()).batch(batch)

    # ------------------------------------------------------------------------------------------ analysis
    @torch.no_grad()
    def refined_teacher(self, images: torch.Tensor, next_block: bool = True) -> dict[int, RefinedFeatures]:
        """Per layer ``F``, ``F̂`` (eq. 6) and, with ``next_block``, block l+1 on ``[prefix, F]`` and on
        ``[prefix, F̂]`` (eq. 11; :meth:`next_block_on`, as in L_info), on the teacher's grid."""
        sgrid = self.student_grid(images)
        nexts = {t: self.plan.next_block(t) if next_block else None for t in self.plan.teacher}
        request = sorted(set(self.plan.teacher) | (set(nexts.values()) - {None}))
        t_feats, tgrid = self.teacher(images, request, student_grid=sgrid)
        out = {}
        for t, (split, f_hat) in self.refine(t_feats, tgrid).items():
            nxt = nexts[t]
            out[t] = RefinedFeatures(split, f_hat, tgrid, None if nxt is None else t_feats[nxt],
                                     None if nxt is None else self.next_block_on(t, split.prefix, f_hat))
        return out


__all__ = ["SiNGER"]
