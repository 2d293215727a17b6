"""Evaluation metrics for the linear probes: top-k accuracy, segmentation confusion matrix, depth errors.

Every accumulator keeps its running state as *sums in one plain tensor* (``state()``), so a
distributed evaluation reduces it exactly with a single ``torch.distributed.all_reduce`` (or
``.all_reduce()``, a no-op outside a process group) before ``compute``/``miou``. Averages are only
formed at the end, from the reduced sums: averaging per-rank or per-batch *ratios* is what made the
released code's numbers depend on the batch size (see docs/released-code.md, "Linear probes").

Note for distributed use: ``DistributedSampler`` pads the last batch with repeated samples, so exact
numbers need an unpadded (e.g. sequential, rank-strided) evaluation sampler.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = [
    "ConfusionMatrix",
    "DepthMetrics",
    "accuracy",
    "all_reduce_",
    "eigen_crop_box",
    "eigen_crop_mask",
    "topk_correct",
]


def all_reduce_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` in place over all ranks when a process group is initialised; otherwise return it unchanged."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


# --------------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------------


def _check_cls_inputs(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, C], got shape {tuple(logits.shape)}; flatten extra dimensions first.")
    if target.ndim != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"target must be [N] with N = {logits.shape[0]} to match logits, got shape {tuple(target.shape)}."
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}; pass labels, not one-hots.")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= logits.shape[1]):
        raise ValueError(
            f"target values must lie in [0, {logits.shape[1] - 1}] for {logits.shape[1]} classes, got range "
            f"[{int(target.min())}, {int(target.max())}]; check the label mapping or num_classes."
        )


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, int]:
    """Number of samples whose target is among the ``k`` highest logits, for each ``k`` in ``ks``.

    ``correct_k = Σ_n 1[target_n ∈ top-k(logits_n)]``. Counts (not ratios) are returned so that they sum
    exactly across batches and ranks; divide by the total ``N`` at the end (see :func:`accuracy`).
    A ``k`` larger than the number of classes ``C`` is clamped to ``C`` (every sample is then correct).
    Ties are broken by ``torch.topk``'s order.
    """
    _check_cls_inputs(logits, target)
    ks = list(ks)
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive integers, got {ks}.")
    n, c = logits.shape
    if n == 0:
        return {int(k): 0 for k in ks}
    kmax = min(max(int(k) for k in ks), c)
    top = logits.topk(kmax, dim=1).indices  # [N, kmax], best first
    hit = top.eq(target.view(-1, 1))  # at most one True per row
    cum = hit.cumsum(dim=1).sum(dim=0)  # cum[j] = #samples correct within the top j+1
    return {int(k): int(cum[min(int(k), c) - 1]) for k in ks}


def accuracy(logits: torch.Tensor, target: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent, ``100 · topk_correct / N`` (see :func:`topk_correct` for the clamping rule)."""
    n = logits.shape[0] if logits.ndim else 0
    if n == 0:
        raise ValueError("accuracy needs at least one sample; the batch is empty.")
    return {k: 100.0 * v / n for k, v in topk_correct(logits, target, ks).items()}


# --------------------------------------------------------------------------------------------------
# semantic segmentation
# --------------------------------------------------------------------------------------------------


class ConfusionMatrix:
    """Dataset-level confusion matrix ``M[t, p]`` = number of pixels with target ``t`` predicted as ``p``.

    ``update`` adds one batch with a single ``bincount`` over ``C·t + p`` (pixels whose target equals
    ``ignore_index`` are dropped). The matrix is an ``int64`` tensor, so ``state()`` can be all-reduced
    exactly. Metrics are computed from the matrix accumulated over the *whole* dataset::

        IoU_c = M[c, c] / (Σ_p M[c, p] + Σ_t M[t, c] − M[c, c])      (TP / (TP + FP + FN))
        mIoU  = mean of IoU_c over the classes with a non-empty union
        pixel accuracy = Σ_c M[c, c] / Σ M

    **Absent classes:** a class that appears neither in the targets nor in the predictions of the whole
    dataset has a union of 0; its IoU is undefined (NaN in :meth:`iou_per_class`) and it is *excluded*
    from the mean (this is mmseg's ``nanmean`` convention). A class that is predicted but never present
    in the targets has IoU 0 and *is* counted. This is not the mean of per-batch mIoUs (what the
    released training loop averaged): a class absent from one batch would then be skipped in that
    batch only, and batches would be weighted equally regardless of their pixel counts.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes}.")
        if 0 <= int(ignore_index) < int(num_classes):
            raise ValueError(
                f"ignore_index={ignore_index} is a valid class index for {num_classes} classes; "
                "pick a value outside [0, num_classes) such as 255 or -1."
            )
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Zero the matrix."""
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred`` and ``target`` are integer label maps of the same shape (e.g. ``[B, H, W]``).

        ``pred`` is the class index (``logits.argmax(1)``), not the logits.
        """
        if pred.shape != target.shape:
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape; "
                "upsample the logits to the label size before the argmax."
            )
        for name, t in (("pred", pred), ("target", target)):
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise TypeError(f"{name} must be an integer label map, got dtype {t.dtype}; pass logits.argmax(1).")
        if self.mat.device != target.device:
            self.mat = self.mat.to(target.device)
        t = target.reshape(-1).long()
        p = pred.reshape(-1).long().to(t.device)
        keep = t != self.ignore_index
        t, p = t[keep], p[keep]
        if t.numel() == 0:
            return
        c = self.num_classes
        bad_t = (t < 0) | (t >= c)
        bad_p = (p < 0) | (p >= c)
        if bool(bad_t.any()):
            raise ValueError(
                f"target holds labels outside [0, {c - 1}] that are not ignore_index={self.ignore_index} "
                f"(e.g. {int(t[bad_t][0])}); fix the label mapping, num_classes or ignore_index."
            )
        if bool(bad_p.any()):
            raise ValueError(
                f"pred holds labels outside [0, {c - 1}] (e.g. {int(p[bad_p][0])}); the head must have {c} outputs."
            )
        self.mat += torch.bincount(t * c + p, minlength=c * c).view(c, c)

    def state(self) -> torch.Tensor:
        """The live ``[C, C]`` int64 matrix; ``torch.distributed.all_reduce(cm.state())`` sums it in place."""
        return self.mat

    def merge(self, other: ConfusionMatrix | torch.Tensor) -> ConfusionMatrix:
        """Add another accumulator's matrix (or a raw ``[C, C]`` tensor) into this one; returns ``self``."""
        m = other.mat if isinstance(other, ConfusionMatrix) else other
        if tuple(m.shape) != (self.num_classes, self.num_classes):
            raise ValueError(
                f"cannot merge a {tuple(m.shape)} matrix into a {self.num_classes}-class ConfusionMatrix; "
                "both must have the same num_classes."
            )
        self.mat += m.to(device=self.mat.device, dtype=self.mat.dtype)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over ranks in place (no-op without a process group); returns ``self``."""
        all_reduce_(self.mat)
        return self

    def iou_per_class(self) -> torch.Tensor:
        """``[C]`` float64 IoUs; NaN for classes absent from both targets and predictions."""
        m = self.mat.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))

    def miou(self) -> float:
        """Mean IoU over the classes with a non-empty union (see the class docstring); NaN if the matrix is empty."""
        iou = self.iou_per_class()
        present = ~iou.isnan()
        return float(iou[present].mean()) if bool(present.any()) else float("nan")

    def pixel_accuracy(self) -> float:
        """Fraction of non-ignored pixels that are correct, ``trace(M) / ΣM``; NaN if no pixel was counted."""
        total = int(self.mat.sum())
        return float(self.mat.diag().sum()) / total if total else float("nan")

    def mean_class_accuracy(self) -> float:
        """Mean over target-present classes of per-class recall ``M[c, c] / Σ_p M[c, p]`` (mmseg's mAcc)."""
        m = self.mat.double()
        rows = m.sum(1)
        present = rows > 0
        return float((m.diag()[present] / rows[present]).mean()) if bool(present.any()) else float("nan")

    def compute(self) -> dict[str, float]:
        """``{"miou", "pixel_accuracy", "mean_class_accuracy", "num_present_classes"}`` from the current matrix."""
        iou = self.iou_per_class()
        return {
            "miou": self.miou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "mean_class_accuracy": self.mean_class_accuracy(),
            "num_present_classes": int((~iou.isnan()).sum()),
        }


# --------------------------------------------------------------------------------------------------
# monocular depth
# --------------------------------------------------------------------------------------------------

_EIGEN_REF = (480, 640)  # NYUd-v2 image size the crop was defined on
_EIGEN_BOX = (45, 471, 41, 601)  # top, bottom (excl.), left, right (excl.)


def _scaled(v: int, size: int, ref: int) -> int:
    # round-half-up of v·size/ref in exact integer arithmetic
    return (2 * v * size + ref) // (2 * ref)


def eigen_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` (bottom/right exclusive) of the Eigen crop for an image of this size.

    On 480×640 it is rows 45:471 and columns 41:601 (Eigen et al. 2014, as in BTS/AdaBins/DINOv2).
    For any other size each bound is scaled proportionally, ``round_half_up(b · H / 480)`` for rows and
    ``round_half_up(b · W / 640)`` for columns, e.g. 240×320 → rows 23:236, columns 21:301. This is a
    convention of this package: the standard protocol evaluates at 480×640.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}×{width}.")
    t, b, l, r = _EIGEN_BOX
    rh, rw = _EIGEN_REF
    return _scaled(t, height, rh), _scaled(b, height, rh), _scaled(l, width, rw), _scaled(r, width, rw)


def eigen_crop_mask(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``[H, W]`` mask that is True inside :func:`eigen_crop_box`."""
    t, b, l, r = eigen_crop_box(height, width)
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[t:b, l:r] = True
    return mask


# order of the per-image sums in DepthMetrics' state vector
_DEPTH_KEYS = ("sq_err", "abs_err", "abs_rel", "sq_rel", "log10", "sq_log", "d1", "d2", "d3")


class DepthMetrics:
    """Standard monocular-depth errors (Eigen et al. 2014) with a ground-truth-only validity mask.

    For valid pixels ``i`` (prediction ``p``, ground truth ``g``, both in metres)::

        RMSE     = sqrt(mean (p − g)²)             AbsRel  = mean |p − g| / g
        log10    = mean |log10 p − log10 g|        SqRel   = mean (p − g)² / g
        RMSE_log = sqrt(mean (ln p − ln g)²)       MAE     = mean |p − g|
        δ_k      = mean 1[max(p/g, g/p) < 1.25^k],  k = 1, 2, 3

    **Validity mask** = ``min_depth < g < max_depth`` (and inside the Eigen crop when ``eigen_crop``);
    it depends only on the ground truth. Predictions are clamped to ``[min_depth, max_depth]`` so the
    logs and ratios are defined. The released ``test/nyud.py`` also required ``0 < p < 10``: such a mask
    lets the *model* decide which pixels are scored (an out-of-range prediction on a hard pixel removes
    that pixel from the metric), and two models are then scored on different pixel sets, so the
    numbers are neither fair nor comparable. Here a bad prediction is clamped and counted; a NaN
    prediction at a valid pixel makes the metrics NaN instead of being silently skipped.

    **Aggregation.** ``"pixel"`` pools all valid pixels of the dataset (each metric's mean runs over
    pixels; RMSE is the root of the pooled mean square). ``"image"`` computes each metric per image,
    then averages over images (images without a valid pixel are skipped). The two differ whenever
    images have different numbers of valid pixels or different error levels. The state is one float64
    tensor of sums (``state()``) that can be all-reduced exactly.
    """

    def __init__(
        self,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        eigen_crop: bool = False,
        aggregate: str = "pixel",
        device: torch.device | str | None = None,
    ) -> None:
        if not (0 < float(min_depth) < float(max_depth)):
            raise ValueError(
                f"need 0 < min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}; "
                "the logs and ratios need positive depths."
            )
        if aggregate not in ("pixel", "image"):
            raise ValueError(f"aggregate must be 'pixel' or 'image', got {aggregate!r}.")
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.eigen_crop = bool(eigen_crop)
        self.aggregate = aggregate
        # [9 metric sums, number of units averaged (pixels or images), number of valid pixels]
        self._state = torch.zeros(len(_DEPTH_KEYS) + 2, dtype=torch.float64, device=device)

    def reset(self) -> None:
        """Zero the sums."""
        self._state.zero_()

    def valid_mask(self, gt: torch.Tensor) -> torch.Tensor:
        """Boolean mask of scored pixels for ``gt [B, H, W]`` (ground truth only, never the prediction)."""
        valid = (gt > self.min_depth) & (gt < self.max_depth)
        if self.eigen_crop:
            valid &= eigen_crop_mask(gt.shape[-2], gt.shape[-1], device=gt.device)
        return valid

    @torch.no_grad()
    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """Add a batch of depth maps in metres, ``pred`` and ``gt`` both ``[B, H, W]`` (or ``[B, 1, H, W]``)."""
        if pred.ndim == 4 and pred.shape[1] == 1:
            pred = pred[:, 0]
        if gt.ndim == 4 and gt.shape[1] == 1:
            gt = gt[:, 0]
        if gt.ndim != 3:
            raise ValueError(f"gt must be [B, H, W] or [B, 1, H, W], got shape {tuple(gt.shape)}.")
        if pred.shape != gt.shape:
            raise ValueError(
                f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape; "
                "resize the prediction to the ground-truth size before scoring."
            )
        if self._state.device != gt.device:
            self._state = self._state.to(gt.device)
        valid = self.valid_mask(gt)
        g = gt.double()
        p = pred.to(g.device, torch.float64).clamp(self.min_depth, self.max_depth)
        # where(), not multiplication: NaN/inf predictions at *invalid* pixels must not leak into the sums
        g = torch.where(valid, g, torch.ones_like(g))
        p = torch.where(valid, p, torch.ones_like(p))
        diff = p - g
        ratio = torch.maximum(p / g, g / p)
        per_pixel = (
            diff.square(),
            diff.abs(),
            diff.abs() / g,
            diff.square() / g,
            (torch.log10(p) - torch.log10(g)).abs(),
            (torch.log(p) - torch.log(g)).square(),
            (ratio < 1.25).double(),
            (ratio < 1.25**2).double(),
            (ratio < 1.25**3).double(),
        )
        vf = valid.double()
        sums = torch.stack([(v * vf).sum(dim=(1, 2)) for v in per_pixel], dim=1)  # [B, 9], invalid terms are 0
        n = vf.sum(dim=(1, 2))  # [B]
        if self.aggregate == "pixel":
            self._state[: len(_DEPTH_KEYS)] += sums.sum(0)
            self._state[-2] += n.sum()
        else:
            has = n > 0
            per_img = sums[has] / n[has, None]
            per_img[:, 0] = per_img[:, 0].sqrt()  # RMSE per image
            per_img[:, 5] = per_img[:, 5].sqrt()  # RMSE_log per image
            self._state[: len(_DEPTH_KEYS)] += per_img.sum(0)
            self._state[-2] += has.sum()
        self._state[-1] += n.sum()

    def state(self) -> torch.Tensor:
        """The live float64 vector of sums; ``torch.distributed.all_reduce(m.state())`` sums it in place."""
        return self._state

    def merge(self, other: DepthMetrics | torch.Tensor) -> DepthMetrics:
        """Add another accumulator's sums (same settings) or a raw state vector into this one; returns ``self``."""
        if isinstance(other, DepthMetrics):
            mine = (self.min_depth, self.max_depth, self.eigen_crop, self.aggregate)
            theirs = (other.min_depth, other.max_depth, other.eigen_crop, other.aggregate)
            if mine != theirs:
                raise ValueError(f"cannot merge DepthMetrics with settings {theirs} into {mine}; use equal settings.")
            other = other._state
        if other.shape != self._state.shape:
            raise ValueError(f"state vector must have shape {tuple(self._state.shape)}, got {tuple(other.shape)}.")
        self._state += other.to(self._state.device, torch.float64)
        return self

    def all_reduce(self) -> DepthMetrics:
        """Sum the state over ranks in place (no-op without a process group); returns ``self``."""
        all_reduce_(self._state)
        return self

    def compute(self) -> dict[str, float | int | str | bool]:
        """Metrics so far: ``rmse, abs_rel, log10, sq_rel, rmse_log, mae, d1, d2, d3`` plus bookkeeping.

        Bookkeeping keys: ``"aggregation"`` ("pixel" | "image"), ``"eigen_crop"`` (bool),
        ``"num_pixels"`` (valid pixels scored), ``"num_images"`` (image mode only) and the depth range.
        """
        s = self._state.tolist()
        count = s[-2]
        if count <= 0:
            raise ValueError(
                f"no valid ground-truth pixel was scored (mask {self.min_depth} < gt < {self.max_depth}"
                f"{' inside the Eigen crop' if self.eigen_crop else ''}); check that gt is in metres and the range."
            )
        m = dict(zip(_DEPTH_KEYS, (v / count for v in s[: len(_DEPTH_KEYS)]), strict=True))
        if self.aggregate == "pixel":
            rmse, rmse_log = math.sqrt(m["sq_err"]), math.sqrt(m["sq_log"])
        else:  # already per-image roots, averaged
            rmse, rmse_log = m["sq_err"], m["sq_log"]
        out: dict[str, float | int | str | bool] = {
            "rmse": rmse,
            "abs_rel": m["abs_rel"],
            "log10": m["log10"],
            "sq_rel": m["sq_rel"],
            "rmse_log": rmse_log,
            "mae": m["abs_err"],
            "d1": m["d1"],
            "d2": m["d2"],
            "d3": m["d3"],
            "num_pixels": int(s[-1]),
            "aggregation": self.aggregate,
            "eigen_crop": self.eigen_crop,
            "min_depth": self.min_depth,
            "max_depth": self.max_depth,
        }
        if self.aggregate == "image":
            out["num_images"] = int(count)
        return out
