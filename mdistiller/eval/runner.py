"""The linear-probe engine: one set of loops for every task and both protocols.

``run_probe(backbone, spec, task, data, settings)``:

1. carves a validation split from the training data (``val_fraction``, seeded permutation);
2. makes batch sources of features:

   * **cached**: every split (train, test, extra test sets) is extracted once, with the evaluation transform,
     into one memory-mapped file (:mod:`mdistiller.eval.cache`); training and validation read rows of the
     train cache, so the backbone runs once per image;
   * **online**: the backbone runs on every training batch, after the paper's augmentation (the dataset's own
     training transform, or the task's tensor augmentation), for every epoch; validation and test run the
     backbone on evaluation-transform images;

3. trains K heads at once (one per learning rate, :class:`~mdistiller.eval.protocols.Task`), SGD/AdamW with a
   per-step cosine schedule, data-parallel under ``torchrun`` (each rank reads its share of every global batch,
   gradients are averaged by DDP);
4. evaluates every head on the **validation** split and keeps the best (:func:`~mdistiller.eval.heads.select_best`);
5. evaluates only that head on the test split(s): the test set never takes part in the selection.

Metric states are sums reduced over ranks; evaluation shards are strided and unpadded, so numbers are exact.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data._utils.collate import default_collate

from mdistiller.engine.distributed import broadcast_object, get_rank, get_world_size, is_main, reduce_mean_dict
from mdistiller.eval.cache import CachedSplit, build_cache, open_cache
from mdistiller.eval.features import Backbone, FeatureExtractor, FeatureSpec, _hash
from mdistiller.eval.heads import select_best, sliding_window_logits
from mdistiller.eval.protocols import Task

__all__ = ["ProbeData", "ProbeSettings", "carve_validation", "evaluate", "run_probe", "train_heads"]

PROTOCOLS = ("cached", "online")
Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


@dataclass
class ProbeSettings:
    """How to train and select the heads (every field is recorded in the result)."""

    protocol: str = "cached"
    epochs: int = 30
    batch_size: int = 256
    eval_batch_size: int = 128
    lrs: tuple[float, ...] | None = None  # None: the task's default grid
    weight_decay: float | None = None  # None: the task's default
    val_fraction: float = 0.1
    seed: int = 0
    num_workers: int = 0
    cache_dir: str | None = None
    cache_dtype: str = "float16"
    reuse_cache: bool = True
    preload_bytes: int = 2 * 2**30  # caches smaller than this are read into RAM for training
    slide: tuple[int, int] | None = None  # (window, stride): sliding-window test inference (segmentation)
    amp: bool = True
    verbose: bool = False
    progress: bool | None = None  # feature-extraction bars; None: when stderr is a terminal

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol '{self.protocol}' is not one of {', '.join(PROTOCOLS)}; pick one of those.")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs and batch sizes must be positive integers; check --epochs and --batch-size.")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction {self.val_fraction} must lie strictly between 0 and 1 (e.g. 0.1).")


@dataclass
class ProbeData:
    """The datasets of one probe.

    ``train`` uses the evaluation transform (cached extraction and the carved validation split); ``test`` is the
    reported split; ``train_aug`` the same training images with the dataset's own training transform (online
    protocol, ``augment="dataset"``); ``augment="tensor"`` applies the task's tensor augmentation to ``train``
    instead, ``"none"`` nothing. ``extra_tests`` maps a name to ``(dataset, class_mask or None)`` evaluated with
    the selected head (ImageNet-R / -v2). ``slide_test`` holds full-size test images for sliding-window
    inference. ``info`` is recorded as the result's ``dataset`` entry.
    """

    name: str
    train: Dataset
    test: Dataset
    train_aug: Dataset | None = None
    augment: str = "tensor"
    augment_desc: str = ""
    extra_tests: dict[str, tuple[Dataset, torch.Tensor | None]] = field(default_factory=dict)
    slide_test: Dataset | None = None
    info: dict[str, Any] = field(default_factory=dict)


def carve_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, val_rows)``: a seeded random ``fraction`` of ``range(n)`` (at least one row each), sorted."""
    if n < 2:
        raise ValueError(f"the training split has {n} image(s); at least 2 are needed to carve a validation split.")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, round(fraction * n)), n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# --------------------------------------------------------------------------------------------------
# batch sources
# --------------------------------------------------------------------------------------------------


def _rank_rows(rows: np.ndarray, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    rank, world = get_rank(), get_world_size()
    if shuffle:
        rows = rows[np.random.default_rng([seed, epoch]).permutation(len(rows))]
        rows = rows[: len(rows) - len(rows) % world]  # equal shares, so every rank takes the same number of steps
    return rows[rank::world]


def _batches_of(n: int, batch: int, drop_last: bool) -> list[tuple[int, int]]:
    if drop_last and n >= batch:
        n = n - n % batch
    return [(s, min(s + batch, n)) for s in range(0, n, batch)]


class CachedBatches:
    """Feature batches read from a cache: training (shuffled, each rank its share of every global batch) or
    evaluation (strided, unpadded)."""

    def __init__(self, split: CachedSplit, rows: np.ndarray, task: Task, batch_size: int, device: torch.device,
                 shuffle: bool, seed: int = 0) -> None:
        self.split, self.rows, self.task = split, np.asarray(rows), task
        self.per_rank = max(1, batch_size // get_world_size()) if shuffle else batch_size
        self.device, self.shuffle, self.seed = device, shuffle, seed
        self.tname = task.target_field()[0]

    def __len__(self) -> int:
        n = len(_rank_rows(self.rows, self.shuffle, self.seed, 0))
        return len(_batches_of(n, self.per_rank, self.shuffle))

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """This rank's ``(features, target)`` batches of ``epoch`` read from the cache (training: shuffled, seeded by
        ``seed`` and ``epoch``; each batch's rows read in sorted order)."""
        mine = _rank_rows(self.rows, self.shuffle, self.seed, epoch)
        for s, e in _batches_of(len(mine), self.per_rank, self.shuffle):
            rows = np.sort(mine[s:e])  # sorted rows read the memory map sequentially
            data = self.split.read(rows, self.device)
            target = data.pop(self.tname)
            if self.tname == "mask":
                target = target.long()
            yield data, target


class OnlineBatches:
    """Feature batches computed by the backbone from (optionally augmented) images, every epoch anew."""

    def __init__(self, dataset: Dataset, rows: np.ndarray | None, task: Task, extractor: FeatureExtractor,
                 batch_size: int, device: torch.device, shuffle: bool, seed: int = 0, num_workers: int = 0,
                 augment: bool = False) -> None:
        self.dataset = dataset if rows is None else Subset(dataset, np.asarray(rows).tolist())
        self.rows = np.arange(len(self.dataset))  # type: ignore[arg-type]
        self.task, self.extractor, self.device = task, extractor, device
        self.per_rank = max(1, batch_size // get_world_size()) if shuffle else batch_size
        self.shuffle, self.seed, self.num_workers, self.augment = shuffle, seed, num_workers, augment
        self.gen = torch.Generator().manual_seed(seed * 7919 + get_rank())

    def __len__(self) -> int:
        n = len(_rank_rows(self.rows, self.shuffle, self.seed, 0))
        return len(_batches_of(n, self.per_rank, self.shuffle))

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """This rank's ``(features, target)`` batches of ``epoch``: images loaded, augmented when ``augment`` is on,
        and passed through the backbone."""
        mine = _rank_rows(self.rows, self.shuffle, self.seed, epoch)
        n_keep = _batches_of(len(mine), self.per_rank, self.shuffle)
        mine = mine[: n_keep[-1][1]] if n_keep else mine[:0]
        loader = DataLoader(Subset(self.dataset, mine.tolist()), batch_size=self.per_rank, shuffle=False,
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        for images, targets in loader:
            images = images.to(self.device, non_blocking=True)
            target = self.task.target_of(targets).to(self.device, non_blocking=True)
            if self.augment:
                images, target = self.task.augment(images, target, self.gen)
            yield self.extractor(images), target


# --------------------------------------------------------------------------------------------------
# training and evaluation
# --------------------------------------------------------------------------------------------------


class _LossModule(nn.Module):
    """``forward(feats, target) -> summed loss of all heads`` (what DDP wraps)."""

    def __init__(self, task: Task, heads: nn.Module) -> None:
        super().__init__()
        self.task, self.heads = task, heads

    def forward(self, feats: Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return self.task.loss(self.heads, feats, target)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def train_heads(task: Task, heads: nn.Module, batches: CachedBatches | OnlineBatches, epochs: int,
                optim: Mapping[str, Any], device: torch.device,
                log: Callable[[str], None] | None = None) -> list[float]:
    """Train all heads together for ``epochs``; returns the mean loss per head for each epoch.

    ``optim``: ``type`` (sgd | adamw), ``lr_scale``, ``weight_decay``, ``momentum``, ``warmup_frac``. Under a
    process group the heads are wrapped in DDP (SyncBatchNorm on CUDA), so gradients are averaged over ranks.
    """
    module: nn.Module = _LossModule(task, heads).to(device)
    if get_world_size() > 1:
        if device.type == "cuda":
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        module = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda"
                                                     else None)
    groups = heads.param_groups(lr_scale=float(optim["lr_scale"]), weight_decay=float(optim["weight_decay"]))
    if optim["type"] == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=float(optim["momentum"]))
    else:
        opt = torch.optim.AdamW(groups, lr=groups[0]["lr"])
    base = [g["lr"] for g in opt.param_groups]
    steps = len(batches)
    if steps < 1:
        raise ValueError("the training split yields no batch; lower --batch-size or use more training images.")
    total = epochs * steps
    warmup = int(float(optim.get("warmup_frac", 0.0)) * total)
    n_heads = len(base)
    history, step = [], 0
    for epoch in range(epochs):
        heads.train()
        run, count = 0.0, 0
        for feats, target in batches.epoch(epoch):
            f = _lr_factor(step, total, warmup)
            for g, lr in zip(opt.param_groups, base, strict=True):
                g["lr"] = lr * f
            loss = module(feats, target)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the probe loss became {loss.item()} at epoch {epoch}, step {step}; the largest learning rate of "
                    "the grid is too high for these features, so lower --lrs."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run, count, step = run + float(loss.detach()) / n_heads, count + 1, step + 1
        history.append(reduce_mean_dict({"loss": run / max(count, 1)}, count)["loss"])  # over all ranks
        if log:
            log(f"epoch {epoch + 1}/{epochs}: mean head loss {history[-1]:.4f}")
    heads.eval()
    return history


@torch.no_grad()
def evaluate(task: Task, heads: nn.Module, batches: CachedBatches | OnlineBatches, names: list[str],
             device: torch.device, class_mask: torch.Tensor | None = None) -> dict[str, dict[str, Any]]:
    """Metrics of the heads ``names`` on every batch of ``batches`` (all ranks; reduced over ranks)."""
    heads.eval()
    meter = task.new_meter(names, device, class_mask)
    for feats, target in batches.epoch(0):
        out = task.predict(heads, feats, names, tuple(target.shape[-2:]) if task.dense else None)
        meter.update(out, target)
    return meter.all_reduce().compute()


@torch.no_grad()
def evaluate_sliding(task: Task, heads: nn.Module, name: str, extractor: FeatureExtractor, dataset: Dataset,
                     window: int, stride: int, device: torch.device) -> dict[str, Any]:
    """Sliding-window test inference of one segmentation head on full-size images (one image at a time)."""
    heads.eval()
    meter = task.new_meter([name], device)
    num_classes = int(task.num_classes)  # type: ignore[attr-defined]

    def fn(crops: torch.Tensor) -> torch.Tensor:
        return task.predict(heads, extractor(crops), [name], tuple(crops.shape[-2:]))[name]

    for i in range(get_rank(), len(dataset), get_world_size()):  # type: ignore[arg-type]
        image, target = dataset[i]
        tgt = task.target_of(default_collate([target])).to(device)
        logits = sliding_window_logits(fn, image[None].to(device), window, stride, num_classes)
        meter.update({name: logits}, tgt)
    return meter.all_reduce().compute()[name]


# --------------------------------------------------------------------------------------------------
# the whole probe
# --------------------------------------------------------------------------------------------------


def _log_fn(settings: ProbeSettings) -> Callable[[str], None] | None:
    if not (settings.verbose and is_main()):
        return None
    return lambda msg: print(f"[lineval] {msg}", file=sys.stderr, flush=True)


def run_probe(backbone: Backbone, spec: FeatureSpec, task: Task, data: ProbeData, settings: ProbeSettings,
              device: torch.device | str = "cpu", log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train, select (on validation) and test linear heads; returns the result dictionary (see the module doc).

    Progress messages (cache extraction, per-epoch head losses) go to ``log`` when given, else to stderr
    (``[lineval] ...``) with ``settings.verbose`` on the main rank.

    Seeds torch's global RNG with ``settings.seed`` before the data sources are built (data-loader worker seeds) and
    again right before the heads are initialised, so a probe is reproducible from its settings and gives the same
    result whether its feature cache was built in this call or reused. Collective under ``torchrun``: every rank
    calls it.
    """
    device = torch.device(device)
    t_start = time.perf_counter()
    log = log if log is not None else _log_fn(settings)
    if spec.dense != task.dense:
        raise ValueError(f"tokens='{spec.tokens}' does not fit a {task.kind} probe; use "
                         f"{'patch' if task.dense else 'cls, avg or cls+avg'}.")
    if settings.slide is not None and task.kind != "seg":
        raise ValueError("sliding-window inference (--slide) applies to segmentation only; drop it.")
    extractor = FeatureExtractor(backbone.features, spec, amp=settings.amp).to(device).eval()
    lrs = tuple(settings.lrs or task.default_lrs)
    optim = dict(task.optimizer)
    if settings.weight_decay is not None:
        optim["weight_decay"] = settings.weight_decay
    world = get_world_size()
    global_batch = max(1, settings.batch_size // world) * world
    optim["lr_scale"] = global_batch / 256 if optim["lr_scale"] == "global_batch/256" else float(optim["lr_scale"])
    train_rows, val_rows = carve_validation(len(data.train), settings.val_fraction, settings.seed)  # type: ignore

    torch.manual_seed(settings.seed)  # head init and data-loader worker seeds (online random transforms)
    times: dict[str, float] = {}
    cache_info: dict[str, Any] = {}
    t0 = time.perf_counter()
    extra_sources: dict[str, Any] = {}
    if settings.protocol == "cached":
        caches = _build_caches(backbone, spec, task, data, settings, extractor, device, log)
        cache_info = {k: {"path": str(c.path), "items": len(c), "bytes": c.meta.get("bytes"),
                          "extract_seconds": c.meta.get("extract_seconds")} for k, c in caches.items()}
        for c in caches.values():
            if c.meta.get("bytes", 0) <= settings.preload_bytes:
                c.preload()
        ebs = settings.eval_batch_size
        train_src: Any = CachedBatches(caches["train"], train_rows, task, settings.batch_size, device, True,
                                       settings.seed)
        val_src: Any = CachedBatches(caches["train"], val_rows, task, ebs, device, False)
        test_src: Any = (CachedBatches(caches["test"], np.arange(len(caches["test"])), task, ebs, device, False)
                         if "test" in caches else None)
        for name in data.extra_tests:
            extra_sources[name] = CachedBatches(caches[name], np.arange(len(caches[name])), task, ebs, device, False)
    else:
        aug_ds = data.train_aug if data.augment == "dataset" else data.train
        if aug_ds is None:
            raise ValueError("augment='dataset' needs ProbeData.train_aug (the training-transform dataset).")
        common = {"task": task, "extractor": extractor, "device": device, "num_workers": settings.num_workers}
        train_src = OnlineBatches(aug_ds, train_rows, batch_size=settings.batch_size, shuffle=True,
                                  seed=settings.seed, augment=data.augment == "tensor", **common)
        val_src = OnlineBatches(data.train, val_rows, batch_size=settings.eval_batch_size, shuffle=False, **common)
        test_src = OnlineBatches(data.test, None, batch_size=settings.eval_batch_size, shuffle=False, **common)
        for name, (ds, _) in data.extra_tests.items():
            extra_sources[name] = OnlineBatches(ds, None, batch_size=settings.eval_batch_size, shuffle=False,
                                                **common)
    times["extract_s"] = time.perf_counter() - t0

    # Head init and every random draw of head training come from the seed alone, never from what ran before (the
    # cache extraction above draws from the global RNG only when it builds a cache, not when it reuses one).
    torch.manual_seed(settings.seed)
    heads = task.build_heads(extractor.dim, lrs).to(device)
    t0 = time.perf_counter()
    history = train_heads(task, heads, train_src, settings.epochs, optim, device, log)
    times["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    names = list(heads.names)
    val = evaluate(task, heads, val_src, names, device)
    chosen = select_best({n: val[n][task.selection_metric] for n in names}, task.higher_is_better)
    # only the selected head ever sees a test set
    if settings.slide is not None:
        window, stride = settings.slide
        test_ds = data.slide_test if data.slide_test is not None else data.test
        test = evaluate_sliding(task, heads, chosen, extractor, test_ds, window, stride, device)
    else:
        test_ds = data.test
        test = evaluate(task, heads, test_src, [chosen], device)[chosen]
    extras = {name: evaluate(task, heads, src, [chosen], device, data.extra_tests[name][1])[chosen]
              for name, src in extra_sources.items()}
    times["eval_s"] = time.perf_counter() - t0
    times["total_s"] = time.perf_counter() - t_start

    k_sel = task.selection_metric
    return {
        "task_kind": task.kind,
        "model": {**backbone.info, "label": backbone.label, "fingerprint": backbone.fingerprint},
        "dataset": {**data.info, "name": data.name, "num_train": int(len(train_rows)), "num_val": int(len(val_rows)),
                    "num_test": len(test_ds)},  # type: ignore[arg-type]
        "protocol": {
            "name": settings.protocol,
            "train_features": ("cached once per image, evaluation transform, no augmentation"
                               if settings.protocol == "cached" else "recomputed every step on augmented images"),
            "augmentation": "none (cached)" if settings.protocol == "cached" else (data.augment_desc or data.augment),
            "selection": f"best {k_sel} on a validation split of {len(val_rows)} training images "
                         f"({settings.val_fraction:g} of train, seed {settings.seed}); the test set never enters",
            "test_inference": (f"sliding window {settings.slide[0]} px, stride {settings.slide[1]} px"
                               if settings.slide else "one forward per test image at the evaluation size"),
            "cache": cache_info or None,
        },
        "features": {**spec.to_dict(), "resolved_layers": list(extractor.layers), "dim": extractor.dim},
        "head": task.describe(),
        "optim": {**optim, "batch_size": global_batch, "eval_batch_size": settings.eval_batch_size},
        "epochs": settings.epochs,
        "lr_grid": list(lrs),
        "chosen_lr": float(heads.lr_of(chosen)),
        "chosen_head": chosen,
        "selection_metric": k_sel,
        "val_metrics": {n: val[n] for n in names},
        "metrics": test,
        "extra_tests": extras,
        "train_loss": history,
        "seed": settings.seed,
        "time": {k: round(v, 3) for k, v in times.items()},
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("verbose", "progress")},
        "env": {"world_size": world, "device": str(device), "torch": torch.__version__,
                "python": platform.python_version(), "host": platform.node()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _feature_source(cache_dir: Path, name: str, split: str, features_fingerprint: str,
                    own: Path) -> CachedSplit | None:
    """A complete cache in ``cache_dir`` of another task with the same features (``features_fingerprint``: images,
    backbone, token layout, dtype), e.g. segmentation's when depth runs on the same toy scenes; rank 0 decides."""
    found = None
    if get_rank() == 0:
        for side in sorted(cache_dir.glob(f"{name}_*/{split}.json")):
            if side.parent == own:
                continue
            try:
                meta = json.loads(side.read_text())
            except (OSError, ValueError):
                continue
            if meta.get("features_fingerprint") == features_fingerprint:
                found = open_cache(side.with_suffix(".npy"))
                if found is not None:
                    break
    path = broadcast_object(str(found.path) if found is not None else None)
    return found if get_rank() == 0 else (open_cache(path) if path is not None else None)


def _build_caches(backbone: Backbone, spec: FeatureSpec, task: Task, data: ProbeData, settings: ProbeSettings,
                  extractor: FeatureExtractor, device: torch.device,
                  log: Callable[[str], None] | None) -> dict[str, CachedSplit]:
    """One cache file per split: ``train`` (all training images, evaluation transform), ``test``, extra tests."""
    if settings.cache_dir is None:
        raise ValueError("the cached protocol needs a cache directory; pass --cache-dir (or settings.cache_dir).")
    features = {"backbone": backbone.fingerprint, "spec": spec.to_dict(), "dtype": settings.cache_dtype,
                "data": data.info}
    key = {**features, "task": task.kind, "target": task.target_field()[0]}
    folder = Path(settings.cache_dir) / f"{data.name}_{_hash(key)}"
    splits: dict[str, Dataset] = {"train": data.train}
    if settings.slide is None:  # sliding-window inference runs the backbone on the full test images instead
        splits["test"] = data.test
    splits.update({k: ds for k, (ds, _) in data.extra_tests.items()})
    out = {}
    for split, ds in splits.items():
        fingerprint = _hash({**key, "split": split, "n": len(ds)})  # type: ignore[arg-type]
        same_features = _hash({**features, "split": split, "n": len(ds)})  # type: ignore[arg-type]
        source = (partial(_feature_source, Path(settings.cache_dir), data.name, split, same_features, folder)
                  if settings.reuse_cache else None)
        out[split] = build_cache(
            folder / f"{split}.npy", ds, extractor, extractor.field_shapes, task.target_of, task.target_field(),
            fingerprint=fingerprint, meta={"feature_spec": spec.to_dict(), "backbone": backbone.info,
                                           "dataset": data.info, "task": task.kind,
                                           "features_fingerprint": same_features},
            batch_size=settings.eval_batch_size, num_workers=settings.num_workers, dtype=settings.cache_dtype,
            device=device, reuse=settings.reuse_cache, log=log, progress=settings.progress, features_from=source)
    return out
