"""The benchmark's result: per-item statistics, paired ratios to the reference method, machine and setup (JSON),
and the text table."""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from .items import METHODS, json_dict
from .stats import bootstrap_interval
from .timing import Item, MemoryMeter

__all__ = ["BOOTSTRAP_RESAMPLES", "print_table", "ratio_text", "summarise"]

#: resamples of the per-round ratios behind each 95 % interval
BOOTSTRAP_RESAMPLES = 2000


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(items: list[Item], args: argparse.Namespace, device, meter: MemoryMeter, info: dict) -> dict:
    """The JSON-ready result: machine, setup, per-item statistics and ratios to the reference method, and, when the
    ``stop_sync`` item was timed, the per-step cost of the stop agreement (``"stop_sync"``)."""
    import timm
    import torch

    sync = next((i for i in items if i.name == "stop_sync"), None)
    items = [i for i in items if i is not sync]
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
                "paired_ci95": _interval(paired, args.seed),
                "paired_ratios": paired,
                "of_medians": med / statistics.median(ref.times),
                "of_mins": min(item.times) / min(ref.times),
                "cpu_time_paired_median": _stats(cpu_paired)["median"],
                "cpu_time_paired_ci95": _interval(cpu_paired, args.seed),
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
        "teacher": args.teacher, "student": args.student, "teacher_kwargs": json_dict(args.teacher_kwargs, "x"),
        "student_kwargs": json_dict(args.student_kwargs, "x"), "teacher_weights": args.teacher_weights,
        "batch": args.batch, "size": args.size, "steps": args.steps, "warmup": args.warmup, "amp": args.amp,
        "compile": args.compile, "adamw": args.adamw, "clip": args.clip, "opts": list(args.opts),
        "peak_tflops": args.peak_tflops, "order": "alternating rounds: A B C …, then … C B A",
        "interval": f"percentile bootstrap 95 % of the median paired ratio ({BOOTSTRAP_RESAMPLES} resamples, seed "
                    f"{args.seed})", **info,
    }
    out = {"machine": machine, "setup": setup, "reference": ref_name, "results": results, "ratios": ratios}
    if sync is not None:
        out["stop_sync"] = _stop_sync(sync, items, args.seed)
    return out


def _stop_sync(sync: Item, items: list[Item], seed: int) -> dict[str, Any]:
    """Per-call time of the stop agreement and, per timed training step, the paired per-round ratio
    ``(t_step + t_call) / t_step``: the step with the agreement against the step without it."""
    calls = sync.info["calls_per_round"]
    per_call = [t / calls for t in sync.times]
    with_vs_without: dict[str, Any] = {}
    for item in items:
        if item.name not in METHODS or not item.times:
            continue
        paired = [(step + call) / step for step, call in zip(item.times, per_call)]
        with_vs_without[item.name] = {**{f"paired_{k}": v for k, v in _stats(paired).items()},
                                      "paired_ci95": _interval(paired, seed), "paired_ratios": paired}
    return {"mode": sync.info["mode"], "calls_per_round": calls, "per_call_s": _stats(per_call),
            "per_call_times_s": per_call, "with_vs_without": with_vs_without, "error": sync.error}


def _interval(values: list[float], seed: int) -> list[float] | None:
    """The seeded bootstrap 95 % interval of the median paired ratio (2000 resamples), as a JSON list."""
    ci = bootstrap_interval(values, level=0.95, resamples=BOOTSTRAP_RESAMPLES, seed=seed)
    return list(ci) if ci is not None else None


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


def ratio_text(median: float | None, ci: list[float] | None, missing: str = "-") -> str:
    """A paired ratio as ``median [low–high]`` (its 95 % interval when there is one), ``missing`` when absent."""
    if median is None:
        return missing
    return f"{median:.3f} [{ci[0]:.3f}–{ci[1]:.3f}]" if ci else f"{median:.3f}"


def print_table(result: dict) -> None:
    """Print the benchmark result: machine and setup lines, one row per timed item (times, throughput, memory,
    FLOPs, paired ratios with their 95 % intervals), and the stop-agreement cost when it was measured.
    """
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
            f"{'Δstep MiB':>9} {'GFLOP/img':>9} {'TFLOP/s':>8} {'%peak':>6} {'×' + str(ref) + ' wall [95 %]':>23} "
            f"{'× cpu [95 %]':>23} {'× FLOP':>6}")
    print(head)
    print("-" * len(head))
    for name, r in result["results"].items():
        ratio = result["ratios"].get(name)
        rtxt = ratio_text(ratio and ratio["paired_median"], ratio and ratio.get("paired_ci95"))
        ctxt = ratio_text(ratio and ratio.get("cpu_time_paired_median"), ratio and ratio.get("cpu_time_paired_ci95"))
        frac = r.get("peak_fraction")
        print(f"{name:<11} {_fmt(r['median_s'], '9.4f')} "
              f"{_fmt(r['min_s'], '.4f') + '–' + _fmt(r['max_s'], '.4f'):>15} {_fmt(r['cpu_time_median_s'], '7.3f')} "
              f"{_fmt(r['images_per_s'], '8.1f')} {_fmt(r['peak_mem_mib'], '9.0f')} "
              f"{_fmt(r['step_mem_delta_mib'], '9.0f')} {_fmt(r.get('gflop_per_image'), '9.3f')} "
              f"{_fmt(r.get('achieved_tflops'), '8.3f')} {_fmt(frac * 100 if frac else None, '6.1f')} {rtxt:>23} "
              f"{ctxt:>23} {_fmt(ratio and ratio.get('flop_bound'), '6.3f')}")
        if r.get("compile_s") is not None:
            print(f"{'':<11} compile ≈ {r['compile_s']:.1f} s (first call {r['first_call_s']:.1f} s)")
        if r.get("error"):
            print(f"{'':<11} note: {r['error']}")
        if name == "loader" and r.get("source"):
            rss, cpu = r.get("worker_peak_rss_mib"), r.get("cpu_s_per_image")
            print(f"{'':<11} {r['source']}, {r['workers']} worker(s)"
                  + (f", {cpu * 1e3:.2f} CPU-ms per image (process + workers)" if cpu else "")
                  + (f", peak RSS per worker {rss:.0f} MiB" if rss is not None else ""))
    print(f"memory: {m['memory_source']}; ratios ×{ref}: median of the {s['steps']} per-round paired wall-time "
          "ratios and of the paired CPU-time ratios (steadier on a shared CPU), each with its bootstrap 95 % interval "
          "[low–high] (2000 resamples, seeded); FLOP-bound ratio")
    sync = result.get("stop_sync")
    if sync:
        c = sync["per_call_s"]
        print(f"stop agreement per step [{sync['mode']}]: {_fmt(_us(c['median']), '.1f')} µs, min–max "
              f"{_fmt(_us(c['min']), '.1f')}–{_fmt(_us(c['max']), '.1f')} µs over {s['steps']} rounds of "
              f"{sync['calls_per_round']} calls")
        for name, r in sync["with_vs_without"].items():
            print(f"  {name} step with / without it: {r['paired_median']:.5f} [95 % "
                  f"{_fmt(r['paired_ci95'] and r['paired_ci95'][0], '.5f')}–"
                  f"{_fmt(r['paired_ci95'] and r['paired_ci95'][1], '.5f')}], min–max "
                  f"{r['paired_min']:.5f}–{r['paired_max']:.5f}")


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e6
