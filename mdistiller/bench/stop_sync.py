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


#: how long the two processes wait for each other to join (a peer that cannot start fails the item after this)
JOIN_TIMEOUT = datetime.timedelta(minutes=2)
#: how long one call may wait for the other rank: a whole round of the other items runs between two calls
CALL_TIMEOUT = datetime.timedelta(minutes=30)


def _init(store, rank: int, world: int, backend: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=CALL_TIMEOUT)


def serve_peer(port: int) -> None:
    """Rank 1 of the CPU measurement: answer every agreement call of rank 0 until it sends :data:`END`."""
    import torch
    import torch.distributed as dist

    from mdistiller.engine.stopping import agree_step_flags

    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=False, timeout=JOIN_TIMEOUT)
    _init(store, 1, 2, "gloo")
    try:
        while agree_step_flags(False, None, torch.device("cpu"), True)[1] != END:
            pass
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def stop_sync_item(device) -> Iterator[Item | None]:
    """The ``stop_sync`` item on ``device`` (its process group and, on CPU, its peer live as long as the context),
    or ``None`` after one line on stderr when the process group cannot be set up (the rest of the benchmark runs)."""
    import torch
    import torch.distributed as dist

    from mdistiller.engine.stopping import agree_step_flags

    if dist.is_initialized():
        raise BenchError("stop_sync needs its own process group, but one is already initialised; leave it out.")
    peer = None
    try:
        if device.type == "cuda":
            mode = "1-rank NCCL on the device (launch and device sync; no interconnect)"
            torch.cuda.set_device(device.index if device.index is not None else torch.cuda.current_device())
            _init(dist.HashStore(), 0, 1, "nccl")
        else:
            mode = "2-rank gloo over loopback (a peer process answers each call)"
            port = _free_port()
            env = dict(os.environ, OMP_NUM_THREADS="1",
                       PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")])))
            peer = subprocess.Popen([sys.executable, "-c", "from mdistiller.bench.stop_sync import serve_peer; "
                                     f"serve_peer({port})"], env=env)
            store = dist.TCPStore("127.0.0.1", port, 2, is_master=True, timeout=JOIN_TIMEOUT)
            _init(store, 0, 2, "gloo")
        agree_step_flags(False, None, device, True)  # one trial call: a backend that cannot reduce fails here
    except (RuntimeError, ValueError) as e:
        if peer is not None:
            peer.kill()
        if dist.is_initialized():
            with contextlib.suppress(RuntimeError):
                dist.destroy_process_group()
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"bench.py: stop_sync not measured: its process group could not be set up ({reason}).",
              file=sys.stderr)
        yield None
        return

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
