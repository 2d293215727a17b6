"""The per-step cost of the stop agreement: the trainer's flag all-reduce, timed in the benchmark's rounds.

Every training step under a process group calls :func:`mdistiller.engine.stopping.agree_step_flags` once (a MAX
all-reduce of two numbers: the non-finite flag and the stop signal), so a signal to any one rank stops every rank
after the same step. The benchmark item ``stop_sync`` calls that same function :data:`CALLS` times per round:

* on CPU, over a real 2-rank gloo group on the loopback interface, with a peer process that answers each call
  (the peer's own step does not exist, so no waiting for a slower rank is included);
* on CUDA, over a 1-rank NCCL group on the device: the collective's launch and the read-back that synchronises the
  device, without the interconnect (a second GPU is needed for that).

:func:`mdistiller.bench.report.summarise` turns the per-call time into the ratio "step with the agreement / step
without it", ``(t_step + t_call) / t_step`` per round, paired with each timed training step of the same round.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from .timing import BenchError, Item

__all__ = ["CALLS", "END", "serve_peer", "stop_sync_item"]

#: agreement calls per timed round (one call lasts tens of microseconds: a round of many is steadier)
CALLS = 100
#: the stop-signal value that tells the peer the benchmark is over (larger than any real signal number)
END = 255
_REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int, backend: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=30))


def serve_peer(port: int) -> None:
    """Rank 1 of the CPU measurement: answer every agreement call of rank 0 until it sends :data:`END`."""
    import torch
    import torch.distributed as dist

    from mdistiller.engine.stopping import agree_step_flags

    torch.set_num_threads(1)
    _init(1, 2, port, "gloo")
    try:
        while agree_step_flags(False, None, torch.device("cpu"), True)[1] != END:
            pass
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def stop_sync_item(device) -> Iterator[Item]:
    """The ``stop_sync`` item on ``device`` (its process group and, on CPU, its peer live as long as the context)."""
    import torch
    import torch.distributed as dist

    from mdistiller.engine.stopping import agree_step_flags

    if dist.is_initialized():
        raise BenchError("stop_sync needs its own process group, but one is already initialised; leave it out.")
    port = _free_port()
    peer = None
    if device.type == "cuda":
        mode = "1-rank NCCL on the device (launch and device sync; no interconnect)"
        torch.cuda.set_device(device)
        _init(0, 1, port, "nccl")
    else:
        mode = "2-rank gloo over loopback (a peer process answers each call)"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")])),
                   OMP_NUM_THREADS="1")
        peer = subprocess.Popen([sys.executable, "-c", f"from mdistiller.bench.stop_sync import serve_peer; "
                                 f"serve_peer({port})"], env=env)
        _init(0, 2, port, "gloo")

    def run() -> None:
        for _ in range(CALLS):
            agree_step_flags(False, None, device, True)

    try:
        yield Item("stop_sync", run, info={"calls_per_round": CALLS, "mode": mode})
    finally:
        if peer is not None:
            with contextlib.suppress(RuntimeError):
                agree_step_flags(False, END, device, True)
        dist.destroy_process_group()
        if peer is not None:
            try:
                peer.wait(timeout=60)
            except subprocess.TimeoutExpired:
                peer.kill()
