"""The three probe tasks (classification, segmentation, depth) behind one interface, plus the online augmentations.

A :class:`Task` says, for one kind of target, everything the engine (:mod:`mdistiller.eval.runner`) needs and
nothing else: which features it reads, how to pull its target out of a dataset item, how to build K heads
(one per learning rate) that train together on the same features, their summed loss, and a metric accumulator
per head. The engine owns every loop (extraction, training, validation, test), so no task has its own.

Heads (all linear in the frozen features, DINOv2's linear protocols):

* classification: :class:`~mdistiller.eval.heads.LinearHeadGrid` (one GEMM for all K learning rates);
* segmentation: K × (BatchNorm + 1×1 conv) on the patch grid, logits bilinearly upsampled, CE with ignore index;
* depth: K × (BatchNorm + 1×1 conv) on patch ⊕ CLS, 256 uniform bins decoded by soft-argmax (or regression).

Online augmentation on batches of fixed-size tensors (for datasets without their own training transform, e.g.
toy scenes and Fashion-MNIST): :func:`random_resized_crop` + flip for classification and
:func:`paired_random_crop` (the same crop and flip for the image and its mask/depth) for dense targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mdistiller.eval.heads import DepthHead, LinearHeadGrid, SegHead, _lr_name
from mdistiller.eval.metrics import ConfusionMatrix, DepthMetrics, all_reduce_, topk_correct

__all__ = [
    "ClassificationTask",
    "DenseTask",
    "DepthTask",
    "HeadBank",
    "SegmentationTask",
    "Task",
    "depth_bounds",
    "paired_random_crop",
    "random_resized_crop",
]

# DINOv2 linear eval grid (scaled by global_batch / 256 for SGD)
DINOV2_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)


# --------------------------------------------------------------------------------------------------
# augmentation on tensors
# --------------------------------------------------------------------------------------------------


def _rrc_box(h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float],
             gen: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling (10 tries, then a centre crop within the ratio range)."""
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=gen).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        ar = math.exp(log_r[0] + (log_r[1] - log_r[0]) * u[1])
        cw, ch = round(math.sqrt(target * ar)), round(math.sqrt(target / ar))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def random_resized_crop(images: torch.Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> torch.Tensor:
    """Per-image RandomResizedCrop (torchvision's sampling) back to the input size, then a random h-flip."""
    b, _, h, w = images.shape
    out = torch.empty_like(images)
    for i in range(b):
        t, l, ch, cw = _rrc_box(h, w, scale, ratio, gen)
        out[i] = _resize(images[i : i + 1, :, t : t + ch, l : l + cw], (h, w), "bilinear")[0].clamp_(0, 1)
        if flip and bool(torch.rand((), generator=gen) < 0.5):
            out[i] = out[i].flip(-1)
    return out


def paired_random_crop(
    images: torch.Tensor, target: torch.Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.25, 1.0),
    flip: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random square crop (area fraction in ``scale``), resize and h-flip for images and dense targets.

    ``target [B, H, W]`` (mask or depth) is resized with NEAREST, so no new label or depth value appears.
    """
    b, _, h, w = images.shape
    out_i, out_t = torch.empty_like(images), torch.empty_like(target)
    for i in range(b):
        u = float(torch.rand((), generator=gen))
        s = math.sqrt(scale[0] + (scale[1] - scale[0]) * u)
        ch, cw = max(1, round(h * s)), max(1, round(w * s))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        img = _resize(images[i : i + 1, :, top : top + ch, left : left + cw], (h, w), "bilinear")[0].clamp_(0, 1)
        tgt = target[i : i + 1, None, top : top + ch, left : left + cw].float()
        tgt = _resize(tgt, (h, w), "nearest")[0, 0].to(target.dtype)
        if flip and bool(torch.rand((), generator=gen) < 0.5):
            img, tgt = img.flip(-1), tgt.flip(-1)
        out_i[i], out_t[i] = img, tgt
    return out_i, out_t


# --------------------------------------------------------------------------------------------------
# heads
# --------------------------------------------------------------------------------------------------


class HeadBank(nn.Module):
    """K heads of the same kind, one per learning rate, trained together on the same features."""

    def __init__(self, heads: Sequence[nn.Module], lrs: Sequence[float]) -> None:
        super().__init__()
        self.lrs = [float(v) for v in lrs]
        self.names = [_lr_name(v) for v in self.lrs]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"learning rates {self.lrs} repeat; list each learning rate once.")
        if len(heads) != len(self.lrs):
            raise ValueError(f"got {len(heads)} heads for {len(self.lrs)} learning rates; give one head per rate.")
        self.bank = nn.ModuleList(heads)  # (module names cannot hold the '.' of 'lr_0.001')

    def __getitem__(self, name: str) -> nn.Module:
        """The head called ``name`` (e.g. ``"lr_0.001"``)."""
        if name not in self.names:
            raise KeyError(f"unknown head '{name}'; valid names: {', '.join(self.names)}.")
        return self.bank[self.names.index(name)]

    def param_groups(self, lr_scale: float = 1.0, weight_decay: float = 0.0) -> list[dict]:
        """One optimizer group per head with that head's learning rate."""
        return [{"params": list(h.parameters()), "lr": lr * lr_scale, "weight_decay": weight_decay, "name": n}
                for n, lr, h in zip(self.names, self.lrs, self.bank, strict=True)]

    def lr_of(self, name: str) -> float:
        """The (unscaled) learning rate of the head called ``name``."""
        return self.lrs[self.names.index(name)]


def _check_lrs(lrs: Sequence[float]) -> list[float]:
    out = [float(v) for v in lrs]
    if not out or any(not (v > 0 and math.isfinite(v)) for v in out):
        raise ValueError(f"learning rates must be a non-empty list of positive numbers, got {list(lrs)}.")
    return out


# --------------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------------


class Task:
    """Interface of a probe task (see the module docstring). Subclasses set the class attributes."""

    kind: str = ""
    dense: bool = False
    selection_metric: str = ""
    higher_is_better: bool = True
    optimizer: dict[str, Any] = {}
    default_lrs: tuple[float, ...] = ()

    def target_of(self, targets: Any) -> torch.Tensor:
        """The task's target tensor ``[B, ...]`` from a collated batch of dataset targets."""
        raise NotImplementedError

    def target_field(self) -> tuple[str, Any]:
        """``(name, numpy dtype)`` under which the target is cached."""
        raise NotImplementedError

    def build_heads(self, in_dim: int, lrs: Sequence[float]) -> nn.Module:
        """K heads on ``in_dim``-dimensional features, one per learning rate in ``lrs``, trained together."""
        raise NotImplementedError

    def loss(self, heads: nn.Module, feats: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Sum over heads of each head's own mean loss (each head receives exactly its own gradient)."""
        raise NotImplementedError

    def new_meter(self, names: Sequence[str], device: torch.device, class_mask: torch.Tensor | None = None) -> Meter:
        """A fresh accumulator for ``names``; ``class_mask [C]`` restricts a classifier's argmax (ImageNet-R)."""
        raise NotImplementedError

    def predict(self, heads: nn.Module, feats: Mapping[str, torch.Tensor], names: Sequence[str],
                out_size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Per-head outputs used by the meter (logits for classification/segmentation, metres for depth)."""
        raise NotImplementedError

    def augment(self, images: torch.Tensor, target: torch.Tensor,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Online tensor augmentation (for datasets without their own training transform)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Head and metric description recorded in the result JSON."""
        raise NotImplementedError


class Meter:
    """Per-head metric accumulator whose state reduces exactly across ranks."""

    def update(self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor) -> None:
        """Accumulate one batch: ``outputs`` maps each head's name to its prediction for ``target``."""
        raise NotImplementedError

    def all_reduce(self) -> Meter:
        """Sum the accumulated state over all ranks in place (a no-op without distributed); returns self."""
        raise NotImplementedError

    def compute(self) -> dict[str, dict[str, Any]]:
        """``{head name: {metric: value}}`` from everything accumulated so far."""
        raise NotImplementedError


class PerHeadMeter(Meter):
    """One accumulator per head (a ``ConfusionMatrix``, ``DepthMetrics``, … built by ``make``), each fed its
    head's output after ``prepare`` (e.g. ``argmax`` over classes); their states reduce across ranks."""

    def __init__(self, names: Sequence[str], make: Callable[[], Any],
                 prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.meters = {n: make() for n in names}
        self.prepare = prepare

    def update(self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor) -> None:
        """Feed each head's output (after ``prepare``) and ``target`` to that head's accumulator."""
        for n, m in self.meters.items():
            out = outputs[n]
            m.update(self.prepare(out) if self.prepare is not None else out, target)

    def all_reduce(self) -> Meter:
        """All-reduce every head's accumulator in place; returns self."""
        for m in self.meters.values():
            m.all_reduce()
        return self

    def compute(self) -> dict[str, dict[str, Any]]:
        """``{head name: that accumulator's compute()}``."""
        return {n: m.compute() for n, m in self.meters.items()}


class _TopKMeter(Meter):
    def __init__(self, names: Sequence[str], device: torch.device, class_mask: torch.Tensor | None) -> None:
        self.names = list(names)
        self.state = torch.zeros(len(self.names), 3, dtype=torch.float64, device=device)  # n, top1, top5
        self.class_mask = class_mask

    def update(self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor) -> None:
        for k, name in enumerate(self.names):
            logits = outputs[name]
            if self.class_mask is not None:
                logits = logits.masked_fill(~self.class_mask.to(logits.device), float("-inf"))
            c = topk_correct(logits, target, (1, 5))
            self.state[k] += torch.tensor([len(target), c[1], c[5]], dtype=torch.float64, device=self.state.device)

    def all_reduce(self) -> Meter:
        all_reduce_(self.state)
        return self

    def compute(self) -> dict[str, dict[str, Any]]:
        out = {}
        for k, name in enumerate(self.names):
            n, c1, c5 = self.state[k].tolist()
            out[name] = {"top1": 100.0 * c1 / n if n else float("nan"),
                         "top5": 100.0 * c5 / n if n else float("nan"), "num_samples": int(n)}
        return out


class ClassificationTask(Task):
    """Linear classification on a global feature vector (CLS / mean patch / both)."""

    kind = "cls"
    selection_metric = "top1"
    higher_is_better = True
    optimizer = {"type": "sgd", "momentum": 0.9, "weight_decay": 0.0, "lr_scale": "global_batch/256",
                 "schedule": "cosine to 0, per step", "warmup_frac": 0.0}
    default_lrs = DINOV2_LRS

    def __init__(self, num_classes: int) -> None:
        if int(num_classes) < 2:
            raise ValueError(f"classification needs at least 2 classes, got {num_classes}.")
        self.num_classes = int(num_classes)

    def target_of(self, targets: Any) -> torch.Tensor:
        """Integer labels ``[B]`` (``targets['label']`` or the targets themselves), checked against ``num_classes``."""
        t = targets["label"] if isinstance(targets, Mapping) else targets
        t = torch.as_tensor(t).long()
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_classes):
            raise ValueError(
                f"labels outside [0, {self.num_classes - 1}] (e.g. {int(t.min())}..{int(t.max())}); the dataset's "
                "num_classes does not match its labels."
            )
        return t

    def target_field(self) -> tuple[str, Any]:
        """Labels are cached as ``('label', int64)``."""
        return "label", np.int64

    def build_heads(self, in_dim: int, lrs: Sequence[float]) -> nn.Module:
        """One :class:`LinearHeadGrid` holding a classifier per learning rate."""
        return LinearHeadGrid(in_dim, self.num_classes, _check_lrs(lrs))

    def loss(self, heads: nn.Module, feats: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Sum of the heads' mean cross-entropies on the global feature ``feats['feat']``."""
        return heads.loss(heads.forward_stacked(feats["feat"]), target)

    def predict(self, heads: nn.Module, feats: Mapping[str, torch.Tensor], names: Sequence[str],
                out_size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Logits ``[B, C]`` of each head in ``names`` (``out_size`` is unused)."""
        out = heads(feats["feat"])
        return {n: out[n] for n in names}

    def new_meter(self, names: Sequence[str], device: torch.device,
                  class_mask: torch.Tensor | None = None) -> Meter:
        """A top-1/top-5 accumulator per head; ``class_mask`` restricts the predictions to a class subset."""
        return _TopKMeter(names, device, class_mask)

    def augment(self, images: torch.Tensor, target: torch.Tensor,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random resized crop + flip of the images (:func:`random_resized_crop`); labels unchanged."""
        return random_resized_crop(images, gen), target

    def describe(self) -> dict[str, Any]:
        """Head, initialisation, loss and metric description recorded in the result JSON."""
        return {"type": "linear", "classes": self.num_classes, "init": "W ~ N(0, 0.01^2), b = 0",
                "loss": "cross-entropy", "metrics": "top-1 / top-5 accuracy (%) over all test images",
                "metric_source": "mdistiller.eval.metrics.topk_correct"}


def _resize_target(target: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or tuple(target.shape[-2:]) == (size, size):
        return target
    return F.interpolate(target[:, None].float(), size=(size, size), mode="nearest")[:, 0].to(target.dtype)


class DenseTask(Task):
    """What the dense probes (segmentation, depth) share: patch-grid targets and the AdamW recipe below."""

    dense = True
    optimizer = {"type": "adamw", "weight_decay": 1e-4, "lr_scale": 1.0, "schedule": "cosine to 0, per step",
                 "warmup_frac": 0.05}
    default_lrs = (3e-4, 1e-3, 3e-3)


class SegmentationTask(DenseTask):
    """Linear segmentation: BN + 1×1 conv per head on the patch grid, CE with an ignore index (dataset mIoU)."""

    kind = "seg"
    selection_metric = "miou"
    higher_is_better = True

    def __init__(self, num_classes: int, ignore_index: int = 255, loss_size: int | None = None) -> None:
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.loss_size = loss_size

    def target_of(self, targets: Any) -> torch.Tensor:
        """The class mask ``[B, H, W]`` (long) from ``targets['mask']``; a clear error when there is none."""
        if not isinstance(targets, Mapping) or "mask" not in targets:
            raise ValueError("segmentation needs a dataset whose targets hold a 'mask'; use ade20k or toy_scenes.")
        return targets["mask"].long()

    def target_field(self) -> tuple[str, Any]:
        """Masks are cached as ``('mask', uint8)``, or int32 when the class count or the ignore index exceeds 255."""
        return "mask", (np.uint8 if max(self.num_classes, self.ignore_index) < 256 else np.int32)

    def build_heads(self, in_dim: int, lrs: Sequence[float]) -> nn.Module:
        """A :class:`HeadBank` of :class:`SegHead` (BatchNorm + 1×1 conv), one per learning rate."""
        lrs = _check_lrs(lrs)
        return HeadBank([SegHead(in_dim, self.num_classes) for _ in lrs], lrs)

    def loss(self, heads: nn.Module, feats: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Sum over heads of the pixel cross-entropy (ignore index), at ``loss_size`` when set, else at target size."""
        target = _resize_target(target, self.loss_size)
        size = tuple(target.shape[-2:])
        return sum(h.loss(h(feats["patch"], size), target, self.ignore_index)
                   for h in heads.bank)  # type: ignore[return-value]

    def predict(self, heads: nn.Module, feats: Mapping[str, torch.Tensor], names: Sequence[str],
                out_size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Logits ``[B, C, H, W]`` of each head in ``names``, upsampled to ``out_size``."""
        return {n: heads[n](feats["patch"], out_size) for n in names}

    def new_meter(self, names: Sequence[str], device: torch.device, class_mask: torch.Tensor | None = None) -> Meter:
        """A :class:`ConfusionMatrix` per head, fed the argmax over classes (dataset-level mIoU)."""
        return PerHeadMeter(names, lambda: ConfusionMatrix(self.num_classes, self.ignore_index, device=device),
                            prepare=lambda logits: logits.argmax(1))

    def augment(self, images: torch.Tensor, target: torch.Tensor,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The same random crop and flip for images and masks (:func:`paired_random_crop`)."""
        return paired_random_crop(images, target, gen)

    def describe(self) -> dict[str, Any]:
        """Head, loss and metric description recorded in the result JSON."""
        return {"type": "BatchNorm2d + Conv1x1 on the patch grid, bilinear upsampling after the conv",
                "classes": self.num_classes, "ignore_index": self.ignore_index,
                "loss": "pixel cross-entropy (ignore_index)", "loss_size": self.loss_size or "target size",
                "metrics": "dataset-level mIoU from one confusion matrix over all test pixels (classes absent from "
                           "targets and predictions excluded), pixel accuracy, mean class accuracy",
                "metric_source": "mdistiller.eval.metrics.ConfusionMatrix"}


def depth_bounds(depth_range: tuple[float, float]) -> tuple[float, float]:
    """Head/metric range ``(lo, hi)`` slightly wider than the dataset's, so depths exactly at the limits count."""
    lo, hi = float(depth_range[0]), float(depth_range[1])
    pad = 1e-3 * (hi - lo)
    return max(lo - pad, 1e-3), hi + pad


class DepthTask(DenseTask):
    """Linear depth: BN + 1×1 conv per head on patch ⊕ CLS; 256 bins + soft-argmax (or regression)."""

    kind = "depth"
    selection_metric = "rmse"
    higher_is_better = False

    def __init__(self, depth_range: tuple[float, float], mode: str = "bins", n_bins: int = 256,
                 use_cls: bool = True, eigen_crop: bool = False, aggregate: str = "pixel",
                 loss_size: int | None = None) -> None:
        self.min_depth, self.max_depth = depth_bounds(depth_range)
        self.depth_range = (float(depth_range[0]), float(depth_range[1]))
        self.mode, self.n_bins, self.use_cls = mode, int(n_bins), bool(use_cls)
        self.eigen_crop, self.aggregate, self.loss_size = bool(eigen_crop), aggregate, loss_size
        DepthMetrics(self.min_depth, self.max_depth, self.eigen_crop, self.aggregate)  # validate early

    def target_of(self, targets: Any) -> torch.Tensor:
        """The depth map ``[B, H, W]`` (float) from ``targets['depth']``; a clear error when there is none."""
        if not isinstance(targets, Mapping) or "depth" not in targets:
            raise ValueError("depth estimation needs a dataset whose targets hold a 'depth'; use nyud or toy_scenes.")
        return targets["depth"].float()

    def target_field(self) -> tuple[str, Any]:
        """Depth maps are cached as ``('depth', float32)``."""
        return "depth", np.float32

    def build_heads(self, in_dim: int, lrs: Sequence[float]) -> nn.Module:
        """A :class:`HeadBank` of :class:`DepthHead` (bins or regression over the padded depth range), one per LR."""
        lrs = _check_lrs(lrs)
        return HeadBank([DepthHead(in_dim, self.n_bins, self.min_depth, self.max_depth, self.mode, self.use_cls)
                         for _ in lrs], lrs)

    def _cls(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        return feats.get("cls") if self.use_cls else None

    def loss(self, heads: nn.Module, feats: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Sum over heads of the depth loss (bin CE or L1), at ``loss_size`` when set, else at target size."""
        target = _resize_target(target, self.loss_size)
        size = tuple(target.shape[-2:])
        return sum(h.loss(h.logits(feats["patch"], self._cls(feats), size), target)
                   for h in heads.bank)  # type: ignore[return-value]

    def predict(self, heads: nn.Module, feats: Mapping[str, torch.Tensor], names: Sequence[str],
                out_size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Predicted depth ``[B, H, W]`` in metres of each head in ``names``, at ``out_size``."""
        return {n: heads[n](feats["patch"], self._cls(feats), out_size) for n in names}

    def new_meter(self, names: Sequence[str], device: torch.device, class_mask: torch.Tensor | None = None) -> Meter:
        """A :class:`DepthMetrics` per head over the padded depth range (Eigen crop and aggregation as configured)."""
        return PerHeadMeter(names, lambda: DepthMetrics(device=device, min_depth=self.min_depth,
                                                        max_depth=self.max_depth, eigen_crop=self.eigen_crop,
                                                        aggregate=self.aggregate))

    def augment(self, images: torch.Tensor, target: torch.Tensor,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The same random crop (area fraction 0.5-1) and flip for images and depth maps."""
        return paired_random_crop(images, target, gen, scale=(0.5, 1.0))

    def describe(self) -> dict[str, Any]:
        """Head, decoding, loss and metric description recorded in the result JSON."""
        return {"type": "BatchNorm2d + Conv1x1 on patch (+) CLS, bilinear upsampling after the conv",
                "mode": self.mode, "bins": self.n_bins if self.mode == "bins" else None,
                "decode": "soft-argmax over uniform bin centres, T = 1" if self.mode == "bins" else "scaled sigmoid",
                "loss": "cross-entropy to the nearest bin" if self.mode == "bins" else "L1",
                "use_cls": self.use_cls, "head_range_m": [self.min_depth, self.max_depth],
                "loss_size": self.loss_size or "target size",
                "metrics": f"RMSE, AbsRel, log10, SqRel, RMSE_log, MAE, delta<1.25^k; {self.aggregate} aggregation, "
                           f"valid = {self.min_depth:g} < gt < {self.max_depth:g} (ground truth only), "
                           f"Eigen crop {'on' if self.eigen_crop else 'off'}",
                "metric_source": "mdistiller.eval.metrics.DepthMetrics"}
