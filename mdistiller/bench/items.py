"""What the benchmark times: the distiller training steps, the student step, the teacher forward and the loader,
built on one fixed batch from the same seed (see ``tools/bench.py`` for the command line).

``args`` is the option namespace of ``tools/bench.py`` (teacher, student, kwargs as JSON, size, batch, amp,
compile, adamw, clip, seed, cfg/opts, data, workers, m_layers, rank).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .timing import BenchError, Item, MemoryMeter, sync

__all__ = ["COMPONENTS", "METHODS", "REFERENCE_RELATIVE_DEPTH", "build_config", "build_items", "json_dict",
           "parse_names", "resolve_device", "resolve_m_layers", "time_loader"]

METHODS = ("FitNet", "ViTKD", "SiNGER", "student")
COMPONENTS = ("teacher", "student_fb", "loader", "stop_sync")
_ALIASES = {"fitnet": "FitNet", "vitkd": "ViTKD", "singer": "SiNGER", "student": "student",
            "teacher": "teacher", "student_fb": "student_fb", "loader": "loader", "stop_sync": "stop_sync"}
#: SiNGER's default intermediate layer 17 of a 24-block ViT-L, as relative depth 17/23 (used by --m-layers auto)
REFERENCE_RELATIVE_DEPTH = 17 / 23


def parse_names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    """The comma-separated ``text`` as canonical names from ``allowed`` (case-insensitive, duplicates dropped,
    ``''``/``none`` → empty); a :class:`BenchError` naming ``what`` for an unknown one.
    """
    if text.strip().lower() in ("", "none"):
        return []
    out = []
    for raw in text.split(","):
        name = _ALIASES.get(raw.strip().lower())
        if name not in allowed:
            raise BenchError(f"unknown {what} '{raw.strip()}'; choose from {', '.join(allowed)}.")
        if name not in out:
            out.append(name)
    return out


def json_dict(text: str, flag: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object; a :class:`BenchError` naming the option ``flag`` otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise BenchError(f"{flag} must be a JSON object such as '{{\"depth\": 4}}', got {text!r}.") from None
    if not isinstance(value, dict):
        raise BenchError(f"{flag} must be a JSON object such as '{{\"depth\": 4}}', got {text!r}.")
    return value


def resolve_m_layers(text: str, teacher_depth: int) -> list[int]:
    """``--m-layers``: comma-separated block indices, or ``auto`` — the block at SiNGER's reference relative depth
    (:data:`REFERENCE_RELATIVE_DEPTH`) of a ``teacher_depth``-block teacher, at most the second-to-last block.
    """
    if text.strip().lower() == "auto":
        return [min(teacher_depth - 2, max(0, round(REFERENCE_RELATIVE_DEPTH * (teacher_depth - 1))))]
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"--m-layers must be 'auto' or comma-separated block indices such as 8, got {text!r}.") \
            from None


def resolve_device(text: str):
    """``--device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a :class:`BenchError`
    for anything else or for CUDA where there is none.
    """
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise BenchError(f"unknown --device '{text}'; use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but CUDA is not available here; use --device cpu.")
    if dev.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {text} is not supported; use cpu or cuda.")
    return dev


def build_config(args: argparse.Namespace, method: str, m_layers: list[int], rank: int):
    """The yacs config of ``method`` for this benchmark (random student, given teacher weights, user overrides);
    ``m_layers`` (``--m-layers``) are both SiNGER's ``SiNGER.M_LAYERS`` and FitNet's ``FITNET.LAYERS``."""
    from mdistiller.config import ConfigError, load_config, validate_config

    opts: list[Any] = [
        "DISTILLER.TYPE", method, "DISTILLER.TEACHER", args.teacher, "DISTILLER.STUDENT", args.student,
        "DISTILLER.TEACHER_WEIGHTS", args.teacher_weights, "DISTILLER.STUDENT_WEIGHTS", "random",
        "DATASET.INPUT_SIZE", args.size, "SiNGER.M_LAYERS", m_layers, "FITNET.LAYERS", m_layers, "SiNGER.RANK", rank,
        "EXPERIMENT.SEED", args.seed,
    ]
    try:
        cfg = load_config(args.cfg, opts + list(args.opts), validate=False)
        # yacs' merge_from_list cannot add keys to the open *_KWARGS nodes, so they are set directly
        cfg.defrost()
        for node, text, flag in ((cfg.DISTILLER.TEACHER_KWARGS, args.teacher_kwargs, "--teacher-kwargs"),
                                 (cfg.DISTILLER.STUDENT_KWARGS, args.student_kwargs, "--student-kwargs")):
            for k, v in json_dict(text, flag).items():
                node[k] = v
        validate_config(cfg)
        cfg.freeze()
        return cfg
    except ConfigError as e:
        raise BenchError(str(e)) from None


def _optimizer(params, args: argparse.Namespace):
    from mdistiller.engine.optim import build_optimizer

    impl = {"foreach": {"foreach": True}, "fused": {"fused": True}, "forloop": {"foreach": False},
            "default": {}}[args.adamw]
    return build_optimizer(params, "adamw", lr=1e-4, weight_decay=0.05, **impl)


def _patches(args: argparse.Namespace, model) -> tuple[int, int]:
    """(student patches, teacher patches) on the benchmark's input size."""
    s_grid = model.student.grid((args.size, args.size))
    teacher = model.teacher
    if teacher.grid_align == "resize_input":
        t_grid = s_grid
    else:
        p = teacher.net.patch_size
        t_grid = (max(1, round(args.size / p)),) * 2
    return s_grid[0] * s_grid[1], t_grid[0] * t_grid[1]


def _fused_attn(model) -> bool:
    return all(bool(getattr(getattr(b, "attn", None), "fused_attn", False)) for b in model.blocks)


def build_items(args: argparse.Namespace, methods: list[str], components: list[str], device) -> tuple[list[Item], dict]:
    """Build every distiller / student / component item on ``device`` and the shared fixed batch."""
    import torch

    from mdistiller.bench.flops import method_flops
    from mdistiller.distillers import build_distiller
    from mdistiller.models import ViTFeatures, build_model
    from mdistiller.models.flops import vit_shape

    t_kwargs = json_dict(args.teacher_kwargs, "--teacher-kwargs")
    with torch.device("meta"):
        t_meta = build_model(args.teacher, False, dynamic_img_size=True, **t_kwargs)
    m_layers = resolve_m_layers(args.m_layers, len(t_meta.blocks))
    rank = args.rank  # checked against the teacher width by the config validation
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=gen).to(device)
    amp = args.amp == "bf16"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def maybe_compile(fn):
        return torch.compile(fn) if args.compile else fn

    def make_step(fwd, opt, params) -> Callable[[], None]:
        """One distiller training step: forward of ``loss``, backward, (clip,) AdamW step, ``zero_grad``."""

        def step() -> None:
            with autocast():
                loss = fwd(images)["loss"]
            loss.backward()
            if args.clip > 0:
                torch.nn.utils.clip_grad_norm_(params, args.clip)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    items: list[Item] = []
    info: dict[str, Any] = {"m_layers": m_layers, "rank": rank, "plans": {}}
    distillers = {}
    for method in [m for m in methods if m != "student"]:
        cfg = build_config(args, method, m_layers, rank)
        torch.manual_seed(args.seed)
        model = build_distiller(cfg, device)
        model.train()
        opt = _optimizer(model.trainable_parameters(), args)
        params = [p for _, p in model.trainable_parameters()]
        step, eager_step = make_step(maybe_compile(model), opt, params), make_step(model, opt, params)
        s_p, t_p = _patches(args, model)
        request = model.teacher_request()
        flops = method_flops(
            method, vit_shape(model.teacher.net.model), vit_shape(model.student.model),
            teacher_patches=t_p, student_patches=s_p, teacher_blocks=max(request) + 1,
            student_blocks=max(model.plan.student) + 1, teacher_layers=model.plan.teacher,
            **model.flops_options(),
        )
        n_train = sum(p.numel() for p in params)
        items.append(Item(method, step, flops, eager_step, {"trainable_params": n_train}))
        distillers[method] = model
        info["plans"][method] = {"teacher": model.plan.teacher, "student": model.plan.student,
                                 "teacher_blocks_run": max(request) + 1}
        info["fused_attn"] = {"timm_use_fused_attn": _timm_fused(), "teacher": _fused_attn(model.teacher.net.model),
                              "student": _fused_attn(model.student.model)}

    need_student = "student" in methods or "student_fb" in components
    if need_student:
        cfg = build_config(args, "FitNet", m_layers, rank)
        torch.manual_seed(args.seed)
        s_kwargs = dict(cfg.DISTILLER.STUDENT_KWARGS)
        net = ViTFeatures(build_model(cfg.DISTILLER.STUDENT, False, img_size=args.size, **s_kwargs)).to(device)
        net.train()
        last = net.depth - 1
        s_params = [p for p in net.parameters() if p.requires_grad]
        s_opt = _optimizer([(n, p) for n, p in net.named_parameters() if p.requires_grad], args)
        s_fwd = maybe_compile(net)
        shape = vit_shape(net.model)
        grid = net.grid((args.size, args.size))
        s_flops = method_flops("student", shape, shape, teacher_patches=0, student_patches=grid[0] * grid[1],
                               teacher_blocks=0, student_blocks=net.depth)
        info.setdefault("fused_attn", {"timm_use_fused_attn": _timm_fused()})["student"] = _fused_attn(net.model)

        def s_loss(fwd) -> torch.Tensor:
            with autocast():
                tokens = fwd(images, [last])[last]
            return tokens.float().pow(2).mean()

        def s_step(fwd=s_fwd):
            s_loss(fwd).backward()
            if args.clip > 0:
                torch.nn.utils.clip_grad_norm_(s_params, args.clip)
            s_opt.step()
            s_opt.zero_grad(set_to_none=True)

        def s_fb(fwd=s_fwd):
            s_loss(fwd).backward()

        def clear_grads():
            for p in s_params:
                p.grad = None

        if "student" in methods:
            items.append(Item("student", s_step, s_flops, lambda: s_step(net),
                              {"trainable_params": sum(p.numel() for p in s_params)}))
        if "student_fb" in components:
            def fb_then_clear(fwd=s_fwd):
                s_fb(fwd)
                clear_grads()  # inside the timed call but negligible (pointer resets)

            items.append(Item("student_fb", fb_then_clear, s_flops, lambda: fb_then_clear(net)))

    if "teacher" in components:
        if distillers:
            model = max(distillers.values(), key=lambda m: max(m.teacher_request()))
            teacher, request = model.teacher, model.teacher_request()
            s_p, t_p = _patches(args, model)
            sgrid = model.student.grid((args.size, args.size))
        else:  # no distiller chosen: a FitNet-planned teacher alone
            cfg = build_config(args, "FitNet", m_layers, rank)
            torch.manual_seed(args.seed)
            model = build_distiller(cfg, device)
            teacher, request = model.teacher, model.teacher_request()
            s_p, t_p = _patches(args, model)
            sgrid = model.student.grid((args.size, args.size))
        t_fwd = maybe_compile(teacher)
        t_flops = method_flops("teacher", vit_shape(teacher.net.model), vit_shape(teacher.net.model),
                               teacher_patches=t_p, student_patches=s_p, teacher_blocks=max(request) + 1,
                               student_blocks=0)

        def t_run(fwd=t_fwd):
            with autocast():
                fwd(images, request, student_grid=sgrid)

        items.append(Item("teacher", t_run, t_flops, lambda: t_run(teacher), {"blocks_run": max(request) + 1}))
    return items, info


def _timm_fused() -> bool:
    from timm.layers import use_fused_attn

    return bool(use_fused_attn())


def _loader_dataset(args: argparse.Namespace, n: int) -> tuple[Any, str]:
    """The training dataset the loader item reads (``--data`` in ``--format``, else toy scenes) and its label."""
    from mdistiller.dataset import build_dataset

    fmt = getattr(args, "format", "folder")
    if not args.data:
        if fmt != "folder":
            raise BenchError(f"--format {fmt} reads --data; pass the folder that holds the {fmt} data.")
        return build_dataset("toy_scenes", "train", root=None, input_size=args.size, train=True, num_images=n), \
            "toy_scenes"
    if not Path(args.data).is_dir():
        raise BenchError(f"--data folder '{args.data}' does not exist; pass the dataset's root folder.")
    stream = fmt == "wds" and getattr(args, "stream", False)
    kwargs: dict[str, Any] = {"format": fmt}
    if stream:
        kwargs |= {"wds_mode": "stream", "shuffle_buffer": args.shuffle_buffer}
    try:
        ds = build_dataset("imagenet", "train", root=args.data, input_size=args.size, train=True, **kwargs)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise BenchError(str(e)) from None
    mode = f" stream, buffer {args.shuffle_buffer}" if stream else ""
    return ds, f"{fmt}{mode} {args.data}"


def _batches(loader, position) -> Iterator[Any]:
    """Batches of the training loader, epoch after epoch (``set_epoch`` as the Trainer calls it)."""
    epoch = 0
    while True:
        position.set_epoch(epoch)
        yield from loader
        epoch += 1


def time_loader(args: argparse.Namespace, device, rounds: int, warmup: int) -> Item:
    """Batches per second of the training data loader alone (its own workers; no model work): the dataset of
    ``--data`` / ``--format`` (toy scenes without ``--data``) behind the Trainer's loader, with its seeded per-sample
    augmentation and resumable sampler (or a wds stream's own order). Records the loader workers' peak RSS."""
    from mdistiller.dataset.bad_images import guard_images
    from mdistiller.engine.data import build_train_loader

    from .timing import cpu_seconds, peak_rss_mib, reset_peak_rss

    n = args.batch * (rounds + warmup + 1)
    ds, source = _loader_dataset(args, n)
    workers = 2 if args.workers is None else args.workers
    try:
        loader, position = build_train_loader(
            guard_images(ds, skip=False), world_size=1, rank=0, batch_size=args.batch, seed=args.seed,
            num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0, prefetch_factor=2)
    except ValueError as e:
        raise BenchError(str(e)) from None
    it = _batches(loader, position)
    item = Item("loader", lambda: None, None, info={"source": source, "workers": workers,
                                                     "images": len(ds), "steps_per_epoch": position.steps_per_epoch})
    meter = MemoryMeter(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        next(it)
    item.first_call_s = time.perf_counter() - t0
    pids = [w.pid for w in getattr(loader._iterator, "_workers", [])] if workers else []
    for pid in pids:
        reset_peak_rss(pid)
    cpu0 = [cpu_seconds(pid) for pid in pids]
    main_cpu = 0.0
    for _ in range(rounds):
        base = meter.start()
        c0, t0 = time.process_time(), time.perf_counter()
        batch = next(it)
        images = batch[0].to(device, non_blocking=True)
        sync(device)
        item.times.append(time.perf_counter() - t0)
        item.cpu_times.append(time.process_time() - c0)
        main_cpu += item.cpu_times[-1]
        peak = meter.peak()
        item.peaks.append(peak)
        item.deltas.append(max(0.0, peak - base))
        del images
    spent = [(b - a) if a is not None and b is not None else None
             for a, b in zip(cpu0, (cpu_seconds(pid) for pid in pids), strict=True)]
    # CPU seconds of this process and its workers per image (workers may have prefetched up to 2 batches more)
    item.info["cpu_s_per_image"] = (None if None in spent else
                                    (main_cpu + sum(spent)) / (rounds * args.batch))  # type: ignore[arg-type]
    peaks = [p for p in (peak_rss_mib(pid) for pid in pids) if p is not None]
    item.info["worker_peak_rss_mib"] = max(peaks) if peaks else None
    it.close()
    return item
