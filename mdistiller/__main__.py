"""``python -m mdistiller COMMAND [ARGS...]``: every command line of the package, from a clone or an installed package.

    python -m mdistiller train --cfg configs/demo/singer.yaml       # = python tools/train.py ... (mdistiller-train)
    python -m mdistiller lineval transfer RUN_DIR --dataset toy_scenes
    python -m mdistiller bench --tiny                               # = python tools/bench.py --tiny
    python -m mdistiller gpu-check --device cpu --tiny              # = python tools/gpu_check.py --device cpu --tiny
    torchrun --nproc-per-node 8 -m mdistiller train --cfg ...       # one process per GPU

The ``tools/*.py`` scripts are thin wrappers over the same functions, so both spellings take the same arguments.
Like ``mdistiller/__init__.py`` this entry point stands outside the layers (docs/architecture.md): it may import
any of them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from mdistiller import cli
from mdistiller.cli import exit_on_interrupt


def _bench(argv: list[str]) -> int:
    """``bench``: :func:`mdistiller.bench.cli.main` (it prints its result; the status is 0, or 2 for a bad option)."""
    from mdistiller.bench.cli import main

    main(argv, prog="python -m mdistiller bench")
    return 0


def _gpu_check(argv: list[str]) -> int:
    """``gpu-check``: :func:`mdistiller.bench.gpu_check.main`."""
    from mdistiller.bench.gpu_check import main

    return main(argv, prog="python -m mdistiller gpu-check")


#: command → function of its arguments returning the exit status
COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "train": cli.train, "lineval": cli.lineval, "analyze": cli.analyze, "export": cli.export, "sync": cli.sync,
    "bench": _bench, "gpu-check": _gpu_check,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``COMMAND ARGS...``; without a known command print the usage (exit 0 for ``-h``/``--help``, else 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        usage = (f"python -m mdistiller {{{','.join(COMMANDS)}}} ARGS... (add --help after the command for its "
                 "options)")
        if argv[:1] in (["-h"], ["--help"]):
            print(f"usage: {usage}")
            return 0
        problem = f"unknown command '{argv[0]}'" if argv else "no command given"
        print(f"error: {problem}; run {usage}.", file=sys.stderr)
        return 2
    return int(COMMANDS[argv[0]](argv[1:]) or 0)


if __name__ == "__main__":
    with exit_on_interrupt():  # Ctrl-C while torch imports: one line, exit 130
        sys.exit(main())
