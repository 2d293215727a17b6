"""Linear probe heads: classification (a grid of learning rates), segmentation and depth.

All heads are linear in the frozen features (up to an optional BatchNorm, which is a per-channel
affine map at evaluation time), following DINOv2's linear protocols (see docs/lineval.md):

* :class:`LinearHeadGrid` — K linear classifiers (``Linear(D, C)``, weight ~ N(0, 0.01²), bias 0)
  trained *at once* on the same features, one per learning rate, in a single matmul; one optimizer
  group per LR; pick the best on a validation split.
* :class:`SegHead` — BatchNorm2d + 1×1 conv on the patch-token grid (DINOv2's ``BNHead``), logits
  upsampled *after* the classifier; :func:`sliding_window_logits` for large images.
* :class:`DepthHead` — BatchNorm2d + 1×1 conv on patch ⊕ CLS tokens; 256 uniform bins decoded by a
  soft-argmax, or a sigmoid-scaled regression.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DepthHead",
    "LinearHeadGrid",
    "SegHead",
    "select_best",
    "sliding_window_logits",
    "tokens_to_grid",
]

INIT_STD = 0.01  # DINOv2 linear eval: weight ~ N(0, 0.01²), bias = 0


def _positive(name: str, value: int) -> int:
    if int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}.")
    return int(value)


def _pair(name: str, v: int | Sequence[int]) -> tuple[int, int]:
    t = (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)
    if len(t) != 2 or min(t) < 1:
        raise ValueError(f"{name} must be a positive int or a pair (h, w) of positive ints, got {v}.")
    return t  # type: ignore[return-value]


def _upsample(x: torch.Tensor, out_size: int | Sequence[int] | None) -> torch.Tensor:
    if out_size is None:
        return x
    size = _pair("out_size", out_size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def select_best(metrics: Mapping[str, float], higher_is_better: bool = True) -> str:
    """Name of the best head given ``{name: validation metric}``; NaNs are skipped, ties go to the first.

    Select on a held-out *validation* split, never on the test set (the released code selected its
    ``best.pt`` on test; docs/released-code.md).
    """
    best_name, best_val = None, None
    for name, val in metrics.items():
        v = float(val)
        if math.isnan(v):
            continue
        if best_val is None or (v > best_val if higher_is_better else v < best_val):
            best_name, best_val = name, v
    if best_name is None:
        raise ValueError("select_best got no finite metric; evaluate the heads on the validation split first.")
    return best_name


# --------------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------------


def _lr_name(lr: float) -> str:
    return f"lr_{lr:g}"


class LinearHeadGrid(nn.Module):
    """K independent linear classifiers on the same features, one per learning rate (DINOv2 linear eval).

    Each head ``k`` has its own parameters ``W_k [C, D]``, ``b_k [C]`` (so that an optimizer can give it
    its own LR, momentum buffer and weight decay), initialised as in DINOv2 (``W ~ N(0, 0.01²)``, ``b = 0``).
    The forward pass concatenates them into one ``[K·C, D]`` matrix and runs **one** GEMM for all heads:
    ``x [N, D] -> [N, K, C]`` — the features are read once instead of K times.

    Training: ``opt = torch.optim.SGD(grid.param_groups(lr_scale=global_bs / 256), momentum=0.9)`` and
    ``grid.loss(grid(x), y).backward()``; the loss is the *sum* of the heads' mean cross-entropies, so
    each head receives exactly the gradient of its own loss. Evaluate every head on a validation split,
    then pick the winner with :meth:`best`.
    """

    def __init__(self, in_dim: int, num_classes: int, lrs: Sequence[float], names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.in_dim = _positive("in_dim", in_dim)
        self.num_classes = _positive("num_classes", num_classes)
        lrs = [float(lr) for lr in lrs]
        if not lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
            raise ValueError(f"lrs must be a non-empty list of positive learning rates, got {lrs}.")
        names = [str(n) for n in names] if names is not None else [_lr_name(lr) for lr in lrs]
        if len(names) != len(lrs):
            raise ValueError(f"got {len(names)} names for {len(lrs)} learning rates; give one name per LR.")
        if len(set(names)) != len(names):
            raise ValueError(f"head names must be unique, got {names}; remove the duplicate learning rates.")
        self.names: list[str] = names
        self.lrs: list[float] = lrs
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.empty(self.num_classes, self.in_dim).normal_(0.0, INIT_STD)) for _ in lrs]
        )
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(self.num_classes)) for _ in lrs])

    @property
    def num_heads(self) -> int:
        """K, the number of heads (one per learning rate)."""
        return len(self.names)

    def forward_stacked(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., D] -> logits [..., K, C]`` with one matmul across all K heads."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"features have dim {x.shape[-1]} but the heads expect in_dim={self.in_dim}.")
        w = torch.cat(list(self.weights), dim=0)  # [K·C, D]
        b = torch.cat(list(self.biases), dim=0)  # [K·C]
        return F.linear(x, w, b).unflatten(-1, (self.num_heads, self.num_classes))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x [..., D] -> {name: logits [..., C]}`` (views into one batched output)."""
        out = self.forward_stacked(x)
        return {name: out[..., k, :] for k, name in enumerate(self.names)}

    def param_groups(self, lr_scale: float = 1.0, weight_decay: float = 0.0) -> list[dict]:
        """One optimizer group per head: ``{"params": [W_k, b_k], "lr": lr_k · lr_scale, "name": name_k}``.

        DINOv2 scales its base LRs by ``global_batch / 256``; pass that as ``lr_scale``.
        """
        return [
            {"params": [w, b], "lr": lr * float(lr_scale), "weight_decay": float(weight_decay), "name": name}
            for name, lr, w, b in zip(self.names, self.lrs, self.weights, self.biases, strict=True)
        ]

    def loss(self, logits: Mapping[str, torch.Tensor] | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum over heads of each head's mean cross-entropy (``logits`` from :meth:`forward` or ``forward_stacked``)."""
        if isinstance(logits, Mapping):
            return sum(F.cross_entropy(logits[n], target) for n in self.names)  # type: ignore[return-value]
        n, k, c = logits.shape
        return F.cross_entropy(logits.reshape(n * k, c), target[:, None].expand(n, k).reshape(-1), reduction="sum") / n

    def best(self, metrics: Mapping[str, float], higher_is_better: bool = True) -> str:
        """Name of the best head from ``{name: validation metric}`` (see :func:`select_best`)."""
        unknown = set(metrics) - set(self.names)
        if unknown:
            raise KeyError(f"unknown head names {sorted(unknown)}; valid names: {', '.join(self.names)}.")
        return select_best(metrics, higher_is_better)

    def lr_of(self, name: str) -> float:
        """The (unscaled) learning rate of head ``name``."""
        return self.lrs[self._index(name)]

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"unknown head '{name}'; valid names: {', '.join(self.names)}.")
        return self.names.index(name)


# --------------------------------------------------------------------------------------------------
# dense heads
# --------------------------------------------------------------------------------------------------


def tokens_to_grid(patch_tokens: torch.Tensor, grid_size: int | Sequence[int] | None = None) -> torch.Tensor:
    """Reshape patch tokens ``[B, N, D]`` (no CLS/register tokens) into a grid ``[B, D, h, w]``.

    ``grid_size`` defaults to a square ``h = w = sqrt(N)``.
    """
    if patch_tokens.ndim != 3:
        raise ValueError(f"patch_tokens must be [B, N, D], got shape {tuple(patch_tokens.shape)}.")
    b, n, d = patch_tokens.shape
    if grid_size is None:
        s = math.isqrt(n)
        if s * s != n:
            raise ValueError(f"{n} patch tokens do not form a square grid; pass grid_size=(h, w) (and drop CLS).")
        h, w = s, s
    else:
        h, w = _pair("grid_size", grid_size)
        if h * w != n:
            raise ValueError(f"grid_size {h}×{w} = {h * w} does not match the {n} patch tokens; drop CLS/registers.")
    return patch_tokens.transpose(1, 2).reshape(b, d, h, w)


class SegHead(nn.Module):
    """Linear segmentation probe: BatchNorm2d(D) → (Dropout2d) → Conv1×1(D → C) on the patch grid.

    ``forward(tokens_grid [B, D, h, w], out_size)`` returns logits bilinearly upsampled to ``out_size``.
    The upsampling is applied **after** the classifier: bilinear interpolation is linear with weights
    summing to one, so it commutes with the 1×1 conv (bias included) and with eval-mode BatchNorm (a
    per-channel affine map). Classifying at h×w and then upsampling C channels therefore equals
    upsampling D channels first (the released NYUd probe's order), at a fraction ``C / D`` of the
    memory and ``(h·w)/(H·W)`` of the conv FLOPs. (With train-mode BN the batch statistics differ
    slightly between the two orders; this head computes them on the token grid, as DINOv2 does.)
    For multi-GPU training convert with ``nn.SyncBatchNorm.convert_sync_batchnorm``.
    """

    def __init__(self, in_dim: int, num_classes: int, batch_norm: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_dim = _positive("in_dim", in_dim)
        self.num_classes = _positive("num_classes", num_classes)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}.")
        self.bn = nn.BatchNorm2d(self.in_dim) if batch_norm else nn.Identity()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(self.in_dim, self.num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, mean=0.0, std=INIT_STD)
        nn.init.zeros_(self.conv.bias)

    def forward(self, tokens_grid: torch.Tensor, out_size: int | Sequence[int] | None = None) -> torch.Tensor:
        """``[B, D, h, w] -> logits [B, C, H, W]`` (``H, W = out_size``, or h, w when None)."""
        if tokens_grid.ndim != 4 or tokens_grid.shape[1] != self.in_dim:
            raise ValueError(
                f"tokens_grid must be [B, {self.in_dim}, h, w], got {tuple(tokens_grid.shape)}; "
                "use tokens_to_grid() on the patch tokens."
            )
        return _upsample(self.conv(self.dropout(self.bn(tokens_grid))), out_size)

    @staticmethod
    def loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
        """Pixel-wise cross-entropy ignoring ``ignore_index`` (0 with a graph when every pixel is ignored)."""
        if not bool((target != ignore_index).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target.long(), ignore_index=ignore_index)


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    if size <= window:
        return [0]
    n = -(-(size - window) // stride) + 1  # ceil((size - window) / stride) + 1
    return [min(i * stride, size - window) for i in range(n)]


@torch.no_grad()
def sliding_window_logits(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    window: int | Sequence[int],
    stride: int | Sequence[int],
    num_classes: int,
    windows_per_call: int = 1,
) -> torch.Tensor:
    """Sliding-window inference (mmseg ``slide`` mode): average the logits of overlapping windows.

    ``fn(crop [b, 3, h, w]) -> logits [b, num_classes, h, w]`` at the crop's own resolution (e.g.
    ``lambda c: head(tokens_to_grid(backbone(c)), c.shape[-2:])``). Windows start every ``stride``
    pixels; the last one is shifted back to end at the image border, so every pixel is covered and the
    result is ``Σ_windows logits / #windows covering the pixel``. An image smaller than the window is
    processed as one smaller crop (``fn`` must accept that size). ``windows_per_call`` windows are
    concatenated along the batch for one ``fn`` call (faster, more memory). Runs under
    ``torch.no_grad()``; returns float32 ``[B, num_classes, H, W]``.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be [B, C, H, W], got shape {tuple(image.shape)}.")
    wh, ww = _pair("window", window)
    sh, sw = _pair("stride", stride)
    if sh > wh or sw > ww:
        raise ValueError(f"stride {sh}×{sw} exceeds window {wh}×{ww}, leaving pixels uncovered; use stride ≤ window.")
    num_classes = _positive("num_classes", num_classes)
    per_call = _positive("windows_per_call", windows_per_call)
    b, _, h, w = image.shape
    ch, cw = min(wh, h), min(ww, w)
    boxes = [(y, x) for y in _window_starts(h, wh, sh) for x in _window_starts(w, ww, sw)]
    out = image.new_zeros(b, num_classes, h, w, dtype=torch.float32)
    count = image.new_zeros(1, 1, h, w, dtype=torch.float32)
    for i in range(0, len(boxes), per_call):
        chunk = boxes[i : i + per_call]
        crops = torch.cat([image[:, :, y : y + ch, x : x + cw] for y, x in chunk], dim=0)
        logits = fn(crops)
        if tuple(logits.shape) != (len(chunk) * b, num_classes, ch, cw):
            raise ValueError(
                f"fn returned shape {tuple(logits.shape)} for crops of shape {tuple(crops.shape)}; it must return "
                f"[{len(chunk) * b}, {num_classes}, {ch}, {cw}] (logits upsampled to the crop size)."
            )
        for j, (y, x) in enumerate(chunk):
            out[:, :, y : y + ch, x : x + cw] += logits[j * b : (j + 1) * b].float()
            count[:, :, y : y + ch, x : x + cw] += 1
    return out / count


class DepthHead(nn.Module):
    """Linear depth probe (DINOv2 NYUd "linear" protocol): BatchNorm2d → Conv1×1 on patch ⊕ CLS tokens.

    Input: the patch grid ``[B, D, h, w]`` and, when ``use_cls``, the CLS token ``[B, D]`` broadcast over
    the grid and concatenated along channels (``2·D`` channels). Outputs are upsampled to ``out_size``
    after the 1×1 conv (exact, see :class:`SegHead`).

    ``mode="bins"`` (default): ``n_bins`` uniform bin centres ``c_i = linspace(min_depth, max_depth,
    n_bins)`` (AdaBins/DINOv2 "UD"); depth = soft-argmax ``Σ_i softmax(logits / T)_i · c_i`` with the
    temperature ``T = temperature`` (default 1.0, the distribution the cross-entropy trains, so the
    decoded depth is its mean; the released code trained with 0.03 and was run at 0.6 or 0.03 at test).
    Loss ``bins_loss``:

    * ``"ce"`` (default): cross-entropy against the nearest bin ``round((g − min)/(max − min)·(n − 1))``
      (the released SiNGER probe's loss; the classic depth-as-classification target);
    * ``"l1"``: mean ``|decode(logits) − g|`` — trains through the soft-argmax, so the decoding used
      at test is the one optimised (closer in spirit to DINOv2, which trains on the decoded depth).

    ``mode="regression"``: one channel, depth = ``min + (max − min)·sigmoid(logit)``, loss L1.
    Losses use only valid pixels ``min_depth < g < max_depth`` (ground-truth mask, as the metrics).
    """

    def __init__(
        self,
        in_dim: int,
        n_bins: int = 256,
        min_depth: float = 1e-3,
        max_depth: float = 10.0,
        mode: str = "bins",
        use_cls: bool = True,
        temperature: float = 1.0,
        bins_loss: str = "ce",
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.in_dim = _positive("in_dim", in_dim)
        if mode not in ("bins", "regression"):
            raise ValueError(f"mode must be 'bins' or 'regression', got {mode!r}.")
        if bins_loss not in ("ce", "l1"):
            raise ValueError(f"bins_loss must be 'ce' or 'l1', got {bins_loss!r}.")
        if not (0 <= float(min_depth) < float(max_depth)):
            raise ValueError(f"need 0 ≤ min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}.")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.mode = mode
        self.n_bins = _positive("n_bins", n_bins) if mode == "bins" else 1
        if mode == "bins" and self.n_bins < 2:
            raise ValueError(f"bins mode needs at least 2 bins, got n_bins={n_bins}.")
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.use_cls = bool(use_cls)
        self.temperature = float(temperature)
        self.bins_loss = bins_loss
        channels = self.in_dim * (2 if self.use_cls else 1)
        self.bn = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        self.conv = nn.Conv2d(channels, self.n_bins, kernel_size=1)
        nn.init.normal_(self.conv.weight, mean=0.0, std=INIT_STD)
        nn.init.zeros_(self.conv.bias)
        self.register_buffer(
            "bin_centers", torch.linspace(self.min_depth, self.max_depth, self.n_bins), persistent=False
        )

    def _input(self, patch_grid: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        if patch_grid.ndim != 4 or patch_grid.shape[1] != self.in_dim:
            raise ValueError(f"patch_grid must be [B, {self.in_dim}, h, w], got {tuple(patch_grid.shape)}.")
        if not self.use_cls:  # a CLS token passed anyway is ignored
            return patch_grid
        if cls is None:
            raise ValueError("this DepthHead has use_cls=True; pass the CLS token [B, D] or build with use_cls=False.")
        if cls.shape != (patch_grid.shape[0], self.in_dim):
            raise ValueError(f"cls must be [B, D] = [{patch_grid.shape[0]}, {self.in_dim}], got {tuple(cls.shape)}.")
        b, _, h, w = patch_grid.shape
        return torch.cat([patch_grid, cls[:, :, None, None].expand(b, self.in_dim, h, w)], dim=1)

    def logits(
        self, patch_grid: torch.Tensor, cls: torch.Tensor | None = None, out_size: int | Sequence[int] | None = None
    ) -> torch.Tensor:
        """Raw outputs ``[B, n_bins (or 1), H, W]`` upsampled to ``out_size``; feed them to :meth:`loss`."""
        return _upsample(self.conv(self.bn(self._input(patch_grid, cls))), out_size)

    def decode(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Depth in metres ``[B, H, W]`` from :meth:`logits` (soft-argmax over bins, or scaled sigmoid)."""
        if self.mode == "regression":
            return self.min_depth + (self.max_depth - self.min_depth) * torch.sigmoid(logits[:, 0])
        t = self.temperature if temperature is None else float(temperature)
        if not t > 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        prob = torch.softmax(logits.float() / t, dim=1)
        # elementwise product + sum rather than einsum: autocast would run einsum in fp16/bf16 (±0.02 m at 5 m)
        return (prob * self.bin_centers.to(prob.dtype)[None, :, None, None]).sum(dim=1)

    def forward(
        self, patch_grid: torch.Tensor, cls: torch.Tensor | None = None, out_size: int | Sequence[int] | None = None
    ) -> torch.Tensor:
        """``patch_grid [B, D, h, w]``, ``cls [B, D]`` → depth ``[B, H, W]`` in metres."""
        return self.decode(self.logits(patch_grid, cls, out_size))

    def bin_index(self, depth: torch.Tensor) -> torch.Tensor:
        """Nearest bin index ``round((d − min)/(max − min)·(n − 1))``, clamped to ``[0, n − 1]``."""
        x = (depth - self.min_depth) / (self.max_depth - self.min_depth) * (self.n_bins - 1)
        return x.round().clamp(0, self.n_bins - 1).long()

    def loss(self, logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Training loss over valid pixels; ``logits`` from :meth:`logits` at the size of ``gt [B, H, W]``."""
        if gt.ndim == 4 and gt.shape[1] == 1:
            gt = gt[:, 0]
        if gt.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"gt {tuple(gt.shape)} does not match logits {tuple(logits.shape)}; "
                "call logits(..., out_size=gt.shape[-2:])."
            )
        valid = (gt > self.min_depth) & (gt < self.max_depth)
        if not bool(valid.any()):
            return logits.sum() * 0.0
        if self.mode == "bins" and self.bins_loss == "ce":
            ce = F.cross_entropy(logits.float(), self.bin_index(gt).masked_fill(~valid, 0), reduction="none")
            return ce[valid].mean()
        return (self.decode(logits) - gt.to(torch.float32))[valid].abs().mean()
