"""Engine building blocks: sampler, checkpoint, optimizer/schedule, metrics writer, distributed setup."""

from __future__ import annotations

import json
import math
import os
import random
import re
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from mdistiller.engine import checkpoint as ckpt
from mdistiller.engine import distributed as D
from mdistiller.engine import logging as L
from mdistiller.engine.optim import IterationScheduler, build_optimizer, clip_grad, is_no_decay
from mdistiller.engine.sampler import ResumableDistributedSampler

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------------- sampler
def _batches(stream: list[int], b: int) -> list[list[int]]:
    return [stream[i : i + b] for i in range(0, len(stream), b)]


def test_sampler_epoch_changes_order_and_is_deterministic():
    s = ResumableDistributedSampler(100, 1, 0, batch_size=10, seed=3)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1 and sorted(e0) == sorted(e1) == list(range(100))
    t = ResumableDistributedSampler(100, 1, 0, batch_size=10, seed=3)
    t.set_epoch(1)
    assert list(t) == e1  # same (seed, epoch) → same order, independent of the global RNG
    u = ResumableDistributedSampler(100, 1, 0, batch_size=10, seed=4)
    u.set_epoch(1)
    assert list(u) != e1
    ns = ResumableDistributedSampler(10, 1, 0, batch_size=5, shuffle=False)
    assert list(ns) == list(range(10))


def test_sampler_warns_when_epoch_not_advanced():
    s = ResumableDistributedSampler(20, 1, 0, batch_size=4)
    s.set_epoch(0)
    list(s)
    with pytest.warns(RuntimeWarning, match="set_epoch"):
        list(s)
    s.set_epoch(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(s)


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_equal_counts_and_no_duplicates(drop_last):
    n, w, b = 103, 3, 4
    samplers = [ResumableDistributedSampler(n, w, r, batch_size=b, seed=1, drop_last=drop_last) for r in range(w)]
    for s in samplers:
        s.set_epoch(2)
    streams = [list(s) for s in samplers]
    assert len({len(x) for x in streams}) == 1
    assert all(len(x) == len(s) == s.num_samples for x, s in zip(streams, samplers))
    union = [i for x in streams for i in x]
    order = samplers[0].global_order()
    if drop_last:
        assert len(streams[0]) == (n // (w * b)) * b == 32
        assert len(set(union)) == len(union)  # no duplicates
        assert set(union) == set(order[: len(union)].tolist())  # a prefix of the epoch permutation
    else:
        assert set(union) == set(range(n))  # nothing dropped, the padding wraps around
        assert len(union) - len(set(union)) < w
    assert samplers[0].steps_per_epoch == math.ceil(samplers[0].num_samples / b)


def test_sampler_two_ranks_match_one_rank_global_batch():
    n, b, w = 50, 4, 2
    one = ResumableDistributedSampler(n, 1, 0, batch_size=w * b, seed=7)
    ranks = [ResumableDistributedSampler(n, w, r, batch_size=b, seed=7) for r in range(w)]
    for s in [one, *ranks]:
        s.set_epoch(5)
    g = _batches(list(one), w * b)
    per_rank = [_batches(list(s), b) for s in ranks]
    assert len(g) == len(per_rank[0]) == len(per_rank[1]) == n // (w * b)
    for t, global_batch in enumerate(g):
        assert per_rank[0][t] + per_rank[1][t] == global_batch  # same samples, in rank order
    # through a real DataLoader with the per-rank batch size
    loader = DataLoader(list(range(n)), batch_size=b, sampler=ranks[1])
    ranks[1].set_epoch(5)
    assert [x.tolist() for x in loader] == per_rank[1]


def test_sampler_set_start_resumes_exactly():
    s = ResumableDistributedSampler(64, 2, 1, batch_size=4, seed=0)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3)
    s.set_start(12)
    assert len(s) == len(full) - 12 and list(s) == full[12:]
    s.set_epoch(3, start=len(full))
    assert list(s) == [] and len(s) == 0
    s.set_epoch(4)  # a new epoch starts from 0 again
    assert len(s) == len(full)
    with pytest.raises(ValueError, match="start index"):
        s.set_start(len(full) + 1)
    # state round-trip, also onto another world size with the same global batch
    s.set_epoch(3, start=8)
    state = s.state_dict()
    t = ResumableDistributedSampler(64, 2, 1, batch_size=4, seed=0)
    t.load_state_dict(state)
    assert list(t) == full[8:]
    one = ResumableDistributedSampler(64, 1, 0, batch_size=8, seed=0)
    one.load_state_dict(state)
    assert one.start == 16 and one.epoch == 3
    with pytest.raises(ValueError, match="global batch"):
        ResumableDistributedSampler(64, 1, 0, batch_size=4, seed=0).load_state_dict(state)


def test_sampler_rejects_too_small_dataset():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableDistributedSampler(10, 4, 0, batch_size=4)
    assert len(ResumableDistributedSampler(10, 4, 0, batch_size=4, drop_last=False)) == 3


# -------------------------------------------------------------------------------------------------------- checkpoint
class _Plain:
    pass


class _Boom:
    def __reduce__(self):
        raise RuntimeError("serializer failed")


def test_atomic_save_leaves_no_temp_and_survives_interrupted_write(tmp_path):
    path = tmp_path / "ck" / "last.pth"
    ckpt.save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]
    with pytest.raises(RuntimeError, match="serializer failed"):
        ckpt.save_checkpoint(path, {"step": 2, "bad": _Boom()})
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]  # temp file removed
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_truncated_or_missing_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "last.pth"
    ckpt.save_checkpoint(path, {"w": torch.randn(64, 64)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="corrupt or truncated") as e:
        ckpt.load_checkpoint(path)
    assert str(path) in str(e.value) and isinstance(e.value, RuntimeError)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ckpt.CheckpointError, match=re.escape(str(path)) + " is corrupt"):
        ckpt.load_checkpoint(path)
    torch.save({"obj": _Plain()}, path)  # intact file, but not loadable with weights_only=True
    with pytest.raises(ckpt.CheckpointError, match="weights_only=False"):
        ckpt.load_checkpoint(path)
    assert isinstance(ckpt.load_checkpoint(path, weights_only=False)["obj"], _Plain)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "nope.pth")


def test_check_compatible_names_mismatches():
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
    meta = {"distiller": "SiNGER", "student": "vit_tiny", "teacher": "vit_large", "params": ckpt.param_shapes(net)}
    state = {"meta": meta}
    ckpt.check_compatible(state, {**meta, "params": {k: torch.Size(v) for k, v in meta["params"].items()}})
    other = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 2))
    want = {**meta, "student": "vit_small", "params": ckpt.param_shapes(other)}
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.check_compatible(state, want, path="run/checkpoints/last.pth", max_report=10)
    msg = str(e.value)
    assert "run/checkpoints/last.pth" in msg and "student" in msg and "vit_small" in msg
    assert "params.0.weight" in msg and "[8, 4]" in msg and "params.2.weight missing" in msg
    with pytest.raises(ckpt.CheckpointError, match="no 'meta'"):
        ckpt.check_compatible({}, want)


def test_rng_round_trip_through_a_checkpoint(tmp_path):
    ckpt.seed_everything(123)
    saved = ckpt.rng_state()

    def draw():
        return random.random(), float(np.random.rand()), torch.rand(4).tolist(), float(np.random.randn())

    first = draw()
    ckpt.save_checkpoint(tmp_path / "r.pth", {"rng": saved})
    draw()
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "r.pth")["rng"])  # weights_only load works
    assert draw() == first


def test_assert_no_teacher():
    teacher_names = ["teacher.blocks.0.attn.qkv.weight", "teacher.norm.weight"]
    student_sd = {"student.blocks.0.attn.qkv.weight": torch.zeros(1), "adapters.0.down": torch.zeros(1)}
    ckpt.assert_no_teacher({"model": student_sd}, teacher_names)
    bad = {"model": {**student_sd, "module.teacher.norm.weight": torch.zeros(1)}}
    assert ckpt.find_teacher_keys(bad, teacher_names) == ["model.module.teacher.norm.weight"]
    with pytest.raises(ckpt.CheckpointError, match="teacher"):
        ckpt.assert_no_teacher(bad, teacher_names)


# ------------------------------------------------------------------------------------------------------------- optim
class _TinyViT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 5, 8))
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 8))
        self.fc = torch.nn.Linear(8, 8)
        self.norm1 = torch.nn.LayerNorm(8)
        self.frozen = torch.nn.Linear(8, 8)
        self.frozen.requires_grad_(False)


def test_adamw_param_groups():
    m = _TinyViT()
    opt = build_optimizer(m, type="AdamW", lr=0.1, weight_decay=0.05)
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["group_name"]: g for g in opt.param_groups}
    decay, no_decay = groups["group0/decay"], groups["group0/no_decay"]
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == {id(m.fc.weight)}
    assert ids(no_decay["params"]) == ids([m.pos_embed, m.cls_token, m.fc.bias, m.norm1.weight, m.norm1.bias])
    assert all(id(p) not in ids(decay["params"] + no_decay["params"]) for p in m.frozen.parameters())
    assert is_no_decay("blocks.0.ls1.gamma", torch.zeros(8)) and not is_no_decay("head.weight", torch.zeros(2, 2))
    one = build_optimizer(m, type="sgd", lr=0.1, weight_decay=0.05, no_decay_bias_norm=False)
    assert len(one.param_groups) == 1 and isinstance(one, torch.optim.SGD)
    scaled = build_optimizer([{"params": list(m.fc.named_parameters()), "lr_scale": 0.5}], lr=0.2)
    assert all(g["lr"] == pytest.approx(0.1) for g in scaled.param_groups)


def test_unknown_optimizer_and_schedule_errors():
    with pytest.raises(ValueError, match="unknown optimizer type 'lion'; valid types: adamw, adam, sgd"):
        build_optimizer(_TinyViT(), type="lion")
    opt = build_optimizer(_TinyViT(), lr=0.1)
    with pytest.raises(ValueError, match="valid schedules: cosine, multistep, constant"):
        IterationScheduler(opt, 0.1, 10, schedule="poly")
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(torch.nn.Linear(2, 2).requires_grad_(False))


def test_cosine_schedule_values():
    m = torch.nn.Linear(2, 2)
    opt = build_optimizer([{"params": list(m.named_parameters()), "lr_scale": 0.5}], lr=1.0)
    base, final, total, warm = 1.0, 0.01, 100, 10
    s = IterationScheduler(opt, base, total, warmup_steps=warm, schedule="cosine", final_lr=final)

    def cos(t):
        return final + 0.5 * (base - final) * (1 + math.cos(math.pi * (t - warm) / (total - warm)))

    assert s.lr_at(0) == pytest.approx(0.1) and s.lr_at(4) == pytest.approx(0.5) and s.lr_at(9) == pytest.approx(1.0)
    assert s.lr_at(10) == pytest.approx(base) and s.lr_at(total) == pytest.approx(final)
    for t in (11, 37, 55, 99):
        assert s.lr_at(t) == pytest.approx(cos(t))
    assert s.lr_at(500) == pytest.approx(final)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * s.lr_at(0))  # lr_scale applied
    for t in range(1, 60):
        s.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * s.lr_at(t)) and s.lr == s.lr_at(t)
    f = IterationScheduler(opt, 1.0, 10, warmup_steps=4, warmup_start_factor=0.2, schedule="constant")
    assert f.lr_at(0) == pytest.approx(0.2 + 0.8 / 4) and f.lr_at(3) == pytest.approx(1.0) == f.lr_at(9)


def test_multistep_and_from_epochs():
    opt = build_optimizer(torch.nn.Linear(2, 2), type="sgd", lr=1.0)
    s = IterationScheduler(opt, 1.0, 100, schedule="multistep", milestones=[60, 30], gamma=0.1)
    assert [s.lr_at(t) for t in (0, 29, 30, 59, 60, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    e = IterationScheduler.from_epochs(
        opt, 1.0, epochs=5, steps_per_epoch=20, warmup_epochs=1, schedule="multistep", milestone_epochs=[3]
    )
    assert (e.total_steps, e.warmup_steps, e.milestones) == (100, 20, [60])


def test_scheduler_state_round_trip():
    opt = build_optimizer(torch.nn.Linear(2, 2), lr=1.0)
    a = IterationScheduler(opt, 1.0, 50, warmup_steps=5, final_lr=0.0)
    for _ in range(17):
        a.step()
    state = a.state_dict()
    rest_a = []
    for _ in range(20):
        a.step()
        rest_a.append(a.get_last_lr()[0])
    opt2 = build_optimizer(torch.nn.Linear(2, 2), lr=1.0)
    b = IterationScheduler(opt2, 1.0, 50, warmup_steps=5, final_lr=0.0)
    b.load_state_dict(state)
    assert b.get_last_lr()[0] == pytest.approx(a.lr_at(17))
    rest_b = []
    for _ in range(20):
        b.step()
        rest_b.append(b.get_last_lr()[0])
    assert rest_a == rest_b


def test_clip_grad():
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), 3.0)
    assert clip_grad([p], 0) == pytest.approx(6.0) and torch.equal(p.grad, torch.full((4,), 3.0))  # measured only
    assert clip_grad([p], 1.0) == pytest.approx(6.0)
    assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-4)


# ----------------------------------------------------------------------------------------------------------- logging
def _strict(line: str) -> dict:
    def no_constant(c):
        raise ValueError(c)

    return json.loads(line, parse_constant=no_constant)


def test_metrics_writer_jsonl_main_only(tmp_path):
    with L.MetricsWriter(tmp_path / "run", is_main=True) as w:
        w.log({"loss": torch.tensor(0.5), "lr": 1e-3, "bad": float("nan")}, step=1)
        w.log({"acc": np.float32(0.25)}, step=2, epoch=0)
        lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()  # flushed before close
        assert len(lines) == 2
    recs = [_strict(x) for x in lines]
    assert recs[0]["step"] == 1 and recs[0]["loss"] == 0.5 and recs[0]["bad"] is None
    assert recs[1]["acc"] == 0.25 and recs[1]["epoch"] == 0 and "time" in recs[1]
    other = L.MetricsWriter(tmp_path / "run1", is_main=False)
    other.log({"loss": 1.0}, step=1)
    other.close()
    assert not (tmp_path / "run1").exists()


def test_git_revision_and_run_info(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # git absent → None, no exception
    assert L.git_revision(tmp_path) is None

    def fake_run(args, **kw):
        out = "abc123\n" if "rev-parse" in args else " M file.py\n"
        return subprocess.CompletedProcess(args, 0, stdout=out, stderr="")

    monkeypatch.setattr(L.subprocess, "run", fake_run)
    assert L.git_revision(tmp_path) == "abc123-dirty"
    monkeypatch.setattr(L, "git_revision", lambda repo_dir=None: "abc123")
    info = L.write_run_info(tmp_path / "run", "SOLVER:\n  LR: 0.1", {"world_size": 2, "seed": 0})
    assert (tmp_path / "run" / "config.yaml").read_text() == "SOLVER:\n  LR: 0.1\n"
    saved = _strict((tmp_path / "run" / "run_info.json").read_text())
    assert saved == info and saved["git"] == "abc123" and saved["world_size"] == 2 and "torch" in saved


# ------------------------------------------------------------------------------------------------------- distributed
_LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_JOB_NODELIST",
    "SLURM_NODELIST",
    "SLURM_LAUNCH_NODE_IPADDR",
    "SLURM_JOB_ID",
    "MDISTILLER_NO_SLURM",
)


@pytest.fixture
def clean_env(monkeypatch):
    for k in _LAUNCH_VARS:  # set-then-delete so that anything init_distributed adds is undone afterwards
        monkeypatch.setenv(k, "x")
        monkeypatch.delenv(k)
    calls: list[dict] = []
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(kw))
    return calls


def test_init_distributed_single_process(clean_env):
    env = D.init_distributed("cpu")
    assert env == D.DistEnv(0, 1, 0, torch.device("cpu"), None, True) and not env.distributed
    assert clean_env == []
    assert D.is_main() and D.get_world_size() == 1
    t = torch.ones(2)
    assert D.all_reduce_sum(t) is t and torch.equal(t, torch.ones(2))
    assert D.reduce_mean_dict({"a": 2.0}, 0)["a"] != D.reduce_mean_dict({"a": 2.0}, 0)["a"]  # nan for count 0
    assert D.broadcast_object({"x": 1}) == {"x": 1} and D.all_gather_object(3) == [3]
    D.barrier()
    D.cleanup()


def test_init_distributed_reads_global_rank(clean_env, monkeypatch):
    for k, v in {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "n0", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    env = D.init_distributed("cpu")
    assert (env.rank, env.local_rank, env.world_size, env.is_main, env.backend) == (5, 1, 8, False, "gloo")
    assert clean_env[0]["rank"] == 5 and clean_env[0]["world_size"] == 8 and clean_env[0]["backend"] == "gloo"
    monkeypatch.setenv("RANK", "8")
    with pytest.raises(ValueError, match="rank 8 with world size 8"):
        D.init_distributed("cpu")


def test_init_distributed_slurm(clean_env, monkeypatch):
    slurm = {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_JOB_ID": "1234",
    }
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    env = D.init_distributed("cpu")
    assert (env.rank, env.local_rank, env.world_size) == (3, 1, 4) and len(clean_env) == 1
    assert os.environ["MASTER_ADDR"] == "gpu07" and os.environ["MASTER_PORT"] == str(15000 + 1234)
    monkeypatch.setenv("MDISTILLER_NO_SLURM", "1")
    assert D.init_distributed("cpu").world_size == 1


_WORKER = textwrap.dedent(
    """
    import json, torch
    from mdistiller.engine import distributed as D
    env = D.init_distributed("cpu")
    t = D.all_reduce_sum(torch.tensor([float(env.rank + 1)]))
    m = D.reduce_mean_dict({"loss": 2.0 * env.rank + 1, "acc": torch.tensor(0.5 + 0.5 * env.rank)},
                           count=3 if env.rank == 0 else 1)
    obj = D.broadcast_object({"from": env.rank} if env.is_main else None)
    gathered = D.all_gather_object(env.rank)
    D.barrier()
    print(json.dumps({"rank": env.rank, "backend": env.backend, "sum": t.item(), "mean": m, "obj": obj,
                      "gathered": gathered}))
    D.cleanup()
    """
)


@pytest.mark.slow
def test_two_gloo_processes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(2):
        env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
        env.update(
            RANK=str(r),
            LOCAL_RANK=str(r),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            PYTHONPATH=str(REPO),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err[-2000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, o in enumerate(outs):
        assert o["rank"] == r and o["backend"] == "gloo" and o["sum"] == 3.0
        assert o["mean"]["loss"] == pytest.approx((1.0 * 3 + 3.0 * 1) / 4)  # not the mean of means (2.0)
        assert o["mean"]["acc"] == pytest.approx((0.5 * 3 + 1.0 * 1) / 4)
        assert o["obj"] == {"from": 0} and o["gathered"] == [0, 1]


def test_hooks_resolve_lazily_and_the_engine_imports_no_analysis() -> None:
    import subprocess
    import sys

    from mdistiller.hooks import get_hook, resolve

    assert get_hook("no such hook") is None
    with pytest.raises(ValueError, match="'os.path:join' is not a declared link; declare it in LINKS"):
        resolve("os.path:join")  # the loader loads only what mdistiller/links.py declares
    # the trainer reaches the analysis package only through the "run_figures" hook
    code = ("import sys, mdistiller.engine.trainer as t; from mdistiller.hooks import get_hook; "
            "assert not any(m.startswith('mdistiller.analysis') for m in sys.modules), 'analysis imported'; "
            "print(get_hook('run_figures').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "run_figures", out.stderr


def test_read_metrics_skips_a_half_written_last_line(tmp_path) -> None:
    from mdistiller.engine.metrics_file import read_metrics

    assert read_metrics(tmp_path) == []
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n[1, 2]\n{"step": 2, "lo')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]  # a run still writing, or killed mid-line
