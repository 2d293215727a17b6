"""Process-group setup and the few collectives the trainer needs.

One entry point covers every launcher:

* ``torchrun`` (single node or ``--nnodes N``): the global ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` come from the
  environment, with ``MASTER_ADDR``/``MASTER_PORT`` already set by torchrun.
* SLURM with one task per GPU (``srun python tools/train.py ...``): ``SLURM_PROCID`` is the global rank,
  ``SLURM_NTASKS`` the world size and ``SLURM_LOCALID`` the local rank. ``MASTER_ADDR`` defaults to
  ``SLURM_LAUNCH_NODE_IPADDR`` (else the first host of ``SLURM_JOB_NODELIST``) and ``MASTER_PORT`` to
  ``15000 + SLURM_JOB_ID % 20000`` (else 29500) when they are not set; set both yourself on clusters where the launch
  node is not a compute node. ``MDISTILLER_NO_SLURM=1`` ignores SLURM variables (e.g. a plain ``python`` inside an
  ``sbatch`` script that asked for several tasks, where SLURM_NTASKS would otherwise make the single process wait for
  peers that never come).
* nothing set: one process and no process group; every helper below is then a cheap no-op.

The global rank is never taken from the local rank (the released code did that and was single-node only).
The backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistEnv",
    "init_distributed",
    "is_dist",
    "get_rank",
    "get_world_size",
    "is_main",
    "barrier",
    "all_reduce_sum",
    "reduce_mean_dict",
    "broadcast_object",
    "all_gather_object",
    "cleanup",
    "peer_failure",
]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        world_size: number of processes in the job.
        local_rank: rank on this node; selects the CUDA device.
        device: the device this process computes on (``cuda:<local_rank>`` or ``cpu``).
        backend: ``"nccl"``, ``"gloo"`` or ``None`` when no process group exists (single process).
        is_main: ``rank == 0``; only this process logs and writes checkpoints.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    is_main: bool = True

    @property
    def distributed(self) -> bool:
        """True when a process group spans more than one process (wrap the trainable module in DDP)."""
        return self.world_size > 1


def _env_int(name: str, env: Mapping[str, str]) -> int:
    raw = env[name]
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer; fix the launcher settings.") from None


def _first_slurm_host(nodelist: str) -> str:
    """First host name of a compact SLURM node list such as ``gpu[003-006,9],login1`` → ``gpu003``."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):  # the first top-level comma ends the first item
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    item = nodelist[:end].strip()
    if "[" not in item:
        return item
    i, j = item.index("["), item.index("]")
    first = item[i + 1 : j].split(",")[0].split("-")[0]
    return item[:i] + first + item[j + 1 :]


def _resolve_device(device: str) -> torch.device:
    device = device.lower()  # as the config and the preflight check accept it (EXPERIMENT.DEVICE CPU)
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={device!r} is not one of 'auto', 'cpu', 'cuda'; pass one of those.")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but no CUDA device is visible; use device='cpu' or 'auto'.")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return torch.device("cuda") if use_cuda else torch.device("cpu")


def _read_launch_env(env: Mapping[str, str]) -> tuple[int, int, int, str]:
    """(rank, world_size, local_rank, source) from torchrun / SLURM variables, else a single process."""
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _env_int("RANK", env), _env_int("WORLD_SIZE", env)
        local = _env_int("LOCAL_RANK", env) if "LOCAL_RANK" in env else -1
        return rank, world, local, "env"
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and env.get("MDISTILLER_NO_SLURM", "0") in ("", "0"):
        rank, world = _env_int("SLURM_PROCID", env), _env_int("SLURM_NTASKS", env)
        local = _env_int("SLURM_LOCALID", env) if "SLURM_LOCALID" in env else -1
        return rank, world, local, "slurm"
    return 0, 1, 0, "single"


def _set_slurm_rendezvous_defaults(env: MutableMapping[str, str]) -> None:
    """MASTER_ADDR / MASTER_PORT defaults for an ``srun``-launched job (see the module docstring)."""
    if "MASTER_ADDR" not in env:
        addr = env.get("SLURM_LAUNCH_NODE_IPADDR")
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not addr and nodelist:
            addr = _first_slurm_host(nodelist)
        if not addr:
            raise RuntimeError(
                "SLURM launch without MASTER_ADDR, SLURM_LAUNCH_NODE_IPADDR or SLURM_JOB_NODELIST; "
                "export MASTER_ADDR=<first node> (and MASTER_PORT) before srun."
            )
        env["MASTER_ADDR"] = addr
    if "MASTER_PORT" not in env:
        job = env.get("SLURM_JOB_ID", "")
        env["MASTER_PORT"] = str(15000 + int(job) % 20000) if job.isdigit() else "29500"


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistEnv:
    """Set up this process for (possibly) distributed training and describe it.

    Args:
        device: ``"auto"`` (CUDA when visible, else CPU), ``"cpu"`` or ``"cuda"``.
        timeout_minutes: collective timeout handed to ``init_process_group``.

    Returns:
        The :class:`DistEnv` of this process. A process group is created only when the world size is above 1; an
        already initialised group is reused.
    """
    dev = _resolve_device(device)
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
        source = "existing"
    else:
        rank, world, local, source = _read_launch_env(os.environ)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} with world size {world} is invalid; check RANK/WORLD_SIZE (or SLURM_*) values.")
    ncuda = torch.cuda.device_count() if dev.type == "cuda" else 0
    if local < 0:  # LOCAL_RANK / SLURM_LOCALID missing: assume ranks fill nodes in order
        local = rank % ncuda if ncuda else 0
    if dev.type == "cuda":
        if local >= ncuda:
            raise RuntimeError(
                f"local rank {local} has no GPU (only {ncuda} visible); launch at most {ncuda} processes per node "
                "or fix CUDA_VISIBLE_DEVICES."
            )
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if source == "existing":
        backend = str(dist.get_backend())
    elif world > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed; install a full build.")
        if source == "slurm":
            _set_slurm_rendezvous_defaults(os.environ)
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise RuntimeError(f"{key} is not set for a {world}-process run; launch with torchrun or export {key}.")
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    else:
        backend = None
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend, is_main=rank == 0)


def is_dist() -> bool:
    """True when a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank (0 without a process group)."""
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    """World size (1 without a process group)."""
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """True on global rank 0 (and in a single process)."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_dist():
        dist.barrier()


def _collective_device() -> torch.device:
    """NCCL only reduces CUDA tensors; gloo reduces CPU tensors."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (unchanged without a process group).

    Under NCCL the tensor must live on this rank's CUDA device.
    """
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def reduce_mean_dict(
    metrics: Mapping[str, float | torch.Tensor], count: float | torch.Tensor | Mapping[str, float | torch.Tensor]
) -> dict[str, float]:
    """Average per-rank means over all ranks with correct denominators.

    Each value is a mean over ``count`` items on this rank (``count`` may also map each key to its own count). The
    result is ``sum_r(value_r * count_r) / sum_r(count_r)`` for every key, never a mean of per-rank means. A key whose
    total count is 0 comes back as ``nan``. Every rank must pass the same keys (the order does not matter); this is a
    collective, so call it on all ranks.
    """
    keys = sorted(metrics)
    counts = count if isinstance(count, Mapping) else dict.fromkeys(keys, count)
    missing = [k for k in keys if k not in counts]
    if missing:
        raise KeyError(f"reduce_mean_dict has no count for {missing}; pass a count for every metric key.")
    device = _collective_device()

    def scalar(v: float | torch.Tensor) -> torch.Tensor:
        t = v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
        return t.to(device=device, dtype=torch.float64).reshape(())

    if not keys:
        return {}
    c = torch.stack([scalar(counts[k]) for k in keys])
    v = torch.stack([scalar(metrics[k]) for k in keys])
    packed = torch.cat([v * c, c])
    all_reduce_sum(packed)
    sums, totals = packed[: len(keys)], packed[len(keys) :]
    means = torch.where(totals > 0, sums / totals.clamp_min(1e-300), torch.full_like(sums, float("nan")))
    return dict(zip(keys, means.cpu().tolist(), strict=True))


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (picklable objects; identity without a process group)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` as a list indexed by rank (e.g. per-rank RNG states for a checkpoint)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    """Destroy the process group if one exists (call once at the end of training)."""
    if is_dist():
        dist.destroy_process_group()


_CLOSED = ("connection reset", "connection closed", "broken pipe", "connection refused", "end of file")
_TIMEOUT = ("timed out", "timeout")


def peer_failure(error: BaseException, timeout_minutes: float | None = None) -> str | None:
    """Why a collective failed because of a peer, as a phrase for a sentence, or ``None`` for any other error.

    gloo raises a plain ``RuntimeError`` naming ``gloo/transport`` when a peer's socket closes (a peer killed, out
    of memory or crashed: noticed within milliseconds) and when no answer came within the process-group timeout;
    newer torch versions raise :class:`torch.distributed.DistError` subclasses, and NCCL names itself.
    ``timeout_minutes`` (``EXPERIMENT.DIST_TIMEOUT_MIN``) is named in the phrase for a timeout.
    """
    if not isinstance(error, RuntimeError):
        return None
    text = str(error).lower()
    dist_error = getattr(dist, "DistError", None)
    if not (("gloo" in text or "nccl" in text or "tcpstore" in text)
            or (dist_error is not None and isinstance(error, dist_error))):
        return None
    if any(k in text for k in _TIMEOUT):
        limit = f" (EXPERIMENT.DIST_TIMEOUT_MIN {timeout_minutes:g} min)" if timeout_minutes else ""
        return f"a peer did not answer within the process-group timeout{limit}: it hangs or is too slow"
    if any(k in text for k in _CLOSED):
        return "a peer closed its connection (killed, out of memory or crashed)"
    return "a collective failed on the process group"
