"""Optimizer, per-iteration LR schedule and gradient clipping.

Weight decay rule (``no_decay_bias_norm=True``, the default): a parameter gets **no** weight decay when

* it has ``ndim <= 1`` (biases, LayerNorm/BatchNorm weights, LayerScale gammas), or
* its name ends in ``bias``, or a dotted part of its name contains ``norm`` (``norm1.weight``, ``fc_norm.weight``), or
* a dotted part of its name is one of the token/position embeddings: ``pos_embed``, ``cls_token``, ``reg_token``,
  ``register_tokens``, ``mask_token``, ``dist_token``.

Everything else (linear/conv weights, adapter matrices) is decayed. ``no_decay_bias_norm=False`` decays everything as
the released code did (one group). Parameters with ``requires_grad=False`` are left out.

The schedule is per optimizer step. Its length must be the real number of optimizer steps,
``epochs * steps_per_epoch`` with ``steps_per_epoch = len(loader)`` of the per-rank loader (=
``ceil(dataset / global_batch)``), never derived from the per-GPU batch: the released code divided the dataset by the
per-GPU batch, which made the schedule ``world_size`` times too long and turned the warm-up into a staircase.
"""

from __future__ import annotations

import copy
import math
import warnings
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["NO_DECAY_KEYWORDS", "is_no_decay", "param_groups", "build_optimizer", "IterationScheduler", "clip_grad"]

NO_DECAY_KEYWORDS = ("pos_embed", "cls_token", "reg_token", "register_tokens", "mask_token", "dist_token")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "multistep", "constant")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """True when ``param`` is exempt from weight decay under the module's rule (see the module docstring)."""
    if param.ndim <= 1 or name == "bias" or name.endswith(".bias"):
        return True
    parts = [p.lower() for p in name.split(".")]
    return any("norm" in p for p in parts) or any(p in NO_DECAY_KEYWORDS for p in parts)


ParamsLike = torch.nn.Module | Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | Iterable[dict[str, Any]]


def _as_groups(params: ParamsLike) -> list[dict[str, Any]]:
    """Normalise the accepted inputs into a list of groups whose ``params`` are ``(name, tensor)`` pairs."""
    if isinstance(params, torch.nn.Module):
        return [{"params": list(params.named_parameters())}]
    items = list(params)
    if items and all(isinstance(g, dict) for g in items):
        groups = []
        for i, g in enumerate(items):
            if "params" not in g:
                raise ValueError(f"param group {i} has no 'params' entry; give each group dict a 'params' list.")
            groups.append({**g, "params": _named(g["params"], prefix=f"group{i}.")})
        return groups
    return [{"params": _named(items)}]


def _named(items: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    if isinstance(items, torch.nn.Module):
        return list(items.named_parameters())
    out: list[tuple[str, torch.Tensor]] = []
    for i, it in enumerate(items):
        if isinstance(it, torch.Tensor):
            out.append((f"{prefix}param{i}", it))  # unnamed: only the ndim rule can apply
        elif isinstance(it, tuple | list) and len(it) == 2 and isinstance(it[1], torch.Tensor):
            out.append((str(it[0]), it[1]))
        else:
            raise TypeError(f"cannot read parameter entry {type(it).__name__}; pass tensors or (name, tensor) pairs.")
    return out


def param_groups(params: ParamsLike, weight_decay: float, no_decay_bias_norm: bool = True) -> list[dict[str, Any]]:
    """Split parameters into decay / no-decay groups (trainable, de-duplicated).

    Each returned group has ``params``, ``weight_decay``, ``lr_scale`` (default 1.0, kept from an input group dict)
    and ``group_name``. An input group dict's own ``weight_decay`` replaces ``weight_decay`` for its decayed part.
    """
    seen: set[int] = set()
    out: list[dict[str, Any]] = []
    for gi, g in enumerate(_as_groups(params)):
        extra = {k: v for k, v in g.items() if k != "params"}
        wd = float(extra.pop("weight_decay", weight_decay))
        extra.setdefault("lr_scale", 1.0)
        base_name = extra.pop("group_name", f"group{gi}")
        decay, no_decay = [], []
        for name, p in g["params"]:
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if no_decay_bias_norm and is_no_decay(name, p) else decay).append(p)
        if decay:
            out.append({"params": decay, "weight_decay": wd, "group_name": f"{base_name}/decay", **extra})
        if no_decay:
            out.append({"params": no_decay, "weight_decay": 0.0, "group_name": f"{base_name}/no_decay", **extra})
    if not out:
        raise ValueError("the optimizer got no trainable parameters; check that the student/adapters require grad.")
    return out


def build_optimizer(
    params: ParamsLike,
    type: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.9,
    nesterov: bool = False,
    no_decay_bias_norm: bool = True,
    fused: bool | None = None,
    foreach: bool | None = None,
) -> torch.optim.Optimizer:
    """Build AdamW, Adam or SGD over weight-decay-aware param groups (see :func:`param_groups`).

    Args:
        params: a module, an iterable of ``(name, param)`` pairs or of tensors, or a list of group dicts (each with
            ``params`` and optionally ``lr_scale`` / ``weight_decay``).
        type: ``"adamw"``, ``"adam"`` or ``"sgd"`` (case-insensitive).
        lr: base learning rate for the global batch; each group starts at ``lr * lr_scale``.
        fused, foreach: passed to torch only when not ``None``.
    """
    kind = str(type).lower()
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer type '{type}'; valid types: {', '.join(OPTIMIZERS)}.")
    if fused and foreach:
        raise ValueError("fused=True and foreach=True exclude each other; set only one of them.")
    groups = param_groups(params, weight_decay, no_decay_bias_norm)
    for g in groups:
        g["lr"] = lr * float(g["lr_scale"])
    impl: dict[str, Any] = {k: v for k, v in (("fused", fused), ("foreach", foreach)) if v is not None}
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, **impl)
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps, **impl)


class IterationScheduler:
    """Per-iteration learning rate: linear warm-up, then cosine, multistep or constant.

    ``lr_at(step)`` for the optimizer step with 0-based index ``step`` (``W = warmup_steps``, ``T = total_steps``,
    ``f = warmup_start_factor``):

    * warm-up, ``step < W``: ``base * (f + (1 - f) * (step + 1) / W)`` (``f = 0`` gives the released ``base·(g+1)/W``:
      the first step is never at lr 0 and step ``W - 1`` reaches ``base``);
    * ``cosine``: ``final + (base - final) * (1 + cos(pi * p)) / 2`` with ``p = (step - W) / (T - W)`` clipped to
      ``[0, 1]``, so ``lr_at(W) = base`` and ``lr_at(T) = final`` (``final_lr`` is absolute);
    * ``multistep``: ``base * gamma ** (number of milestones <= step)`` (milestones in optimizer steps);
    * ``constant``: ``base``.

    The optimizer's groups get ``lr_at(step) * group.get("lr_scale", 1)``. Call :meth:`step` once after every optimizer
    step; construction applies ``lr_at(0)``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        schedule: str = "cosine",
        final_lr: float = 1e-8,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        warmup_start_factor: float = 0.0,
    ) -> None:
        kind = str(schedule).lower()
        if kind not in SCHEDULES:
            raise ValueError(f"unknown LR schedule '{schedule}'; valid schedules: {', '.join(SCHEDULES)}.")
        if total_steps < 1:
            raise ValueError(f"total_steps={total_steps} must be at least 1; check the epochs and the loader length.")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(
                f"warmup_steps={warmup_steps} must lie in [0, total_steps={total_steps}]; shorten the warm-up."
            )
        if not 0.0 <= warmup_start_factor <= 1.0:
            raise ValueError(f"warmup_start_factor={warmup_start_factor} must lie in [0, 1]; pick a fraction.")
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.schedule = kind
        self.final_lr = float(final_lr)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.warmup_start_factor = float(warmup_start_factor)
        self.last_step = 0
        self._apply()

    @classmethod
    def from_epochs(
        cls,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        epochs: int,
        steps_per_epoch: int,
        warmup_epochs: float = 0.0,
        milestone_epochs: Sequence[float] = (),
        **kwargs: Any,
    ) -> IterationScheduler:
        """Build from epoch-based settings; ``steps_per_epoch`` must be ``len(loader)`` of the per-rank loader."""
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={steps_per_epoch} must be at least 1; the loader is empty.")
        return cls(
            optimizer,
            base_lr,
            total_steps=int(epochs) * int(steps_per_epoch),
            warmup_steps=round(warmup_epochs * steps_per_epoch),
            milestones=[round(m * steps_per_epoch) for m in milestone_epochs],
            **kwargs,
        )

    def lr_at(self, step: int) -> float:
        """Base learning rate (before ``lr_scale``) of the optimizer step with index ``step``; a pure function."""
        w, base = self.warmup_steps, self.base_lr
        if step < w:
            f = self.warmup_start_factor
            return base * (f + (1.0 - f) * (step + 1) / w)
        if self.schedule == "cosine":
            span = self.total_steps - w
            p = 1.0 if span <= 0 else min(max((step - w) / span, 0.0), 1.0)
            return self.final_lr + 0.5 * (base - self.final_lr) * (1.0 + math.cos(math.pi * p))
        if self.schedule == "multistep":
            return base * self.gamma ** bisect_right(self.milestones, step)
        return base

    def _apply(self) -> None:
        lr = self.lr_at(self.last_step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * float(g.get("lr_scale", 1.0))

    def step(self) -> None:
        """Advance one optimizer step and set the groups' lr for the next one."""
        self.last_step += 1
        self._apply()

    @property
    def lr(self) -> float:
        """Current base lr (before ``lr_scale``)."""
        return self.lr_at(self.last_step)

    def get_last_lr(self) -> list[float]:
        """Current lr of every param group (torch scheduler API)."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Step counter plus the settings (for information; :meth:`load_state_dict` restores only the step)."""
        return {
            "last_step": self.last_step,
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "schedule": self.schedule,
            "final_lr": self.final_lr,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
            "warmup_start_factor": self.warmup_start_factor,
        }

    def same_rates(self, saved: Mapping[str, Any], steps: int) -> bool:
        """Whether the schedule ``saved`` (a :meth:`state_dict`) gave each of the optimizer steps ``0 … steps-1``
        exactly the learning rate this schedule gives it (then a run that trained those steps under ``saved`` is
        the same as one trained under this schedule from the start)."""
        other = copy.copy(self)
        for key, value in saved.items():
            if key != "last_step" and hasattr(other, key):
                setattr(other, key, list(value) if key == "milestones" else value)
        return all(other.lr_at(step) == self.lr_at(step) for step in range(int(steps)))

    def load_state_dict(self, state: Mapping[str, Any], quiet: bool = False) -> None:
        """Resume at the saved step; settings that differ from the saved ones are kept from this run, with a warning
        (``quiet``: none, for a caller that has checked and reported the change itself)."""
        changed = [k for k, v in self.state_dict().items() if k != "last_step" and k in state and state[k] != v]
        if changed and not quiet:
            warnings.warn(
                f"LR schedule settings changed since the checkpoint ({', '.join(changed)}); continuing with the new "
                "ones from the saved step.",
                RuntimeWarning,
                stacklevel=2,
            )
        self.last_step = int(state["last_step"])
        self._apply()


def clip_grad(params: Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0) -> float:
    """Clip gradients to ``max_norm`` and return their total norm before clipping.

    ``max_norm <= 0`` means no clipping: the gradients are left untouched and their norm is still returned (it is
    logged as ``grad_norm`` whatever the recipe). Under AMP call ``scaler.unscale_(optimizer)`` first. Returning a
    float synchronises with the GPU once.
    """
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm <= 0:
        norms = torch._foreach_norm([p.grad.detach() for p in grads], norm_type)
        return float(torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), norm_type))
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm, norm_type=norm_type))
