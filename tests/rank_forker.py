"""Start the ranks of a ``tools/train.py`` command as forks of one process that imported the project once.

A test of two ranks under torchrun pays three interpreter starts (the agent and two workers, several seconds each on
a small CPU) for every launch; this server pays one for all of them. Each rank is a fork with torchrun's environment
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) that runs
:func:`mdistiller.engine.launch.main`, so the code under test is the command line's; what torchrun's agent adds (it
forwards signals and ends the other workers when one fails) is not part of it. The parent computes nothing before
forking, so no thread or lock is copied half-way.

Protocol, one JSON object per line: the test writes ``{"argv": [...], "world": 2, "logs": DIR}``; the server answers
``{"pids": [...]}`` as soon as the ranks run, then ``{"codes": [...], "ended": [...]}`` (exit statuses and
``time.monotonic()`` at each exit, comparable with the test's own clock). Each rank's stdout and stderr go to
``DIR/rank<r>.out`` / ``.err``; ``DIR/rank<r>.json`` holds ``{"step": ...}`` when its ``Trainer.fit`` returned.
A rank leaves with ``os._exit`` once ``main`` returned, so its exit time excludes the interpreter's teardown.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdistiller.engine import launch  # noqa: E402
from mdistiller.engine.trainer import Trainer  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, argv: list[str], logs: Path) -> int:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    for fd, name in ((1, f"rank{rank}.out"), (2, f"rank{rank}.err")):
        target = os.open(logs / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    fit = Trainer.fit

    def recorded_fit(self, *args, **kwargs):
        try:
            return fit(self, *args, **kwargs)
        finally:
            (logs / f"rank{rank}.json").write_text(json.dumps({"step": self.step}))

    Trainer.fit = recorded_fit
    return launch.main(argv)


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        world, logs, argv = int(request["world"]), Path(request["logs"]), list(request["argv"])
        logs.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        pids = []
        for rank in range(world):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = _rank(rank, world, port, argv, logs)
                except BaseException:  # noqa: BLE001 - the traceback goes to the rank's .err file
                    import traceback

                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(int(code or 0))
            pids.append(pid)
        print(json.dumps({"pids": pids}), flush=True)
        ended: dict[int, tuple[int, float]] = {}
        while len(ended) < world:
            pid, status = os.wait()
            ended[pid] = (os.waitstatus_to_exitcode(status), time.monotonic())
        print(json.dumps({"codes": [ended[p][0] for p in pids], "ended": [ended[p][1] for p in pids]}), flush=True)


if __name__ == "__main__":
    serve()
