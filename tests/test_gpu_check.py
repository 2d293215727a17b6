"""``tools/gpu_check.py`` runs every part end to end on the CPU with tiny models (so the GPU check cannot rot), and
the device-peak lookup and the report rendering behave. No time is asserted: the machine is shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mdistiller.bench.gpu_check import peak_tflops, render_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_peak_lookup_by_device_name():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA L40S") == 362.0 and peak_tflops("NVIDIA L4") == 121.0
    assert peak_tflops("NVIDIA GeForce RTX 4090") == 165.0
    assert peak_tflops("AMD EPYC 9B45") is None and peak_tflops(None) is None


@pytest.mark.slow
def test_tiny_cpu_check_runs_every_part(tmp_path):
    out = tmp_path / "gpu_check"
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "tools/gpu_check.py"), "--device", "cpu", "--tiny",
                           "--out", str(out), "--budget-s", "3000"],  # a shared CPU can be very slow; no time asserted
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3300)
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    parts = report["parts"]
    for key in ("a", "b", "c", "d", "e"):
        assert parts[key]["status"] == "ok", (key, parts[key].get("error"))
        assert f"## {key} — " in md
    assert report["ok"] is True
    assert parts["a_compile"]["status"] == parts["b_compile"]["status"] == "skipped"  # compile is off on the CPU
    for key in ("a", "b"):
        rows = parts[key]["result"]["rows"]
        assert set(rows) >= {"FitNet", "ViTKD", "SiNGER"}
        for r in rows.values():
            assert r["step_s"] > 0 and r["achieved_tflops"] > 0 and r["peak_mem_mib"] > 0
        low, high = rows["SiNGER"]["ratio_ci95"]
        assert low <= rows["SiNGER"]["ratio_to_fitnet"] <= high
    runs = parts["c"]["result"]["runs"]
    assert set(runs) == {"cpu", "device"}
    for run in runs.values():
        assert run["world_size"] == 1 and run["images_per_s"] > 0 and run["verdict"]
    d = parts["d"]["result"]
    assert 2 <= d["stopped_at_step"] < d["steps"]
    assert d["max_rel_loss_diff_after_stop"] == 0.0 and d["max_abs_student_weight_diff"] == 0.0
    e = parts["e"]["result"]
    assert 0 <= e["top1"] <= 100 and e["cached_items"]["train"] > 0


def test_failed_part_is_reported_and_the_rest_render():
    report = {"date": "2026-01-01 00:00 UTC", "total_s": 1.0, "ok": False, "peak_tflops": None,
              "device_name": "cpu", "settings": {"device": "cpu", "tiny": True, "size": 32, "batch": 4,
                                                 "models": {"teacher": "vit_small", "student": "vit_tiny"}},
              "parts": {"a": {"title": "bench", "status": "failed", "seconds": 0.1, "error": "exit 1: boom"},
                        "e": {"title": "probe", "status": "ok", "seconds": 0.2, "result": {"top1": 50.0}}}}
    md = render_markdown(report)
    assert "## a — bench: failed" in md and "exit 1: boom" in md and "- top1: 50.0" in md
    assert "some parts failed" in md


def test_attempt_fails_soft_and_keeps_partial_results():
    from mdistiller.bench.gpu_check import PartError, _attempt

    report = {"parts": {}}

    def crash():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def partial():
        raise PartError("DECODE device: exit 1: nvjpeg", {"runs": {"cpu": {"images_per_s": 10.0}}})

    assert _attempt(report, "a", crash) is None
    assert _attempt(report, "c", partial) is None
    assert _attempt(report, "e", lambda: {"top1": 1.0}) == {"top1": 1.0}
    assert report["parts"]["a"]["status"] == "failed" and "illegal memory access" in report["parts"]["a"]["error"]
    assert report["parts"]["c"]["result"]["runs"]["cpu"]["images_per_s"] == 10.0
    assert report["parts"]["e"]["status"] == "ok"
