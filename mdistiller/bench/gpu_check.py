"""The one-command acceptance check of the GPU paths (``tools/gpu_check.py``, ``python -m mdistiller gpu-check``,
``make gpu-check``): its parts and its command line (:func:`main`).

Every part runs the user-facing command of the package in a child process (``python -m mdistiller bench``,
``torchrun -m mdistiller train``, ``python -m mdistiller lineval imagenet``: the command lines of ``tools/bench.py``,
``tools/train.py`` and ``tools/lineval/imagenet.py``), so a crash, an out-of-memory error or a broken CUDA context
in one part stays there: each part fails soft, its error goes into the report, and the next part runs. Parts:

* ``a``: ViT-L → ViT-Ti at 224 px, bf16 autocast, teacher weights in fp32: FitNet / ViTKD / SiNGER step time,
  images/s, peak memory, achieved TFLOP/s (the project's FLOP bound, :mod:`mdistiller.bench.flops`) and fraction
  of the device's bf16 dense peak (:func:`peak_tflops`), eager and ``torch.compile``;
* ``b``: the same with the teacher weights in bf16 (``DISTILLER.TEACHER_DTYPE bfloat16``);
* ``c``: ``torchrun --nproc-per-node 1 -m mdistiller train`` (SiNGER) for a few dozen steps on a synthetic
  ImageNet-layout folder of random JPEGs written here, once with ``DATASET.DECODE cpu`` and once ``device``; the
  training images/s against the step rate of ``a``/``b`` says whether the run is loader-bound or compute-bound;
* ``d``: a run interrupted by SIGTERM mid-way (it writes a checkpoint) and resumed with the same command ends with
  the same losses and student weights as the uninterrupted run;
* ``e``: a cached linear probe (``python -m mdistiller lineval imagenet --protocol cached``) on the student
  trained in ``c``.

The compile runs (FitNet and SiNGER; ``b`` first, the teacher dtype training uses on CUDA, then ``a``) go last and
get the time left of the budget, since compiling is the slowest and least predictable part; an item whose
compilation does not finish in its share is timed eager and says so. ``tiny=True`` swaps in tiny random ViTs,
32 px and a few steps, so the whole check runs on a CPU in about a minute (``tests/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PEAK_BF16_TFLOPS", "CheckSettings", "main", "parse_args", "peak_tflops", "render_markdown", "run_check",
           "write_synthetic_imagenet"]

ROOT = Path(__file__).resolve().parents[2]
#: bf16 dense tensor-core peaks (TFLOP/s, no sparsity) by device-name substring; the first match wins, so the
#: more specific names come first
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("B200", 2250.0), ("B100", 1750.0), ("A100", 312.0), ("A800", 312.0), ("H800", 989.0), ("L40S", 362.0),
    ("L40", 181.0), ("L4", 121.0), ("RTX 6000 Ada", 364.0), ("RTX 4090", 165.0), ("RTX A6000", 155.0),
    ("A40", 150.0), ("A10G", 70.0), ("A10", 125.0), ("MI300X", 1307.0),
)
TINY_MODELS = {"teacher": "vit_small", "student": "vit_tiny",
               "teacher_kwargs": {"depth": 4, "embed_dim": 96, "num_heads": 3},
               "student_kwargs": {"depth": 3, "embed_dim": 48, "num_heads": 3}}
PARTS = {
    "a": "step benchmark, bf16 autocast, teacher weights fp32",
    "b": "step benchmark, bf16 autocast, teacher weights bf16",
    "c": "torchrun -m mdistiller train on a synthetic ImageNet folder, DECODE cpu and device",
    "d": "resume from a mid-run checkpoint (SIGTERM) equals the uninterrupted run",
    "e": "cached linear probe on the trained student",
    "data": "synthetic ImageNet-layout folder of random JPEGs",
    "a_compile": "a with torch.compile (FitNet, SiNGER)",
    "b_compile": "b with torch.compile (FitNet, SiNGER)",
}


def peak_tflops(device_name: str | None) -> float | None:
    """The bf16 dense peak of ``device_name`` from :data:`PEAK_BF16_TFLOPS` (case-insensitive), else ``None``."""
    name = (device_name or "").lower()
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in name:
            return peak
    return None


@dataclass
class CheckSettings:
    """What the check runs; ``for_device`` fills the sizes for a GPU or the tiny CPU preset."""

    device: str = "cuda"
    tiny: bool = False
    out: Path = Path("output/gpu_check")
    budget_s: float = 480.0
    peak: float | None = None
    compile: bool = True
    batch: int = 128
    size: int = 224
    bench_steps: int = 10
    bench_warmup: int = 3
    train_steps: int = 50
    resume_steps: int = 24
    resume_batch: int = 32
    workers: int = 8
    classes: int = 10
    train_per_class: int = 128
    val_per_class: int = 16
    image_wh: tuple[int, int] = (500, 375)
    probe_epochs: int = 5
    python: str = sys.executable
    models: dict[str, Any] = field(default_factory=lambda: {
        "teacher": "vit_large", "student": "vit_tiny", "teacher_kwargs": {}, "student_kwargs": {}})

    @classmethod
    def for_device(cls, device: str, tiny: bool, **overrides: Any) -> CheckSettings:
        """The settings for ``device``: the tiny CPU preset (tiny random ViTs, 32 px, a few steps) when ``tiny``,
        else the defaults with up to 8 loader workers (two cores left free); ``overrides`` that are not None win."""
        if tiny:
            base = dict(batch=4, size=32, bench_steps=2, bench_warmup=1, train_steps=6, resume_steps=30,
                        resume_batch=4, workers=0, classes=2, train_per_class=12, val_per_class=4,
                        image_wh=(64, 48), probe_epochs=2, models=dict(TINY_MODELS))
        else:
            base = dict(workers=max(1, min(8, (os.cpu_count() or 2) - 2)))
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(device=device, tiny=tiny, **base)


# ------------------------------------------------------------------------------------------------ helpers
class PartError(Exception):
    """A part's failure, with the message that goes into the report."""


class Budget:
    """The check's time budget: a deadline ``seconds`` from now on the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left before the deadline (negative once it has passed)."""
        return self.deadline - time.monotonic()


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE=os.environ.get("WANDB_MODE", "offline"),
               PYTHONUNBUFFERED="1")
    # the child's `python -m mdistiller` imports this very package, whatever the installed one
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _command(s: CheckSettings, *command: str) -> list[str]:
    """``python -m mdistiller COMMAND...``: a command line of the package (``mdistiller/__main__.py``) in a child."""
    return [s.python, "-m", "mdistiller", *command]


def _run(cmd: list[str], timeout: float, log: Path) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repository root; its output goes to ``log``; a non-zero exit raises :class:`PartError`."""
    if timeout < 5:
        raise PartError("skipped: the time budget is used up")
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        log.write_text(out)
        raise PartError(f"timed out after {timeout:.0f} s: {' '.join(cmd[1:4])} …") from None
    log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    if proc.returncode != 0:
        raise PartError(f"exit {proc.returncode}: {_tail(proc.stderr or proc.stdout)}")
    return proc


def _image(wh: tuple[int, int], seed: int):
    """A smooth colour gradient plus noise (JPEG artefacts and decoding cost like a photo's, not like white noise)."""
    import numpy as np
    from PIL import Image

    w, h = wh
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 6.28, 3)
    rgb = np.stack([128 + 100 * np.sin(xx / w * 6 + phase[0]), 128 + 100 * np.sin(yy / h * 5 + phase[1]),
                    128 + 100 * np.sin((xx + yy) / (w + h) * 7 + phase[2])], -1) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def _write_one(job: tuple[str, tuple[int, int], int]) -> None:
    path, wh, seed = job
    _image(wh, seed).save(path, "JPEG", quality=90)


def write_synthetic_imagenet(root: Path, classes: int, train_per_class: int, val_per_class: int,
                             image_wh: tuple[int, int], workers: int = 1) -> dict[str, int]:
    """``root/{train,val}/n%08d/*.JPEG`` of random JPEGs (reused when complete); returns the image counts."""
    jobs = []
    for split, per in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per):
                path = folder / f"{split}_{c}_{i}.JPEG"
                if not path.exists():
                    jobs.append((str(path), image_wh, (0 if split == "train" else 1 << 20) + c * 4096 + i))
    if workers > 1 and len(jobs) > 64:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            pool.map(_write_one, jobs, chunksize=16)
    else:
        for job in jobs:
            _write_one(job)
    return {"train": classes * train_per_class, "val": classes * val_per_class, "written": len(jobs)}


# ------------------------------------------------------------------------------------------------ parts
def _bench(s: CheckSettings, teacher_dtype: str, compiling: bool, timeout: float, tag: str) -> dict[str, Any]:
    out = s.out / f"bench_{tag}.json"
    m = s.models
    cmd = [*_command(s, "bench"), "--device", s.device, "--teacher", m["teacher"], "--student", m["student"],
           "--teacher-kwargs", json.dumps(m["teacher_kwargs"]), "--student-kwargs", json.dumps(m["student_kwargs"]),
           "--size", str(s.size), "--batch", str(s.batch), "--steps", str(s.bench_steps),
           "--warmup", str(s.bench_warmup), "--amp", "bf16",
           "--methods", "fitnet,singer" if compiling else "fitnet,vitkd,singer",
           "--components", "none" if compiling else "teacher", "--json", "--output", str(out),
           "--omp-wait", "env", "--opts", "DISTILLER.TEACHER_DTYPE", teacher_dtype]
    if s.tiny:
        cmd += ["--rank", "8"]
    if compiling:
        cmd += ["--compile", "--compile-timeout", f"{max(10.0, (timeout - 30) / 2):.0f}"]
    _run(cmd, timeout, s.out / f"bench_{tag}.log")
    result = json.loads(out.read_text())
    peak = s.peak or peak_tflops(result["machine"].get("gpu"))
    rows = {}
    for name, r in result["results"].items():
        ratio = result["ratios"].get(name, {})
        achieved = r.get("achieved_tflops")
        rows[name] = {
            "step_s": r["median_s"], "images_per_s": r["images_per_s"], "peak_mem_mib": r["peak_mem_mib"],
            "gflop_per_image": r.get("gflop_per_image"), "achieved_tflops": achieved,
            "peak_fraction": achieved / peak if (achieved and peak) else None,
            "ratio_to_fitnet": ratio.get("paired_median"), "ratio_ci95": ratio.get("paired_ci95"),
            "flop_bound_ratio": ratio.get("flop_bound"), "compile_s": r.get("compile_s"), "note": r.get("error"),
        }
    return {"rows": rows, "machine": result["machine"], "peak_tflops": peak, "json": str(out)}


def _train_yaml(s: CheckSettings, data: Path, decode: str, steps: int, batch: int, log_freq: int) -> Path:
    m = s.models
    cfg = {
        "EXPERIMENT": {"SEED": 0},
        "DATASET": {"TYPE": "imagenet", "ROOT": str(data), "INPUT_SIZE": s.size, "NUM_WORKERS": s.workers,
                    "DECODE": decode, "PERSISTENT_WORKERS": s.workers > 0},
        "DISTILLER": {"TYPE": "SiNGER", "TEACHER": m["teacher"], "STUDENT": m["student"],
                      "TEACHER_WEIGHTS": "random", "TEACHER_KWARGS": m["teacher_kwargs"],
                      "STUDENT_KWARGS": m["student_kwargs"]},
        "SiNGER": {"M_LAYERS": [1] if s.tiny else [17], "RANK": 8 if s.tiny else 16},
        "SOLVER": {"BATCH_SIZE": batch, "MAX_STEPS": steps, "AMP": "bf16", "WARMUP_EPOCHS": 0.0},
        "LOG": {"FREQ": log_freq, "PROGRESS": False, "GRAD_TERMS_EVERY_STEPS": 0, "CKPT_EVERY_STEPS": 0},
    }
    path = s.out / f"train_{decode}_{steps}.yaml"
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return path


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """:func:`mdistiller.engine.metrics_file.read_metrics`, imported on use (this module stays free of torch until
    a part runs)."""
    from mdistiller.engine.metrics_file import read_metrics as read

    return read(run_dir)


def _train_rate(run_dir: Path) -> float | None:
    """Median images/s of the logged windows after the first (start-up and the first loader fill)."""
    rates = [r["img_per_s"] for r in read_metrics(run_dir) if "img_per_s" in r]
    rates = rates[1:] or rates
    return statistics.median(rates) if rates else None


def part_train(s: CheckSettings, budget: Budget, data: Path, step_rate: float | None) -> dict[str, Any]:
    """Part ``c``: ``torchrun -m mdistiller train`` (SiNGER) on the synthetic folder ``data``, once per
    ``DATASET.DECODE`` (cpu, device); per run its median images/s, wall time and final loss, and against
    ``step_rate`` (the benchmark's img/s of the same step) the fraction reached and a compute-/loader-bound verdict.
    Raises :class:`PartError` (with the runs that did finish) when either run fails."""
    out: dict[str, Any] = {"step_rate_images_per_s": step_rate, "runs": {}}
    errors = []
    for decode in ("cpu", "device"):
        run_dir = s.out / f"train_{decode}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = _train_yaml(s, data, decode, s.train_steps, s.batch, max(1, s.train_steps // 10))
        cmd = [s.python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "mdistiller",
               "train", "--cfg", str(cfg), "--run-dir", str(run_dir), "--resume", "none", "--device", s.device]
        t0 = time.perf_counter()
        try:
            _run(cmd, min(budget.left(), 240), s.out / f"train_{decode}.log")
        except PartError as e:
            errors.append(f"DECODE {decode}: {e}")
            out["runs"][decode] = {"error": str(e)}
            continue
        rate = _train_rate(run_dir)
        info = json.loads((run_dir / "run_info.json").read_text())
        run: dict[str, Any] = {"images_per_s": rate, "wall_s": time.perf_counter() - t0,
                               "world_size": info.get("world_size"), "run_dir": str(run_dir),
                               "final_loss": next((r["loss"] for r in reversed(read_metrics(run_dir)) if "loss" in r),
                                                  None)}
        if rate and step_rate:
            run["fraction_of_step_rate"] = rate / step_rate
            run["verdict"] = ("compute-bound" if rate >= 0.85 * step_rate else
                              "loader-bound (or host overhead): below 85 % of the step rate")
        out["runs"][decode] = run
    if errors:
        raise PartError("; ".join(errors), out)
    return out


def part_resume(s: CheckSettings, budget: Budget, data: Path) -> dict[str, Any]:
    """Uninterrupted run vs the same command stopped by SIGTERM mid-way (checkpoint on the signal) and rerun."""
    from safetensors.torch import load_file

    n = s.resume_steps
    cut = max(2, n // 4)
    cfg = _train_yaml(s, data, "device", n, s.resume_batch, 1)
    full, part = s.out / "resume_full", s.out / "resume_part"
    for d in (full, part):
        shutil.rmtree(d, ignore_errors=True)
    base = [*_command(s, "train"), "--cfg", str(cfg), "--device", s.device]
    _run(base + ["--run-dir", str(full), "--resume", "none"], min(budget.left(), 180), s.out / "resume_full.log")
    log = (s.out / "resume_part.log").open("w")
    proc = subprocess.Popen(base + ["--run-dir", str(part), "--resume", "none"], cwd=ROOT, env=_env(), stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + min(budget.left(), 180)
    signalled_at = None
    while proc.poll() is None and time.monotonic() < deadline:
        steps = [r["step"] for r in read_metrics(part) if "loss" in r]
        if steps and max(steps) >= cut:
            proc.send_signal(signal.SIGTERM)
            signalled_at = max(steps)
            break
        time.sleep(0.01)
    try:
        code = proc.wait(timeout=max(5.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise PartError("the interrupted run did not stop in time") from None
    finally:
        log.close()
    if signalled_at is None or code != 130:
        raise PartError(f"the run was not interrupted mid-way (exit {code}, signalled at step {signalled_at}); "
                        "raise the resume steps")
    from mdistiller.engine.checkpoint import load_checkpoint

    stopped = int(load_checkpoint(part / "checkpoints/last.pth")["step"])
    _run(base + ["--run-dir", str(part)], min(budget.left(), 180), s.out / "resume_rerun.log")
    a = {r["step"]: r["loss"] for r in read_metrics(full) if "loss" in r}
    b = {r["step"]: r["loss"] for r in read_metrics(part) if "loss" in r}
    if sorted(a) != sorted(b) or max(a) != n:
        raise PartError(f"logged steps differ: uninterrupted {sorted(a)[-3:]}, resumed {sorted(b)[-3:]}")

    def rel(x: float, y: float) -> float:
        return abs(x - y) / max(abs(x), 1e-12)

    before = max((rel(a[k], b[k]) for k in a if k <= stopped), default=0.0)
    after = max(rel(a[k], b[k]) for k in a if k > stopped)
    wa, wb = load_file(full / "student.safetensors"), load_file(part / "student.safetensors")
    w_diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    cuda = s.device.startswith("cuda")
    tol = 1e-3 if cuda else 1e-5  # CUDA kernels (atomics in some backward passes) are not bit-deterministic
    out = {"steps": n, "stopped_at_step": stopped, "final_loss_uninterrupted": a[n], "final_loss_resumed": b[n],
           "max_rel_loss_diff_before_stop": before, "max_rel_loss_diff_after_stop": after,
           "max_abs_student_weight_diff": w_diff, "tolerance": tol}
    if after > tol or w_diff > tol:
        raise PartError(f"resumed run differs: loss rel diff {after:.2e}, weights {w_diff:.2e} (tolerance {tol:g}; "
                        f"noise before the stop {before:.2e})", out)
    return out


def part_probe(s: CheckSettings, budget: Budget, data: Path, run_dir: Path | None) -> dict[str, Any]:
    """Part ``e``: a cached linear probe (``python -m mdistiller lineval imagenet --protocol cached``) of the student
    exported by ``run_dir`` on ``data``: its top-1, chosen learning rate, times and cached items. Raises
    :class:`PartError` when there is no trained student."""
    if run_dir is None or not (run_dir / "student.safetensors").exists():
        raise PartError("no trained student: part c (and the resume run) produced none")
    out = s.out / "probe.json"
    cmd = [*_command(s, "lineval", "imagenet"), str(run_dir), "--data-root", str(data), "--protocol", "cached",
           "--device", "cpu" if s.device == "cpu" else "cuda", "--input-size", str(s.size),
           "--epochs", str(s.probe_epochs), "--batch-size", str(min(256, s.classes * s.train_per_class // 2)),
           "--eval-batch-size", "64", "--workers", str(s.workers), "--lrs", "1e-3,1e-2,1e-1",
           "--cache-dir", str(s.out / "probe_cache"), "--no-reuse-cache", "--out", str(out)]
    t0 = time.perf_counter()
    _run(cmd, min(budget.left(), 180), s.out / "probe.log")
    result = json.loads(out.read_text())
    cache = (result.get("protocol") or {}).get("cache") or {}
    return {"student": str(run_dir), "top1": result["metrics"]["top1"], "chosen_lr": result["chosen_lr"],
            "times_s": result.get("time"), "wall_s": time.perf_counter() - t0,
            "cached_items": {k: v.get("items") for k, v in cache.items()}, "json": str(out)}


# ------------------------------------------------------------------------------------------------ driver
def _attempt(report: dict[str, Any], key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """Run one (sub)part; record ``status`` ok / failed / skipped, its seconds, its result or error."""
    t0 = time.perf_counter()
    entry: dict[str, Any] = {"title": PARTS.get(key, key)}
    try:
        entry.update(result=fn(), status="ok")
    except PartError as e:
        skipped = str(e.args[0]).startswith("skipped")
        entry.update(status="skipped" if skipped else "failed", error=str(e.args[0]))
        if len(e.args) > 1:
            entry["result"] = e.args[1]
    except Exception as e:  # noqa: BLE001 - fail soft: the next part runs whatever went wrong here
        entry.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=_tail(traceback.format_exc(), 8))
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    report["parts"][key] = entry
    return entry.get("result") if entry["status"] == "ok" else None


def run_check(s: CheckSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every part within ``s.budget_s``; write ``report.json`` and ``report.md`` into ``s.out``."""
    s.out.mkdir(parents=True, exist_ok=True)
    budget = Budget(s.budget_s)
    t_start = time.perf_counter()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items()},
                              "parts": {}}

    def step(key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        log(f"[gpu_check] {key}: {PARTS.get(key, key)} …")
        result = _attempt(report, key, fn)
        entry = report["parts"][key]
        log(f"[gpu_check] {key}: {entry['status']} ({entry['seconds']} s)"
            + (f" — {entry['error'].splitlines()[0]}" if entry.get("error") else ""))
        return result

    bench_left = lambda: min(budget.left(), 300)  # noqa: E731
    a = step("a", lambda: _bench(s, "float32", False, bench_left(), "a_eager"))
    b = step("b", lambda: _bench(s, "bfloat16", False, bench_left(), "b_eager"))
    data = s.out / "synthetic_imagenet"
    counts = step("data", lambda: write_synthetic_imagenet(data, s.classes, s.train_per_class, s.val_per_class,
                                                           s.image_wh, workers=os.cpu_count() or 1))
    # the training run keeps the teacher in bf16 on CUDA (TEACHER_DTYPE auto) and fp32 on the CPU
    ref = b if s.device.startswith("cuda") else a
    rate = (ref or {}).get("rows", {}).get("SiNGER", {}).get("images_per_s")
    step("c", lambda: part_train(s, budget, data, rate)) if counts else None
    step("d", lambda: part_resume(s, budget, data)) if counts else None
    runs = [s.out / "train_device", s.out / "train_cpu", s.out / "resume_full"]
    trained = next((r for r in runs if (r / "student.safetensors").exists()), None)
    step("e", lambda: part_probe(s, budget, data, trained))
    # b first: the teacher in bf16 is what training uses on CUDA; a gets what is left
    for key, dtype in (("b_compile", "bfloat16"), ("a_compile", "float32")):
        if not s.compile:
            report["parts"][key] = {"title": PARTS[key], "status": "skipped", "seconds": 0.0,
                                    "error": "skipped: compile off (default on the CPU; --compile turns it on)"}
            continue
        step(key, lambda dtype=dtype, key=key: _bench(s, dtype, True, min(budget.left(), 300), key))
    report["device_name"] = next((p["result"]["machine"].get("gpu") or p["result"]["machine"].get("cpu")
                                  for p in report["parts"].values() if p.get("result") and "machine" in p["result"]),
                                 None)
    report["peak_tflops"] = s.peak or peak_tflops(report["device_name"])
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    report["ok"] = all(report["parts"].get(k, {}).get("status") == "ok" for k in ("a", "b", "c", "d", "e"))
    (s.out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (s.out / "report.md").write_text(render_markdown(report))
    return report


# ------------------------------------------------------------------------------------------------ report
def _f(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _bench_table(result: dict[str, Any]) -> list[str]:
    from mdistiller.bench.report import ratio_text

    lines = ["| item | step s | img/s | peak MiB | GFLOP/img | TFLOP/s | % of peak | × FitNet [95 %] | × FLOP bound |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        ratio = ratio_text(r.get("ratio_to_fitnet"), r.get("ratio_ci95"), missing="–")
        frac = r.get("peak_fraction")
        lines.append(f"| {name} | {_f(r['step_s'], '.4f')} | {_f(r['images_per_s'], '.1f')} | "
                     f"{_f(r['peak_mem_mib'], '.0f')} | {_f(r.get('gflop_per_image'), '.3g')} | "
                     f"{_f(r.get('achieved_tflops'), '.2f')} | {_f(frac * 100 if frac else None, '.1f')} | {ratio} | "
                     f"{_f(r.get('flop_bound_ratio'), '.3f')} |")
        if r.get("compile_s") is not None:
            lines.append(f"|  ↳ compile {r['compile_s']:.0f} s | | | | | | | | |")
        if r.get("note"):
            lines.append(f"|  ↳ {r['note']} | | | | | | | | |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The check's report as Markdown: a header with the settings and the overall verdict, then one section per
    part (its status, seconds, error and result table)."""
    s = report["settings"]
    peak = report.get("peak_tflops")
    m = s["models"]
    out = [f"# GPU check — {report.get('device_name') or 'unknown device'}", "",
           f"{report['date']}; device `{s['device']}`{' (tiny preset)' if s['tiny'] else ''}; "
           f"{m['teacher']} → {m['student']}, {s['size']} px, batch {s['batch']}, bf16 autocast; bf16 dense peak "
           f"{_f(peak, '.0f')} TFLOP/s{'' if peak else ' (unknown: pass --peak-tflops)'}; total {report['total_s']} s; "
           f"**{'all parts ok' if report['ok'] else 'some parts failed'}**.", ""]
    for key, entry in report["parts"].items():
        out += [f"## {key} — {entry['title']}: {entry['status']} ({entry['seconds']} s)", ""]
        if entry.get("error"):
            out += ["```", entry["error"], "```", ""]
        r = entry.get("result")
        if not r:
            continue
        if key[0] in "ab" and "rows" in r:
            out += _bench_table(r) + [""]
        elif key == "c":
            out.append(f"Step rate of the same SiNGER step in the benchmark: "
                       f"{_f(r.get('step_rate_images_per_s'), '.1f')} img/s.")
            out += ["", "| DECODE | train img/s | of the step rate | verdict | final loss |", "|---|---|---|---|---|"]
            for decode, run in r["runs"].items():
                frac = run.get("fraction_of_step_rate")
                out.append(f"| {decode} | {_f(run.get('images_per_s'), '.1f')} | "
                           f"{_f(frac * 100 if frac else None, '.0f')} % | {run.get('verdict', run.get('error', '–'))} "
                           f"| {_f(run.get('final_loss'), '.4g')} |")
            out.append("")
        else:
            out += [f"- {k}: {v}" for k, v in r.items()] + [""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ command line
def parse_args(argv: Sequence[str] | None = None, prog: str = "tools/gpu_check.py") -> argparse.Namespace:
    """The check's options (see ``tools/gpu_check.py --help``)."""
    p = argparse.ArgumentParser(prog=prog, description="One-command acceptance check of the GPU paths: ``python "
                                "tools/gpu_check.py`` (or ``make gpu-check``).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    p.add_argument("--tiny", action="store_true",
                   help="tiny random ViTs (4/3 blocks, width 96/48), 32 px, batch 4, a few steps: the CPU smoke run")
    p.add_argument("--out", default="output/gpu_check", help="report folder (report.md, report.json, logs, data)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds for the whole check; parts that do not fit are reported as skipped (default: 480; "
                        "1800 with --tiny, whose CPU time depends on what else the machine runs)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="bf16 dense peak of the device (default: looked up from the device name)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile for a and b (default: on for CUDA, off for the CPU)")
    p.add_argument("--batch", type=int, default=None, help="images per step in a, b and c (default: 128; tiny 4)")
    p.add_argument("--train-steps", type=int, default=None, help="steps of each run in c (default: 50; tiny 6)")
    p.add_argument("--workers", type=int, default=None,
                   help="loader workers in c-e (default: CPU count − 2, at most 8; tiny 0)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, prog: str = "tools/gpu_check.py") -> int:
    """The command line of the check: 0 when parts a–e are ok, 1 otherwise, 2 for a bad option (one line on stderr,
    ``gpu_check.py: error: ...``)."""
    args = parse_args(argv, prog)
    label = prog.rsplit("/", 1)[-1]
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"{label}: error: CUDA is not available here; run it on a GPU machine, or use "
                  "--device cpu --tiny for the CPU smoke run.", file=sys.stderr)
            return 2
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        print(f"{label}: error: --peak-tflops must be positive, got {args.peak_tflops}.", file=sys.stderr)
        return 2
    settings = CheckSettings.for_device(
        args.device, args.tiny, out=Path(args.out), peak=args.peak_tflops,
        budget_s=args.budget_s if args.budget_s is not None else (1800.0 if args.tiny else 480.0),
        compile=args.compile if args.compile is not None else args.device.startswith("cuda"),
        batch=args.batch, train_steps=args.train_steps, workers=args.workers)
    report = run_check(settings)
    print(f"[gpu_check] {'all parts ok' if report['ok'] else 'some parts failed'} in {report['total_s']} s; "
          f"report: {settings.out / 'report.md'}")
    return 0 if report["ok"] else 1
