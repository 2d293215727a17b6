"""``tools/bench.py`` runs end to end on the tiny preset and the FLOP counter matches a hand count.

No test here asserts a time: the machine is shared and timings are noise; only structure and arithmetic are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mdistiller.bench.flops import method_flops
from mdistiller.bench.stop_sync import CALLS
from mdistiller.models.flops import ViTShape, block_flops, forward_flops, gram_flops, linear_flops, vit_shape
from tests.helpers import load_tool

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "tools" / "bench.py"


def _load_bench():
    return load_tool("bench.py")


def test_block_flops_hand_count():
    # 1 block, width 8, 4 tokens, MLP hidden 32 (ratio 4):
    # qkv 2·4·8·24 = 1536, QKᵀ 2·4·4·8 = 256, AV 256, proj 2·4·8·8 = 512, fc1 2·4·8·32 = 2048, fc2 2048
    assert block_flops(4, 8, 32) == 1536 + 256 + 256 + 512 + 2048 + 2048 == 6656
    shape = ViTShape(depth=1, width=8, mlp_hidden=32, num_prefix=1, patch_size=2, in_chans=3)
    # 3 patches + CLS = 4 tokens; patch embedding 2·3·(3·2·2)·8 = 576
    assert forward_flops(shape, 3) == 576 + 6656
    assert gram_flops(3, 8) == 2 * 3 * 3 * 8
    assert linear_flops(3, 8, 16) == 2 * 3 * 8 * 16


def test_method_flops_hand_count():
    t = ViTShape(depth=2, width=8, mlp_hidden=32, num_prefix=1, patch_size=2)
    s = ViTShape(depth=2, width=4, mlp_hidden=16, num_prefix=1, patch_size=2)
    kw = dict(teacher_patches=3, student_patches=3, teacher_blocks=2, student_blocks=2, teacher_layers=[0, 1])
    t_fwd = 2 * 3 * 12 * 8 + 2 * block_flops(4, 8, 32)
    s_fwd = 2 * 3 * 12 * 4 + 2 * block_flops(4, 4, 16)
    proj = 2 * 3 * 4 * 8  # Linear(4 → 8) on 3 patch tokens
    fit = method_flops("FitNet", t, s, **kw)
    total = t_fwd + 3 * s_fwd + 6 * proj
    assert fit == {"teacher": t_fwd, "student": 3 * s_fwd, "extras": 3 * 2 * proj, "total": total}
    sing = method_flops("SiNGER", t, s, rank=2, **kw)
    adapter = 2 * 3 * 8 * 2 * 2  # x@down and (·)@up, rank 2, 3 patches
    gram = 2 * 3 * 3 * 8
    # intermediate layer 0: block 1 forward + input gradient, Gram with grad (3×) and without (1×); final: same Grams
    extras = 3 * 2 * proj + 3 * 2 * adapter + 2 * block_flops(4, 8, 32) + 2 * (4 * gram)
    assert sing["extras"] == extras and sing["total"] == t_fwd + 3 * s_fwd + extras
    quarter = method_flops("SiNGER", t, s, rank=2, info_fraction=0.25, **kw)  # only layer 0's re-run is scaled
    assert quarter["extras"] == extras - round(0.75 * (2 * block_flops(4, 8, 32) + 4 * gram))
    assert method_flops("student", t, s, **kw)["total"] == 3 * s_fwd
    assert method_flops("teacher", t, s, **kw)["total"] == t_fwd
    with pytest.raises(ValueError, match="unknown method"):
        method_flops("nope", t, s, **kw)


def test_vit_shape_reads_timm():
    import timm

    m = timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=2, embed_dim=48, num_heads=3, img_size=32)
    assert vit_shape(m) == ViTShape(depth=2, width=48, mlp_hidden=192, num_prefix=1, patch_size=16, in_chans=3)


def test_help_runs():
    out = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--peak-tflops" in out.stdout


def test_tiny_json(capsys, tmp_path):
    import torch

    bench = _load_bench()
    out_file = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:  # one thread: OpenMP's spin-waiting cannot stall on a busy shared CPU (this process's torch is loaded)
        bench.main(["--tiny", "--steps", "2", "--warmup", "1", "--json", "--threads", "1", "--omp-wait", "env",
                    "--output", str(out_file)])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out_file.read_text()) == result
    assert result["reference"] == "FitNet"
    for name in ("FitNet", "ViTKD", "SiNGER", "student", "teacher", "student_fb", "loader"):
        r = result["results"][name]
        assert len(r["times_s"]) == 2 and r["median_s"] > 0 and r["images_per_s"] > 0
        assert r["peak_mem_mib"] is not None
    for name in ("FitNet", "ViTKD", "SiNGER", "student", "teacher", "student_fb"):
        ratio = result["ratios"][name]
        assert set(ratio) >= {"paired_median", "paired_min", "paired_max", "of_medians", "flop_bound", "paired_ci95",
                              "cpu_time_paired_ci95"}
        low, high = ratio["paired_ci95"]
        assert ratio["paired_min"] <= low <= ratio["paired_median"] <= high <= ratio["paired_max"]
        assert result["results"][name]["flops_per_image"]["total"] > 0
    assert result["ratios"]["FitNet"]["paired_median"] == pytest.approx(1.0)
    # SiNGER runs the same teacher depth as FitNet plus its extras: its FLOP bound is strictly larger
    assert result["ratios"]["SiNGER"]["flop_bound"] > 1.0
    assert result["setup"]["fused_attn"]["teacher"] is True
    # the stop agreement: timed in the same rounds, each round's ratio is (its step + its agreement) / its step
    sync = result["stop_sync"]
    assert sync["calls_per_round"] == CALLS and len(sync["per_call_times_s"]) == 2 and "gloo" in sync["mode"]
    for name in ("FitNet", "ViTKD", "SiNGER", "student"):
        r = sync["with_vs_without"][name]
        steps = result["results"][name]["times_s"]
        assert r["paired_ratios"] == pytest.approx([(s + c) / s for s, c in zip(steps, sync["per_call_times_s"])])
        assert r["paired_min"] <= r["paired_median"] <= r["paired_max"]
    assert "stop_sync" not in result["results"] and not torch.distributed.is_initialized()  # its group is gone


def test_bad_method_is_one_sentence(capsys):
    bench = _load_bench()
    with pytest.raises(SystemExit) as e:
        bench.main(["--tiny", "--methods", "fitnet,bogus", "--omp-wait", "env"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown method 'bogus'" in err and err.count("\n") == 1


def test_each_distiller_counts_its_own_extra_flops(make_cfg):
    """The bound of a built distiller (its flops_options) equals the hand-configured method_flops call."""
    from mdistiller.distillers import build_distiller
    from mdistiller.models.flops import vit_shape

    for kind in ("FitNet", "ViTKD", "SiNGER"):
        d = build_distiller(make_cfg(kind))
        t, s = vit_shape(d.teacher.net.model), vit_shape(d.student.model)
        kw = dict(teacher_patches=4, student_patches=4, teacher_blocks=max(d.teacher_request()) + 1,
                  student_blocks=max(d.plan.student) + 1, teacher_layers=d.plan.teacher)
        got = method_flops(kind, t, s, **kw, **d.flops_options())
        assert got["extras"] == type(d).extra_flops(t, s, teacher_patches=4, student_patches=4,
                                                    layers=d.plan.teacher, **d.flops_options()) > 0
    sing = build_distiller(make_cfg("SiNGER"))
    assert sing.flops_options()["rank"] == 8 and sing.teacher_request() == [1, 2, 3]


def test_bench_library_names_and_errors():
    from mdistiller.bench.items import METHODS, parse_names
    from mdistiller.bench.timing import BenchError

    assert parse_names("singer, FITNET,singer", METHODS, "method") == ["SiNGER", "FitNet"]
    assert parse_names("none", METHODS, "method") == []
    with pytest.raises(BenchError, match="unknown method 'kd'"):
        parse_names("kd", METHODS, "method")


def test_bootstrap_interval_hand_counts():
    from mdistiller.bench.stats import bootstrap_interval

    # a constant ratio has no spread
    assert bootstrap_interval([1.12] * 7) == (1.12, 1.12)
    assert bootstrap_interval([]) is None
    # two rounds (a, b): a resample's median is a (p 1/4), (a+b)/2 (p 1/2) or b (p 1/4); both tails exceed 2.5 %
    assert bootstrap_interval([1.0, 1.4]) == (1.0, 1.4)
    # three rounds: P(median = lowest) = P(at least two draws of it) = 7/27 > 2.5 %, so the interval is the range
    assert bootstrap_interval([1.3, 1.0, 1.1]) == (1.0, 1.3)
    # seeded: the same values give the same interval; a different seed may move it only slightly
    values = [1.2, 0.95, 1.37, 1.1, 1.05, 1.18, 1.22, 1.09, 1.15, 1.01]
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(values, level=1.5)


def test_bootstrap_interval_contains_the_median_and_narrows_with_rounds():
    import random
    import statistics

    from mdistiller.bench.stats import bootstrap_interval

    rng = random.Random(0)
    for n in (4, 5, 10, 31):
        values = [1.1 + rng.gauss(0, 0.05) for _ in range(n)]
        low, high = bootstrap_interval(values)
        assert min(values) <= low <= statistics.median(values) <= high <= max(values)
    few = [1.1 + rng.gauss(0, 0.05) for _ in range(6)]
    many = [1.1 + rng.gauss(0, 0.05) for _ in range(200)]
    width = [bootstrap_interval(v)[1] - bootstrap_interval(v)[0] for v in (few, many)]
    assert width[1] < width[0]


def test_stop_sync_that_cannot_set_up_is_skipped_with_one_line(monkeypatch, capsys):
    import torch

    from mdistiller.bench import stop_sync

    def broken(*args, **kwargs):
        raise RuntimeError("no backend here\nsecond line")

    monkeypatch.setattr(torch.distributed, "TCPStore", lambda *a, **k: None)  # no wait for the peer to join
    monkeypatch.setattr(stop_sync, "_init", broken)
    with stop_sync.stop_sync_item(torch.device("cpu")) as item:
        assert item is None
    assert capsys.readouterr().err == ("bench.py: stop_sync not measured: its process group could not be set up "
                                       "(no backend here).\n")
    assert not torch.distributed.is_initialized()
