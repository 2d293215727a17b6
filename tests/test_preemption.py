"""Preemption of a 2-rank gloo run: a signal to one rank stops both at the same step, a killed rank ends the other.

The ranks are forks of one pre-imported server (``tests/rank_forker.py``) running the command line's ``main`` with
torchrun's environment, so the six launches below pay one interpreter start.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mdistiller.config import ConfigError, load_config, validate_config
from mdistiller.engine.checkpoint import load_checkpoint
from tests.conftest import tiny_config
from tests.test_train import ROOT, tiny_yaml

#: a rank must be gone this many seconds after the signal (typically well under 1 s; the machine may be shared)
EXIT_BOUND_S = 20.0
STEPS = 12


class Ranks:
    """Client of ``tests/rank_forker.py``: start the ranks of one command, signal them, wait for their exits."""

    def __init__(self) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1",
                   PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests/rank_forker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no answer from the ranks within {timeout:.0f} s"
        line = self.proc.stdout.readline()
        assert line, "the rank server ended"
        return json.loads(line)

    def start(self, argv: list[str], logs: Path, world: int = 2) -> list[int]:
        self.proc.stdin.write(json.dumps({"argv": argv, "world": world, "logs": str(logs)}) + "\n")
        self.proc.stdin.flush()
        self.logs = logs
        return self._read(120)["pids"]

    def wait(self, timeout: float = 180) -> tuple[list[int], list[float]]:
        done = self._read(timeout)
        return done["codes"], done["ended"]

    def err(self, rank: int) -> str:
        return (self.logs / f"rank{rank}.err").read_text()

    def fit_step(self, rank: int) -> int:
        return json.loads((self.logs / f"rank{rank}.json").read_text())["step"]

    def close(self) -> None:
        self.proc.kill()  # idle between commands; its interpreter teardown alone would take seconds
        self.proc.wait()


@pytest.fixture(scope="module")
def ranks():
    r = Ranks()
    yield r
    r.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ranks):
    """The config and the uninterrupted 2-rank reference run."""
    tmp = tmp_path_factory.mktemp("preempt")
    cfg = tiny_yaml(tmp, "FitNet")
    # checkpoints at epoch ends only (every 4 steps), so the stop writes its own
    opts = ["SOLVER.MAX_STEPS", str(STEPS), "LOG.CKPT_EVERY_STEPS", "0", "EXPERIMENT.DIST_TIMEOUT_MIN", "1"]
    ref = tmp / "ref"
    ranks.start(["--cfg", str(cfg), "--run-dir", str(ref), "--resume", "none", *opts], tmp / "ref_logs")
    codes, _ = ranks.wait()
    assert codes == [0, 0], ranks.err(0)[-2000:] + ranks.err(1)[-2000:]
    return tmp, cfg, opts, ref


def _step_logged(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(s).get("step", 0) for s in lines if s.endswith("}")]
    return max(steps, default=0)


def _signal_at(run: Path, pid: int, sig: int, step: int = 2, timeout: float = 120) -> float:
    """Send ``sig`` to ``pid`` once ``run`` logged ``step``; the monotonic time it was sent."""
    deadline = time.monotonic() + timeout
    while _step_logged(run) < step:
        assert time.monotonic() < deadline, f"the run never reached step {step}"
        os.kill(pid, 0)  # ProcessLookupError: the rank ended before the signal (its .err file says why)
        time.sleep(0.01)
    os.kill(pid, sig)
    return time.monotonic()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _students_equal(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    sa, sb = load_file(a / "student.safetensors"), load_file(b / "student.safetensors")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k  # same machine, same threads: bit for bit


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def _stop_then_resume(ranks: Ranks, setup, name: str, signalled_rank: int) -> None:
    tmp, cfg, opts, ref = setup
    run = tmp / name
    argv = ["--cfg", str(cfg), "--run-dir", str(run)]
    pids = ranks.start([*argv, "--resume", "none", *opts], tmp / f"{name}_logs")
    sent = _signal_at(run, pids[signalled_rank], signal.SIGTERM)
    codes, ended = ranks.wait()
    assert codes == [130, 130], (codes, ranks.err(0)[-2000:], ranks.err(1)[-2000:])
    assert max(ended) - sent < EXIT_BOUND_S, f"the ranks took {max(ended) - sent:.1f} s to stop"
    stopped = ranks.fit_step(0)
    assert ranks.fit_step(1) == stopped and 2 <= stopped < STEPS  # both ranks stopped after the same step
    last, prev = (load_checkpoint(run / "checkpoints" / f) for f in ("last.pth", "prev.pth"))
    assert last["step"] == stopped and prev["step"] < stopped  # one checkpoint of the stop step, not two
    assert "stopped by signal 15" in ranks.err(0) and "Traceback" not in ranks.err(0) + ranks.err(1)
    assert not (run / "student.safetensors").exists()
    # the same command again resumes, and the result is the uninterrupted run's
    ranks.start([*argv, *opts], tmp / f"{name}_resume_logs")
    codes, _ = ranks.wait()
    assert codes == [0, 0], ranks.err(0)[-2000:] + ranks.err(1)[-2000:]
    assert _losses(run) == _losses(ref)
    _students_equal(ref, run)


@pytest.mark.slow
def test_sigterm_to_rank1_stops_both_ranks_at_one_step_and_resumes_exactly(ranks, setup):
    _stop_then_resume(ranks, setup, "term1", signalled_rank=1)


@pytest.mark.slow
def test_sigterm_to_rank0_stops_both_ranks_at_one_step_and_resumes_exactly(ranks, setup):
    _stop_then_resume(ranks, setup, "term0", signalled_rank=0)


@pytest.mark.slow
def test_kill9_of_rank1_ends_rank0_with_one_sentence(ranks, setup):
    tmp, cfg, opts, _ = setup
    run = tmp / "kill1"
    pids = ranks.start(["--cfg", str(cfg), "--run-dir", str(run), "--resume", "none", *opts], tmp / "kill1_logs")
    sent = _signal_at(run, pids[1], signal.SIGKILL)
    codes, ended = ranks.wait()
    assert codes == [3, -signal.SIGKILL], (codes, ranks.err(0)[-2000:])
    assert ended[0] - sent < EXIT_BOUND_S, f"rank 0 took {ended[0] - sent:.1f} s to notice"
    err = ranks.err(0).strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err[-3000:]
    assert err.startswith("error: rank 0 lost its peers after step ") and "closed its connection" in err
    assert "rerun the same command to resume from it" in err and "last.pth" in err


@pytest.mark.slow
def test_a_hung_rank1_ends_rank0_after_the_process_group_timeout(ranks, setup):
    """SIGSTOP (a rank that hangs): rank 0 gives up after EXPERIMENT.DIST_TIMEOUT_MIN, in one sentence."""
    tmp, cfg, opts, _ = setup
    run = tmp / "stop1"
    timeout_s = 9.0
    opts = [*opts, "EXPERIMENT.DIST_TIMEOUT_MIN", str(timeout_s / 60)]
    pids = ranks.start(["--cfg", str(cfg), "--run-dir", str(run), "--resume", "none", *opts], tmp / "stop1_logs")
    sent = _signal_at(run, pids[1], signal.SIGSTOP)
    deadline = time.monotonic() + timeout_s + EXIT_BOUND_S
    while _alive(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    gave_up = time.monotonic() - sent
    os.kill(pids[1], signal.SIGKILL)  # the stopped rank never ends by itself
    codes, ended = ranks.wait()
    assert codes[0] == 3, (codes, ranks.err(0)[-2000:])
    assert timeout_s - 1 <= gave_up < timeout_s + EXIT_BOUND_S, gave_up
    err = ranks.err(0).strip()
    assert err.count("\n") == 0 and err.startswith("error: rank 0 lost its peers after step "), err[-3000:]
    assert f"within the process-group timeout (EXPERIMENT.DIST_TIMEOUT_MIN {timeout_s / 60:g} min)" in err


def test_peer_failures_are_told_apart_from_other_errors():
    from mdistiller.engine.distributed import peer_failure

    closed = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:925: "
                          "Connection reset by peer. This is typically caused by a remote worker hanging")
    hung = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
                        "3000ms for recv operation to complete")
    assert "closed its connection" in peer_failure(closed)
    assert "did not answer" in peer_failure(hung)
    assert peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert peer_failure(ValueError("gloo")) is None


def test_dist_timeout_must_be_positive():
    assert load_config([], ["EXPERIMENT.DIST_TIMEOUT_MIN", "2"], validate=False).EXPERIMENT.DIST_TIMEOUT_MIN == 2.0
    cfg = tiny_config()
    cfg.EXPERIMENT.DIST_TIMEOUT_MIN = 0.0
    with pytest.raises(ConfigError, match="EXPERIMENT.DIST_TIMEOUT_MIN is 0.0 but must be positive"):
        validate_config(cfg)


_SECOND_SIGNAL = textwrap.dedent(
    """
    import os, signal, sys, time, torch
    from mdistiller.engine.stopping import SignalStop
    stop = SignalStop(grace_s=float(sys.argv[1]))
    stop.install()
    print("ready", flush=True)
    torch.futures.Future().wait()  # blocked in C++: no Python signal handler can run here
    """
)


@pytest.mark.slow
def test_second_signal_ends_a_blocked_process_but_a_quick_repeat_does_not(tmp_path):
    """A repeat within the grace (a launcher forwarding the same signal) is ignored; a later one ends the process
    at once with 128 + N, even while the main thread is blocked where Python signal handlers cannot run."""
    script = tmp_path / "blocked.py"
    script.write_text(_SECOND_SIGNAL)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), "1.0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)  # the same request delivered twice
        time.sleep(1.3)
        assert proc.poll() is None, "a repeat within the grace ended the process"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        gone = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGINT and gone < 5, (proc.returncode, gone, err)
    assert "second SIGINT while stopping: ending now" in err and err.count("\n") == 1
