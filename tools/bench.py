#!/usr/bin/env python
"""Side-by-side training-step benchmark of the distillers on one teacher, student, batch and resolution.

Every timed item is built once, warmed up, then timed in alternation (round r runs A B C …, round r+1 runs
… C B A, so slow drift and position effects cancel in the ratios). Items:

* ``FitNet``, ``ViTKD``, ``SiNGER``: one training step — distiller forward (``loss``), backward, AdamW step,
  ``zero_grad`` — built with :func:`mdistiller.distillers.build_distiller` from the same seed;
* ``student``: the no-distillation step — student forward to its last block, a dummy loss on those tokens,
  backward, AdamW step, ``zero_grad``;
* components ``teacher`` (frozen teacher forward up to the deepest block any chosen method needs) and
  ``student_fb`` (student forward + backward, no optimizer), timed in the same rotation;
* component ``loader``: the data loader alone (toy scenes, or an ImageNet-style folder with ``--data``), timed
  after the rotation so its workers do not compete with the model steps.

Printed per item: median and min–max step time, images/s, peak memory (CUDA: max allocated; CPU: the process's
peak RSS during the item's steps, reset through ``/proc/self/clear_refs``), the FLOP bound per image
(:mod:`mdistiller.bench_flops`), the achieved TFLOP/s and, with ``--peak-tflops``, the fraction of peak; and the
ratio to FitNet as the median (min–max) of the per-round paired wall-time ratios, the median paired CPU-time ratio
(steadier when other jobs share the CPU) and the FLOP-bound ratio. ``--json`` prints one JSON object instead.

Examples::

    python tools/bench.py                                   # small CPU default (< 1 min on 2 cores)
    python tools/bench.py --batch 16 --steps 8 --methods fitnet,singer --components none
    python tools/bench.py --device cuda --teacher vit_large --student vit_tiny --batch 256 --amp bf16 \\
        --compile --adamw fused --peak-tflops 989
    python tools/bench.py --tiny --steps 2 --warmup 1 --json
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub: the benchmark uses random weights by default

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

METHODS = ("FitNet", "ViTKD", "SiNGER", "student")
COMPONENTS = ("teacher", "student_fb", "loader")
_ALIASES = {"fitnet": "FitNet", "vitkd": "ViTKD", "singer": "SiNGER", "student": "student",
            "teacher": "teacher", "student_fb": "student_fb", "loader": "loader"}
TINY = {
    "teacher": "vit_small", "student": "vit_tiny", "size": 32, "batch": 4, "rank": 8, "workers": 0,
    "teacher_kwargs": {"depth": 4, "embed_dim": 96, "num_heads": 3},
    "student_kwargs": {"depth": 3, "embed_dim": 48, "num_heads": 3},
}
#: SiNGER's default intermediate layer 17 of a 24-block ViT-L, as relative depth 17/23 (used by --m-layers auto)
REFERENCE_RELATIVE_DEPTH = 17 / 23


class BenchError(Exception):
    """A user-caused problem; the message is one sentence with the fix."""


class CompileTimeout(Exception):
    """``torch.compile`` of an item did not finish within ``--compile-timeout`` seconds."""


# ------------------------------------------------------------------------------------------------ arguments
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tools/bench.py",
        description="Time FitNet / ViTKD / SiNGER training steps side by side (alternating rounds) and compare "
                    "them with the analytic FLOP bound.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--teacher", default="vit_small", help="teacher short name or timm ViT name")
    p.add_argument("--student", default="vit_tiny", help="student short name or timm ViT name")
    p.add_argument("--teacher-kwargs", default="{}", help="JSON dict of extra timm kwargs for the teacher")
    p.add_argument("--student-kwargs", default="{}", help="JSON dict of extra timm kwargs for the student")
    p.add_argument("--teacher-weights", default="random", help="random | pretrained | /path/to/weights")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: 4 on CPU, 64 on CUDA)")
    p.add_argument("--size", type=int, default=224, help="input resolution in pixels (square)")
    p.add_argument("--steps", type=int, default=None, help="timed rounds (default: 4 on CPU, 20 on CUDA)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed rounds first, the first one compiling with --compile; every item is called at "
                        "least once before timing (default: 1 on CPU, 3 on CUDA)")
    p.add_argument("--methods", default="fitnet,vitkd,singer,student",
                   help="comma-separated training steps to time: fitnet, vitkd, singer, student (no distillation)")
    p.add_argument("--components", default="teacher,student_fb,loader",
                   help="comma-separated parts timed alone: teacher, student_fb, loader; 'none' for no parts")
    p.add_argument("--m-layers", default="auto",
                   help="SiNGER/FitNet intermediate teacher layers (comma-separated, 0-based) or 'auto' = the "
                        "block at relative depth 17/23 (layer 17 of 24, layer 8 of 12)")
    p.add_argument("--rank", type=int, default=16, help="SiNGER adapter rank (capped at the teacher width)")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast dtype for the forward passes")
    p.add_argument("--compile", action="store_true", help="torch.compile each timed module (compile time reported)")
    p.add_argument("--compile-timeout", type=float, default=900.0,
                   help="seconds allowed for one item's first (compiling) call; past it the item runs eager")
    p.add_argument("--adamw", choices=("fused", "foreach", "forloop", "default"), default="fused",
                   help="AdamW implementation: fused kernels (CPU and CUDA), foreach, the per-tensor loop, or "
                        "torch's default (foreach on CUDA, the loop on CPU)")
    p.add_argument("--clip", type=float, default=0.0, help="also clip the gradient norm to this value (0 = off)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--omp-wait", choices=("passive", "active", "env"), default="passive",
                   help="OMP_WAIT_POLICY set before torch loads: passive (idle OpenMP threads sleep; far steadier "
                        "timings on a shared CPU), active (they spin), env (leave the environment alone); no effect "
                        "once torch is imported in this process")
    p.add_argument("--data", default=None, help="ImageNet-style folder (root/train/<class>/*.JPEG) for the loader; "
                                                "default: procedural toy scenes")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: 2, 0 with --tiny)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak TFLOP/s for the achieved fraction (e.g. 989 for H100 bf16 dense)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch")
    p.add_argument("--cfg", action="append", default=[], help="extra YAML config file (may repeat)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides, e.g. SiNGER.RANK 8")
    p.add_argument("--tiny", action="store_true", help="tiny preset: 4-block width-96 teacher, 3-block width-48 "
                                                       "student, 32 px, batch 4 (seconds on CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--output", default=None, help="also write the JSON result to this file")
    args = p.parse_args(argv)
    if args.tiny:  # the preset fills only what was left at its default
        preset = {"teacher": TINY["teacher"], "student": TINY["student"], "size": TINY["size"], "rank": TINY["rank"],
                  "teacher_kwargs": json.dumps(TINY["teacher_kwargs"]),
                  "student_kwargs": json.dumps(TINY["student_kwargs"]), "batch": TINY["batch"],
                  "workers": TINY["workers"]}
        for key, value in preset.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
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


def _json_dict(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise BenchError(f"{flag} must be a JSON object such as '{{\"depth\": 4}}', got {text!r}.") from None
    if not isinstance(value, dict):
        raise BenchError(f"{flag} must be a JSON object such as '{{\"depth\": 4}}', got {text!r}.")
    return value


# ------------------------------------------------------------------------------------------------ measuring
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class MemoryMeter:
    """Peak memory of a stretch of work: CUDA max-allocated bytes, or the CPU process's peak RSS (VmHWM after
    resetting it through ``/proc/self/clear_refs``; without that, ``ru_maxrss`` over the process lifetime)."""

    def __init__(self, device) -> None:
        self.device = device
        self.can_reset = False
        if device.type != "cuda":
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.can_reset = _status_kb("VmHWM") is not None
            except OSError:
                self.can_reset = False
        self.source = ("cuda max_memory_allocated" if device.type == "cuda"
                       else "peak RSS (VmHWM, reset per step)" if self.can_reset else "ru_maxrss (process lifetime)")

    def start(self) -> float:
        """Reset the peak; return the current level in MiB."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device) / 2**20
        if self.can_reset:
            Path("/proc/self/clear_refs").write_text("5")
            return (_status_kb("VmRSS") or 0) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def peak(self) -> float:
        """Peak since :meth:`start` in MiB."""
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.can_reset:
            return (_status_kb("VmHWM") or 0) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`CompileTimeout` in the main thread after ``seconds`` (no-op without SIGALRM or for ≤ 0)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _handler(signum, frame):  # noqa: ARG001
        raise CompileTimeout(f"the first call did not finish within {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Item:
    """One timed thing: ``run()`` does a full unit of work (one step, one forward, …) on the fixed batch."""

    name: str
    run: Callable[[], None]
    flops: dict[str, int] | None = None
    eager_run: Callable[[], None] | None = None  # the uncompiled fallback when compiling times out
    info: dict[str, Any] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)
    deltas: list[float] = field(default_factory=list)
    first_call_s: float | None = None
    error: str | None = None


def _measure(item: Item, device, meter: MemoryMeter) -> None:
    base = meter.start()
    _sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    item.run()
    _sync(device)
    t1, c1 = time.perf_counter(), time.process_time()
    peak = meter.peak()
    item.times.append(t1 - t0)
    item.cpu_times.append(c1 - c0)
    item.peaks.append(peak)
    item.deltas.append(max(0.0, peak - base))


def _first_call(item: Item, device, compiling: bool, limit: float) -> None:
    import torch

    t0 = time.perf_counter()
    try:
        with time_limit(limit if compiling else 0):
            item.run()
            _sync(device)
    except CompileTimeout as e:
        item.error = f"compile timed out ({e}); timed eager instead"
        torch._dynamo.reset()
        if item.eager_run is None:
            raise
        item.run = item.eager_run
        item.run()
        _sync(device)
    item.first_call_s = time.perf_counter() - t0


def rotate(items: list[Item], rounds: int, device, meter: MemoryMeter) -> None:
    """Time every item once per round, alternating the order (forward, then reversed) between rounds."""
    for r in range(rounds):
        order = items if r % 2 == 0 else items[::-1]
        for item in order:
            _measure(item, device, meter)


# ------------------------------------------------------------------------------------------------ building
def _resolve_m_layers(text: str, teacher_depth: int) -> list[int]:
    if text.strip().lower() == "auto":
        return [min(teacher_depth - 2, max(0, round(REFERENCE_RELATIVE_DEPTH * (teacher_depth - 1))))]
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"--m-layers must be 'auto' or comma-separated block indices such as 8, got {text!r}.") \
            from None


def _device(text: str):
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
    """The yacs config of ``method`` for this benchmark (random student, given teacher weights, user overrides)."""
    from mdistiller.config import ConfigError, load_config, validate_against_models, validate_config

    opts: list[Any] = [
        "DISTILLER.TYPE", method, "DISTILLER.TEACHER", args.teacher, "DISTILLER.STUDENT", args.student,
        "DISTILLER.TEACHER_WEIGHTS", args.teacher_weights, "DISTILLER.STUDENT_WEIGHTS", "random",
        "DATASET.INPUT_SIZE", args.size, "SiNGER.M_LAYERS", m_layers, "SiNGER.RANK", rank,
        "EXPERIMENT.SEED", args.seed,
    ]
    try:
        cfg = load_config(args.cfg, opts + list(args.opts), validate=False)
        # yacs' merge_from_list cannot add keys to the open *_KWARGS nodes, so they are set directly
        cfg.defrost()
        for node, text, flag in ((cfg.DISTILLER.TEACHER_KWARGS, args.teacher_kwargs, "--teacher-kwargs"),
                                 (cfg.DISTILLER.STUDENT_KWARGS, args.student_kwargs, "--student-kwargs")):
            for k, v in _json_dict(text, flag).items():
                node[k] = v
        validate_config(cfg)
        validate_against_models(cfg)
        cfg.freeze()
        return cfg
    except ConfigError as e:
        raise BenchError(str(e)) from None


def _optimizer(params, args: argparse.Namespace):
    from mdistiller.engine.optim import build_optimizer

    impl = {"foreach": {"foreach": True}, "fused": {"fused": True}, "forloop": {"foreach": False},
            "default": {}}[args.adamw]
    return build_optimizer(params, "adamw", lr=1e-4, weight_decay=0.05, **impl)


def _teacher_request(model) -> list[int]:
    return model.teacher_request() if hasattr(model, "teacher_request") else list(model.plan.teacher)


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

    from mdistiller.bench_flops import method_flops, vit_shape
    from mdistiller.distillers import build_distiller
    from mdistiller.models import ViTFeatures, build_model

    t_kwargs = _json_dict(args.teacher_kwargs, "--teacher-kwargs")
    with torch.device("meta"):
        t_meta = build_model(args.teacher, False, dynamic_img_size=True, **t_kwargs)
    t_depth, t_width = len(t_meta.blocks), int(t_meta.embed_dim)
    m_layers = _resolve_m_layers(args.m_layers, t_depth)
    rank = max(1, min(args.rank, t_width))
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
        request = _teacher_request(model)
        s_cfg = cfg.SiNGER
        flops = method_flops(
            method, vit_shape(model.teacher.net.model), vit_shape(model.student.model),
            teacher_patches=t_p, student_patches=s_p, teacher_blocks=max(request) + 1,
            student_blocks=max(model.plan.student) + 1, teacher_layers=model.plan.teacher, rank=rank,
            kd_cls=bool(cfg.DISTILLER.KD_CLS), use_info=bool(s_cfg.USE_INFO), info=s_cfg.INFO.lower(),
            info_fraction=float(s_cfg.INFO_FRACTION),
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
            model = max(distillers.values(), key=lambda m: max(_teacher_request(m)))
            teacher, request = model.teacher, _teacher_request(model)
            s_p, t_p = _patches(args, model)
            sgrid = model.student.grid((args.size, args.size))
        else:  # no distiller chosen: a FitNet-planned teacher alone
            cfg = build_config(args, "FitNet", m_layers, rank)
            torch.manual_seed(args.seed)
            model = build_distiller(cfg, device)
            teacher, request = model.teacher, list(model.plan.teacher)
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


def time_loader(args: argparse.Namespace, device, rounds: int, warmup: int) -> Item:
    """Batches per second of the data loader alone (its own workers; no model work)."""
    import torch
    from torch.utils.data import DataLoader

    from mdistiller.dataset import build_dataset

    n = args.batch * (rounds + warmup + 1)
    if args.data:
        if not Path(args.data).is_dir():
            raise BenchError(f"--data folder '{args.data}' does not exist; pass an ImageNet-style root folder.")
        try:
            ds = build_dataset("imagenet", "train", root=args.data, input_size=args.size, train=True)
        except (FileNotFoundError, ValueError) as e:
            raise BenchError(str(e)) from None
        source = f"folder {args.data}"
    else:
        ds = build_dataset("toy_scenes", "train", root=None, input_size=args.size, train=True, num_images=n)
        source = "toy_scenes"
    workers = 2 if args.workers is None else args.workers
    loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        generator=torch.Generator().manual_seed(args.seed))
    it = iter(loader)
    item = Item("loader", lambda: None, None, info={"source": source, "workers": workers})
    meter = MemoryMeter(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        next(it)
    item.first_call_s = time.perf_counter() - t0
    for _ in range(rounds):
        base = meter.start()
        c0, t0 = time.process_time(), time.perf_counter()
        batch = next(it)
        images = batch[0].to(device, non_blocking=True)
        _sync(device)
        item.times.append(time.perf_counter() - t0)
        item.cpu_times.append(time.process_time() - c0)
        peak = meter.peak()
        item.peaks.append(peak)
        item.deltas.append(max(0.0, peak - base))
        del images
    del it
    return item


# ------------------------------------------------------------------------------------------------ reporting
def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(items: list[Item], args: argparse.Namespace, device, meter: MemoryMeter, info: dict) -> dict:
    """The JSON-ready result: machine, setup, per-item statistics and ratios to the reference method."""
    import timm
    import torch

    ref_name = "FitNet" if any(i.name == "FitNet" for i in items) else (items[0].name if items else None)
    ref = next((i for i in items if i.name == ref_name), None)
    results: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for item in items:
        t = _stats(item.times)
        med = t["median"]
        r: dict[str, Any] = {
            "times_s": item.times, "median_s": med, "min_s": t["min"], "max_s": t["max"],
            "cpu_time_median_s": _stats(item.cpu_times)["median"],
            "images_per_s": args.batch / med if med else None,
            "peak_mem_mib": max(item.peaks) if item.peaks else None,
            "step_mem_delta_mib": max(item.deltas) if item.deltas else None,
            "first_call_s": item.first_call_s,
            "compile_s": (item.first_call_s - med) if (args.compile and item.first_call_s and med
                                                         and item.name != "loader") else None,
            "error": item.error, **item.info,
        }
        if item.flops is not None:
            r["flops_per_image"] = item.flops
            r["gflop_per_image"] = item.flops["total"] / 1e9
            achieved = item.flops["total"] * args.batch / med / 1e12 if med else None
            r["achieved_tflops"] = achieved
            r["peak_fraction"] = achieved / args.peak_tflops if (achieved and args.peak_tflops) else None
        results[item.name] = r
        if ref is not None and item.name != "loader" and item.times and ref.times:
            paired = [a / b for a, b in zip(item.times, ref.times)]
            cpu_paired = [a / b for a, b in zip(item.cpu_times, ref.cpu_times) if b > 0]
            ps = _stats(paired)
            ratios[item.name] = {
                "paired_median": ps["median"], "paired_min": ps["min"], "paired_max": ps["max"],
                "of_medians": med / statistics.median(ref.times),
                "of_mins": min(item.times) / min(ref.times),
                "cpu_time_paired_median": _stats(cpu_paired)["median"],
            }
            if item.flops is not None and ref.flops is not None:
                ratios[item.name]["flop_bound"] = item.flops["total"] / ref.flops["total"]
    machine = {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "timm": timm.__version__, "device": str(device), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "memory_source": meter.source, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    setup = {
        "teacher": args.teacher, "student": args.student, "teacher_kwargs": _json_dict(args.teacher_kwargs, "x"),
        "student_kwargs": _json_dict(args.student_kwargs, "x"), "teacher_weights": args.teacher_weights,
        "batch": args.batch, "size": args.size, "steps": args.steps, "warmup": args.warmup, "amp": args.amp,
        "compile": args.compile, "adamw": args.adamw, "clip": args.clip, "opts": list(args.opts),
        "peak_tflops": args.peak_tflops, "order": "alternating rounds: A B C …, then … C B A", **info,
    }
    return {"machine": machine, "setup": setup, "reference": ref_name, "results": results, "ratios": ratios}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def print_table(result: dict) -> None:
    m, s = result["machine"], result["setup"]
    print(f"device {m['device']} ({m['gpu'] or m['cpu']}, {m['threads']} threads), torch {m['torch']}, "
          f"timm {m['timm']}")
    print(f"{s['teacher']} → {s['student']}, {s['size']} px, batch {s['batch']}, amp {s['amp']}, "
          f"compile {'on' if s['compile'] else 'off'}, AdamW {s['adamw']}, M_LAYERS {s['m_layers']}, rank {s['rank']}")
    for name, plan in s.get("plans", {}).items():
        print(f"  {name}: teacher {plan['teacher']} → student {plan['student']}, "
              f"teacher blocks run {plan['teacher_blocks_run']}")
    fa = s.get("fused_attn")
    if fa:
        print("  fused attention (SDPA): " + ", ".join(f"{k} {v}" for k, v in fa.items()))
    ref = result["reference"]
    head = (f"{'item':<11} {'median s':>9} {'min–max s':>15} {'cpu s':>7} {'img/s':>8} {'peak MiB':>9} "
            f"{'Δstep MiB':>9} {'GFLOP/img':>9} {'TFLOP/s':>8} {'%peak':>6} {'×' + str(ref) + ' wall':>23} "
            f"{'× cpu':>6} {'× FLOP':>6}")
    print(head)
    print("-" * len(head))
    for name, r in result["results"].items():
        ratio = result["ratios"].get(name)
        rtxt = (f"{ratio['paired_median']:.3f} ({ratio['paired_min']:.2f}–{ratio['paired_max']:.2f})"
                if ratio else "-")
        frac = r.get("peak_fraction")
        print(f"{name:<11} {_fmt(r['median_s'], '9.4f')} "
              f"{_fmt(r['min_s'], '.4f') + '–' + _fmt(r['max_s'], '.4f'):>15} {_fmt(r['cpu_time_median_s'], '7.3f')} "
              f"{_fmt(r['images_per_s'], '8.1f')} {_fmt(r['peak_mem_mib'], '9.0f')} "
              f"{_fmt(r['step_mem_delta_mib'], '9.0f')} {_fmt(r.get('gflop_per_image'), '9.3f')} "
              f"{_fmt(r.get('achieved_tflops'), '8.3f')} {_fmt(frac * 100 if frac else None, '6.1f')} {rtxt:>23} "
              f"{_fmt(ratio and ratio.get('cpu_time_paired_median'), '6.3f')} "
              f"{_fmt(ratio and ratio.get('flop_bound'), '6.3f')}")
        if r.get("compile_s") is not None:
            print(f"{'':<11} compile ≈ {r['compile_s']:.1f} s (first call {r['first_call_s']:.1f} s)")
        if r.get("error"):
            print(f"{'':<11} note: {r['error']}")
    print(f"memory: {m['memory_source']}; ratios ×{ref}: median (min–max) of per-round paired wall-time ratios, "
          "median paired CPU-time ratio (steadier on a shared CPU), FLOP-bound ratio")


# ------------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark; returns the result dictionary (also printed)."""
    args = parse_args(argv)
    try:
        return _main(args)
    except BenchError as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _main(args: argparse.Namespace) -> dict:
    if args.omp_wait != "env":
        if "torch" in sys.modules:
            if os.environ.get("OMP_WAIT_POLICY", "").lower() != args.omp_wait:
                warnings.warn(f"--omp-wait {args.omp_wait} has no effect: torch is already imported.", stacklevel=2)
        else:
            os.environ["OMP_WAIT_POLICY"] = args.omp_wait.upper()
    import torch

    methods = _names(args.methods, METHODS, "method")
    components = _names(args.components, COMPONENTS, "component")
    if not methods and not components:
        raise BenchError("nothing to time: give at least one of --methods or --components.")
    if args.threads is not None:
        if args.threads < 1:
            raise BenchError(f"--threads must be a positive integer, got {args.threads}.")
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    cuda = device.type == "cuda"
    args.batch = args.batch or (64 if cuda else 4)
    args.steps = args.steps if args.steps is not None else (20 if cuda else 4)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    for flag, value, low in (("--batch", args.batch, 1), ("--size", args.size, 1), ("--steps", args.steps, 1),
                             ("--warmup", args.warmup, 0)):
        if value < low:
            raise BenchError(f"{flag} must be at least {low}, got {value}.")
    if "loader" in components and args.data and not Path(args.data).is_dir():
        raise BenchError(f"--data folder '{args.data}' does not exist; pass an ImageNet-style root folder.")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise BenchError(f"--peak-tflops must be positive, got {args.peak_tflops}.")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        items, info = build_items(args, methods, [c for c in components if c != "loader"], device)
    meter = MemoryMeter(device)
    for item in items:  # first call (compilation, allocator warm-up), then the remaining warm-up rounds
        _first_call(item, device, args.compile, args.compile_timeout)
    if args.warmup > 1:
        rotate(items, args.warmup - 1, device, meter)
    for item in items:
        item.times.clear(), item.cpu_times.clear(), item.peaks.clear(), item.deltas.clear()
    rotate(items, args.steps, device, meter)
    if "loader" in components:
        items.append(time_loader(args, device, args.steps, max(1, args.warmup)))
    result = summarise(items, args, device, meter, info)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return result


if __name__ == "__main__":
    main()
