"""The ``Distiller`` base: a student, a frozen teacher outside the module tree, per-layer projections."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mdistiller.models import FrozenTeacher, TokenSplit, ViTFeatures
from mdistiller.models.flops import ViTShape, linear_flops
from mdistiller.models.indices import LayerIndexError

from .layers import map_layers, normalize_layers
from .losses import feature_kd_loss
from .units import SCALES, UNITS, RawUnits

__all__ = ["AdapterInit", "Distiller", "LayerPlan", "RefinedFeatures", "SCALES"]


def _quantile_ratio(patches: torch.Tensor, q: float) -> torch.Tensor:
    """``‖x_i‖ / q_α(‖x‖)`` per patch, the quantile taken per image (as in eq. 10)."""
    norms = patches.float().norm(dim=-1)
    return norms / torch.quantile(norms, q, dim=1, keepdim=True).clamp_min(1e-12)


def _inlier_cos(a: torch.Tensor, b: torch.Tensor, inlier: torch.Tensor) -> float:
    return F.cosine_similarity(a.float(), b.float(), dim=-1)[inlier].mean().item()


class LayerPlan:
    """Matched teacher/student block indices ``𝒟`` (0-based), sorted, last entry = deepest."""

    def __init__(self, teacher: Sequence[int], student: Sequence[int]) -> None:
        if len(teacher) != len(student):
            raise ValueError(f"teacher layers {list(teacher)} and student layers {list(student)} differ in length.")
        self.teacher = [int(t) for t in teacher]
        self.student = [int(s) for s in student]

    def pairs(self) -> list[tuple[int, int]]:
        """``(teacher block, student block)`` per distilled layer."""
        return list(zip(self.teacher, self.student))

    def next_block(self, t: int) -> int | None:
        """Block l+1 of distilled layer ``t`` (the one L_info runs and whose FFN initialises the adapter, eq. 8, 11),
        or None for the final layer, which has no next block in 𝒟."""
        return t + 1 if t != self.teacher[-1] else None

    def source_block(self, t: int) -> int:
        """The block whose FFN initialises the adapter of layer ``t`` (eq. 8): :meth:`next_block`, or ``t`` itself
        for the final layer (no next block; the released code does the same)."""
        nxt = self.next_block(t)
        return t if nxt is None else nxt

    def __repr__(self) -> str:
        return "LayerPlan(" + ", ".join(f"T{t}→S{s}" for t, s in self.pairs()) + ")"


@dataclass
class RefinedFeatures:
    """One distilled layer l of a refined teacher on the teacher's grid (:meth:`Distiller.refined_teacher`).

    ``original``: the teacher's tokens ``F_l`` split into prefix and patches; ``refined``: the patches of ``F̂_l``
    (eq. 6); ``next`` / ``next_refined``: teacher block l+1's full output on ``[prefix, F_l]`` (from the teacher pass)
    and on ``[prefix, F̂_l]`` (eq. 11), None for the final layer or when not asked for."""

    original: TokenSplit
    refined: torch.Tensor
    grid: tuple[int, int]
    next: torch.Tensor | None = None
    next_refined: torch.Tensor | None = None


@dataclass
class AdapterInit:
    """A trained adapter with what initialised it (eq. 7-8): ``weight`` is ``W̃`` of ``source_block`` (eq. 14)."""

    adapter: nn.Module
    weight: torch.Tensor
    source_block: int


def _in_range(key: str, layers: Sequence[int], depth: int, what: str) -> list[int]:
    """:func:`normalize_layers` of the config list ``key``, its error naming the key first."""
    try:
        return normalize_layers(list(layers), depth, what)
    except LayerIndexError as e:
        raise LayerIndexError(f"{key} {list(layers)}: {e}") from None


class Distiller(nn.Module):
    """Base of every method: ``forward(images in [0, 1]) → {"loss": weighted total, "<term>": value, …}``.

    The teacher is stored with ``object.__setattr__`` so it is *not* a submodule: ``parameters()``,
    ``state_dict()``, DDP and checkpoints see only the student, the projections ``P_l: Linear(d_S → d_T)`` and the
    method's own parameters. ``_apply`` forwards device moves to the teacher as well.

    Each method owns its construction: :meth:`plan_layers` (its layers 𝒟 from the config), :meth:`check_config`
    (its checks against the teacher's width), :meth:`deepest_teacher_block` (where the teacher may be cut),
    :meth:`from_config` (its constructor arguments), :meth:`teacher_request` (the blocks its forward reads) and
    :meth:`extra_flops` (its FLOPs beyond the teacher forward and the student step).
    """

    #: config key of the method's own intermediate layers l_inter (the last block is appended), read by
    #: :meth:`plan_layers` when ``DISTILLER.TEACHER_LAYERS`` is empty; "" = the last block alone
    inter_layers_key: str = ""

    #: config key(s) that choose the distillation layers, named in layer-plan errors
    layer_keys: str = "DISTILLER.TEACHER_LAYERS"

    #: whether the method distils from a teacher (the supervised baseline does not)
    needs_teacher: bool = True

    #: α of the per-image patch-norm quantile (eq. 10) the method's target and :meth:`refinement_stats` use
    q: float = 0.95

    #: units of the feature losses (a part of :mod:`.units`, chosen by :meth:`use_feature_scale`)
    feature_units: RawUnits = UNITS["none"]

    #: whether the method reads the student's final LayerNorm (otherwise it is frozen: it would get no gradient)
    uses_student_final_norm: bool = False

    #: whether ``forward`` takes the batch's targets as a second argument (supervised baseline)
    needs_targets: bool = False

    #: when True, ``forward`` keeps its weighted loss terms, with their graphs, in ``last_terms`` (per-term gradient
    #: norms); the trainer switches it on only for the steps it logs them
    keep_terms: bool = False
    last_terms: dict[str, torch.Tensor] = {}  # noqa: RUF012 - replaced (never mutated) per instance

    def __init__(self, student: nn.Module, teacher: FrozenTeacher | None, plan: LayerPlan, *,
                 kd_reduction: str = "token", kd_cls: bool = False, layer_reduction: str = "sum") -> None:
        super().__init__()
        self.student = student if isinstance(student, ViTFeatures) else ViTFeatures(student)
        object.__setattr__(self, "teacher", teacher)
        self.plan = plan
        self.kd_reduction = kd_reduction
        self.kd_cls = kd_cls
        self.layer_reduction = layer_reduction
        d_s = self.student.width
        self.proj = nn.ModuleDict({str(t): nn.Linear(d_s, teacher.width) for t in plan.teacher} if teacher else {})
        self._freeze_unused_student_parts(max(plan.student))

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def plan_layers(cls, cfg, teacher_depth: int, student_depth: int) -> LayerPlan:
        """The distillation layers 𝒟 and their student blocks (FitNet/SiNGER rule, see ``DISTILLER.TEACHER_LAYERS``).

        ``TEACHER_LAYERS`` (or the method's own :attr:`inter_layers_key`: ``FITNET.LAYERS``, ``SiNGER.M_LAYERS``)
        plus the teacher's last block, mapped by relative depth unless ``STUDENT_LAYERS`` is given. Raises
        ``IndexError``/``ValueError`` with one sentence for bad indices.
        """
        key = "DISTILLER.TEACHER_LAYERS" if cfg.DISTILLER.TEACHER_LAYERS else cls.inter_layers_key
        base = list(cfg.DISTILLER.TEACHER_LAYERS)
        if not base and key:
            section, name = key.split(".")
            base = list(cfg[section][name])
        named = _in_range(key, base, teacher_depth, "teacher")
        if named and named == [teacher_depth - 1]:
            raise ValueError(
                f"{key} {base} names only the teacher's last block ({teacher_depth - 1}), which is always distilled; "
                f"list intermediate blocks only (0…{teacher_depth - 2}), or leave it empty for the last block alone.")
        teacher = normalize_layers(base + [teacher_depth - 1], teacher_depth)
        if cfg.DISTILLER.STUDENT_LAYERS:
            student = _in_range("DISTILLER.STUDENT_LAYERS", cfg.DISTILLER.STUDENT_LAYERS, student_depth, "student")
            if len(student) != len(teacher):
                raise ValueError(
                    f"DISTILLER.STUDENT_LAYERS {list(cfg.DISTILLER.STUDENT_LAYERS)} must give one distinct student "
                    f"block for each teacher layer {teacher} (the teacher's last block is always included)."
                )
        else:
            student = map_layers(teacher, teacher_depth, student_depth)
        return LayerPlan(teacher, student)

    @classmethod
    def check_config(cls, cfg, teacher_width: int | None = None, plan: LayerPlan | None = None) -> None:
        """The method's own config checks (its section's values; against the teacher's width and the layer plan when
        given); raise ``ValueError`` with one sentence."""

    @classmethod
    def deepest_teacher_block(cls, cfg, plan: LayerPlan) -> int:
        """The deepest teacher block the method needs to be built and run (the teacher is cut after it)."""
        return max(plan.teacher)

    @staticmethod
    def common_kwargs(cfg) -> dict:
        """The ``DISTILLER.*`` options every distilling method takes (L_KD reduction, CLS, layer reduction)."""
        d = cfg.DISTILLER
        return dict(kd_reduction=d.KD_REDUCTION.lower(), kd_cls=bool(d.KD_CLS),
                    layer_reduction=d.LAYER_REDUCTION.lower())

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: FrozenTeacher | None, plan: LayerPlan) -> Distiller:
        """Build the method from its config section (the base: no options beyond :meth:`common_kwargs`)."""
        return cls(student, teacher, plan, **cls.common_kwargs(cfg))

    def teacher_request(self) -> list[int]:
        """The teacher blocks one training step reads (the layers 𝒟 unless the method needs more)."""
        return list(self.plan.teacher)

    # ------------------------------------------------------------------------------------------ cost
    @classmethod
    def extra_flops(cls, teacher: ViTShape, student: ViTShape, *, teacher_patches: int, student_patches: int,
                    layers: list[int], kd_cls: bool = False, **options) -> int:
        """Matmul FLOPs per image of the method's own work (see :mod:`mdistiller.models.flops`): here the trained
        projections ``P_l: Linear(d_S → d_T)`` on the student's grid (``+1`` token with ``kd_cls``).
        ``options`` are the method's own (:meth:`flops_options`); others are ignored."""
        kd_tokens = student_patches + (1 if kd_cls else 0)
        return 3 * len(layers) * linear_flops(kd_tokens, student.width, teacher.width)

    def flops_options(self) -> dict:
        """This distiller's options for :meth:`extra_flops`."""
        return {"kd_cls": self.kd_cls}

    # ------------------------------------------------------------------------------------------ plumbing
    def _freeze_unused_student_parts(self, deepest: int) -> None:
        m = self.student.model
        unused: list[nn.Module] = [m.blocks[i] for i in range(deepest + 1, len(m.blocks))]
        for name in ("fc_norm", "head", "attn_pool"):
            mod = getattr(m, name, None)
            if isinstance(mod, nn.Module):
                unused.append(mod)
        if not self.uses_student_final_norm:
            unused.append(m.norm)
        for mod in unused:
            mod.requires_grad_(False)

    def _apply(self, fn: Callable, recurse: bool = True):  # type: ignore[override]
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> Distiller:
        """Set the training mode of the module tree; the teacher (outside it) stays in eval mode whatever ``mode``."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.train(False)
        return self

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters the optimizer owns: every parameter of this module with ``requires_grad``."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def optimizer_groups(self) -> list:
        """What the optimizer gets: the trainable parameters (one rate), or group dicts with an ``lr_scale``."""
        return self.trainable_parameters()

    def gradient_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameter groups whose per-term gradient norms are logged (``LOG.GRAD_TERMS_EVERY_STEPS``)."""
        return {"student": [p for _, p in self.trainable_parameters()]}

    def keep(self, weighted_terms: dict[str, torch.Tensor]) -> None:
        """Remember this forward's λ-weighted loss terms (with their graphs) when ``keep_terms`` is on."""
        if self.keep_terms:
            self.last_terms = weighted_terms

    def term_grad_norms(self) -> dict[str, float]:
        """``grad/<term>/<group>``: ‖∇ λ·L_term‖ over each of :meth:`gradient_groups` for the forward just run with
        ``keep_terms`` on (rank-local, unclipped, unscaled). One extra backward per term through the retained graph;
        nothing is accumulated into ``.grad``. Clears ``last_terms`` and ``keep_terms``."""
        terms, self.last_terms, self.keep_terms = self.last_terms, {}, False
        groups = {g: ps for g, ps in self.gradient_groups().items() if ps}
        params = [p for ps in groups.values() for p in ps]
        out: dict[str, float] = {}
        for name, term in terms.items():
            if not term.requires_grad:
                continue
            grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
            sq = {id(p): g.detach().float().pow(2).sum() for p, g in zip(params, grads) if g is not None}
            for group, ps in groups.items():
                total = sum((sq[id(p)] for p in ps if id(p) in sq), torch.zeros((), device=params[0].device))
                out[f"grad/{name}/{group}"] = float(total.sqrt())
        return out

    def reduce_layers(self, terms: list[torch.Tensor]) -> torch.Tensor:
        """Aggregate per-layer terms over 𝒟: a sum (eq. 9-11) or a mean (released code)."""
        total = torch.stack(terms).sum()
        return total / len(terms) if self.layer_reduction == "mean" else total

    def student_grid(self, images: torch.Tensor) -> tuple[int, int]:
        """The student's patch grid ``(h, w)`` for ``images [B, C, H, W]``."""
        return self.student.grid(tuple(images.shape[-2:]))

    def kd_tokens(self, student_tokens: TokenSplit, teacher_patches: torch.Tensor, teacher_cls: torch.Tensor | None,
                  layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P_l(F^S), target)`` token tensors for L_KD; CLS is prepended to both when ``kd_cls`` is on."""
        s = student_tokens.patches
        t = teacher_patches
        if self.kd_cls and student_tokens.cls is not None and teacher_cls is not None:
            s = torch.cat([student_tokens.cls[:, None], s], dim=1)
            t = torch.cat([teacher_cls[:, None].to(t.dtype), t], dim=1)
        return self.proj[str(layer)](s), t

    def kd_loss(self, projected: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """L_KD (eq. 1, 9) in this distiller's reduction, over the tokens where ``mask [B, N]`` holds (all: None)."""
        return feature_kd_loss(projected, target, self.kd_reduction, mask)

    # ------------------------------------------------------------------------------------------ API
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """One training step's losses: ``loss`` (the total to back-propagate) and detached ``loss_<term>`` entries
        to log; each method implements it."""
        raise NotImplementedError

    @property
    def changes_target(self) -> bool:
        """Whether the method's L_KD target differs from the teacher (SiNGER's ``F̂``, FitNet's norm clamp):
        then :meth:`agreement` logs :meth:`refinement_stats` too."""
        return False

    def next_block_on(self, t: int, prefix: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Teacher block l+1 of layer ``t`` (:meth:`LayerPlan.next_block`) on ``[prefix, patches]``: eq. 11's
        ``block_{l+1}(F̂_l)`` — the one place this is computed (L_info, :meth:`refined_teacher`,
        :meth:`refinement_stats`). Gradients reach ``patches`` only (the teacher is frozen)."""
        block = self.teacher.blocks[self.plan.next_block(t)]
        return block(torch.cat([prefix.to(patches.dtype), patches], dim=1))

    def refined_teacher(self, images: torch.Tensor, next_block: bool = True) -> dict[int, RefinedFeatures]:
        """Per distilled layer, ``F``, the refined ``F̂`` and (``next_block``) block l+1's outputs on both
        (:class:`RefinedFeatures`, teacher grid). This method does not refine the teacher: the base returns an
        empty dict (SiNGER overrides it)."""
        return {}

    def adapter_inits(self) -> dict[int, AdapterInit]:
        """Per distilled layer, the trained adapter and the ``W̃`` that initialised it (eq. 7-8, for the alignment of
        eq. 13). This method has no adapters: the base returns an empty dict (SiNGER overrides it)."""
        return {}

    def refine(self, t_feats: dict[int, torch.Tensor], tgrid: tuple[int, int]) -> dict[int, tuple]:
        """Per layer ``(split teacher tokens, target patches)`` on the teacher's grid: the teacher's own patches here;
        SiNGER's adapters (eq. 6) and FitNet's norm clamp override it."""
        out = {}
        for t in self.plan.teacher:
            split = self.teacher.net.split(t_feats[t], tgrid)
            out[t] = (split, split.patches)
        return out

    def distill_targets(self, images: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per teacher layer: ``(original teacher patches, the method's target)`` on the student grid — the
        teacher itself for FitNet, the refined ``F̂`` for SiNGER, the clamped teacher for FitNet's clamp control
        (all through :meth:`refine`)."""
        sgrid = self.student_grid(images)
        t_feats, tgrid = self.teacher(images, self.plan.teacher, student_grid=sgrid)
        out = {}
        for t, (split, target) in self.refine(t_feats, tgrid).items():
            out[t] = tuple(self.teacher.to_student_grid(x, tgrid, sgrid) for x in (split.patches, target))
        return out

    # ------------------------------------------------------------------------------------------ scale-aware units
    def use_feature_scale(self, scale: str) -> None:
        """Express the feature losses in units of a fixed per-layer scale (``"median"``) or in the teacher's raw units
        (``"none"``): the part :data:`.units.UNITS` holds under ``scale``. ``"median"`` keeps the buffer
        ``feature_scale [layer, (F_l, block l+1's output)]``, zero until :meth:`units` measures it on the first
        training batch, so a checkpoint resumes in the same units."""
        if scale not in UNITS:
            raise ValueError(f"feature scale {scale!r}: choose one of {SCALES}.")
        self.feature_units = UNITS[scale]
        self.feature_units.attach(self)

    @property
    def scale(self) -> str:
        """The name of the feature units (:data:`SCALES`)."""
        return self.feature_units.name

    def units(self, t_feats: dict[int, torch.Tensor], tgrid: tuple[int, int]) -> dict[int, tuple]:
        """Per layer ``(s_l, s_next)``: the feature scale of ``F_l`` and of block l+1's output (``F_l`` again for the
        final layer, or when the step does not read block l+1) in which the terms are expressed — ``1.0`` in the
        raw units."""
        return self.feature_units.scales(self, t_feats, tgrid)

    @torch.no_grad()
    def measure_scale(self, t_feats: dict[int, torch.Tensor], tgrid: tuple[int, int]) -> torch.Tensor:
        """Median patch norm of every ``F_l`` and of block l+1's output on this batch, averaged over ranks."""
        def median_norm(layer: int) -> torch.Tensor:
            return self.teacher.net.split(t_feats[layer], tgrid).patches.float().norm(dim=-1).median()

        def next_or_own(t: int) -> int:
            nxt = self.plan.next_block(t)
            return nxt if nxt in t_feats else t

        rows = [torch.stack([median_norm(t), median_norm(next_or_own(t))]) for t in self.plan.teacher]
        scale = torch.stack(rows).to(self.feature_scale.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(scale)
            scale /= torch.distributed.get_world_size()
        return scale.clamp_min(1e-12)

    # ------------------------------------------------------------------------------------------ diagnostics
    @torch.no_grad()
    def agreement(self, images: torch.Tensor) -> dict[str, float]:
        """Teacher–student feature agreement on a held-out batch (no "accuracy" of an untrained head).

        Per layer: mean patch cosine and relative squared error ``‖P(F^S) − T‖² / ‖T‖²`` against the original
        teacher (``*_teacher``) and against the method's target (``*_target``; differs for SiNGER and the clamp),
        plus ``refine/L<l>/<stat>`` from :meth:`refinement_stats` when :attr:`changes_target`.
        """
        sgrid = self.student_grid(images)
        s_feats = self.student(images, self.plan.student)
        targets = self.distill_targets(images)
        out: dict[str, float] = {}
        for t, s in self.plan.pairs():
            proj = self.proj[str(t)](self.student.split(s_feats[s], sgrid).patches).float()
            for tag, ref in zip(("teacher", "target"), targets[t]):
                ref = ref.float()
                out[f"cos_{tag}/L{t}"] = F.cosine_similarity(proj, ref, dim=-1).mean().item()
                out[f"relerr_{tag}/L{t}"] = ((proj - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-12)).item()
        if self.changes_target:
            for t, stats in self.refinement_stats(images).items():
                out.update({f"refine/L{t}/{k}": v for k, v in stats.items()})
        return out

    @torch.no_grad()
    def refinement_stats(self, images: torch.Tensor, q: float | None = None) -> dict[int, dict[str, float]]:
        """Does the target refine rather than rewrite the teacher? Per distilled layer l, on ``images``:

        The quantile is ``q`` (default: this distiller's α), the same yardstick for every mode when given.

        * outliers = the emulated-artifact patches when the teacher carries an implant, else the patches of ``F_l``
          above their image's α-quantile of ``‖F_l‖`` (𝒪_l of eq. 10 on the original features); the rest are inliers;
        * ``ratio_before`` / ``ratio_after`` (mean) and ``ratio_after_max``: an outlier's norm over its image's
          α-quantile of patch norms, in ``F_l`` and in the target ``F̂_l`` (:meth:`refine`);
        * ``cos_inlier``: mean cos(F̂_l, F_l) over inliers; ``cos_next`` / ``cos_final`` (intermediate l): the same
          after teacher block l+1, and after the blocks up to the final distilled one, run on ``F̂_l`` vs ``F_l``.
        """
        was_training = self.training
        self.eval()
        teacher, plan, q = self.teacher, self.plan, float(self.q if q is None else q)
        final = plan.teacher[-1]
        sgrid = self.student_grid(images)
        layers = sorted(set(plan.teacher) | {plan.source_block(t) for t in plan.teacher})
        t_feats, tgrid = teacher(images, layers, student_grid=sgrid)
        implant = getattr(teacher, "implant", None)
        known = implant.last_mask if implant is not None and implant.last_mask is not None else None
        out: dict[int, dict[str, float]] = {}
        for t, (split, f_hat) in self.refine(t_feats, tgrid).items():
            f = split.patches
            before = _quantile_ratio(f, q)
            outlier = known.to(f.device) if known is not None else before > 1.0
            inlier = ~outlier
            after = _quantile_ratio(f_hat, q)
            stats = {"outliers": float(outlier.sum().item()), "cos_inlier": _inlier_cos(f_hat, f, inlier)}
            if outlier.any():
                stats.update(ratio_before=before[outlier].mean().item(), ratio_after=after[outlier].mean().item(),
                             ratio_after_max=after[outlier].max().item())
            nxt = plan.next_block(t)
            if nxt is not None:
                x_hat, x = self.next_block_on(t, split.prefix, f_hat), teacher.blocks[nxt](t_feats[t])
                stats["cos_next"] = _inlier_cos(teacher.net.split(x_hat, tgrid).patches,
                                                teacher.net.split(x, tgrid).patches, inlier)
                for i in range(nxt + 1, final + 1):
                    x_hat, x = teacher.blocks[i](x_hat), teacher.blocks[i](x)
                stats["cos_final"] = _inlier_cos(teacher.net.split(x_hat, tgrid).patches,
                                                 teacher.net.split(x, tgrid).patches, inlier)
            out[t] = stats
        self.train(was_training)
        return out

    def export_student(self, path: str | Path, model_name: str, create_kwargs: dict | None = None) -> Path:
        """Write the student as a timm-loadable ``.safetensors`` (plus ``<file>.json`` with the create kwargs).

        Load it with ``timm.create_model(timm_name, pretrained=True, num_classes=0,
        pretrained_cfg_overlay=dict(file=path), **kwargs)`` or ``mdistiller.models.build_model(name, path, ...)``.
        """
        from mdistiller.models.export import write_student_file

        return write_student_file(path, self.student.model.state_dict(), model_name, create_kwargs)
