"""Console entry points installed with the package: ``mdistiller-train``, ``mdistiller-lineval``,
``mdistiller-analyze``, ``mdistiller-export``, ``mdistiller-sync``. Each is a thin wrapper over the command of the
same name in ``tools/``, so both spellings take the same arguments::

    mdistiller-train --cfg configs/demo/singer.yaml          # = python tools/train.py --cfg ...
    mdistiller-lineval transfer RUN_DIR --dataset toy_scenes  # = python tools/lineval/transfer.py RUN_DIR ...
    mdistiller-lineval table RUN_A RUN_B                      # = python tools/lineval/table.py RUN_A RUN_B
    mdistiller-analyze artifacts --model dinov2_small_imgfocus  # = python tools/analyze.py artifacts ...
    mdistiller-export RUN_DIR --checkpoint last --out student.safetensors  # = python tools/export.py ...
    mdistiller-sync RUN_DIR --dry-run                         # = python tools/sync.py RUN_DIR --dry-run
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

__all__ = ["train", "lineval", "analyze", "export", "sync", "LINEVAL_COMMANDS", "INTERRUPTED", "exit_on_interrupt",
           "interruptible", "lineval_script"]

LINEVAL_COMMANDS = ("imagenet", "ade20k", "nyud", "transfer", "table")

#: the one line a command prints when Ctrl-C reaches it outside a training loop (which writes a checkpoint itself)
INTERRUPTED = "interrupted (Ctrl-C) before finishing; rerun the same command."


@contextlib.contextmanager
def exit_on_interrupt() -> Iterator[None]:
    """Turn a ``KeyboardInterrupt`` inside the block (Ctrl-C while torch and the models import, or while a model is
    built) into the one line :data:`INTERRUPTED` on stderr and exit status 130, instead of a traceback. The
    ``tools/*.py`` scripts wrap their imports and their ``main`` in it; the console entry points use
    :func:`interruptible`."""
    try:
        yield
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def interruptible(fn: Callable[..., int]) -> Callable[..., int]:
    """``fn`` run inside :func:`exit_on_interrupt` (for console entry points)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        with exit_on_interrupt():
            return fn(*args, **kwargs)

    return wrapper


@interruptible
def train(argv: list[str] | None = None) -> int:
    """``mdistiller-train``: :func:`mdistiller.engine.launch.main`."""
    from mdistiller.engine.launch import main

    return main(sys.argv[1:] if argv is None else argv, prog="mdistiller-train")


@interruptible
def export(argv: list[str] | None = None) -> int:
    """``mdistiller-export``: :func:`mdistiller.engine.export.main`."""
    from mdistiller.engine.export import main

    return main(sys.argv[1:] if argv is None else argv, prog="mdistiller-export")


@interruptible
def sync(argv: list[str] | None = None) -> int:
    """``mdistiller-sync RUN_DIR``: :func:`mdistiller.engine.wandb_sync.main` (every offline segment, in order)."""
    from mdistiller.engine.wandb_sync import main

    return main(sys.argv[1:] if argv is None else argv, prog="mdistiller-sync")


@interruptible
def lineval(argv: list[str] | None = None) -> int:
    """``mdistiller-lineval {imagenet,ade20k,nyud,transfer,table} ...``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in LINEVAL_COMMANDS:
        print(f"usage: mdistiller-lineval {{{','.join(LINEVAL_COMMANDS)}}} ARGS...  (e.g. mdistiller-lineval transfer "
              "RUN_DIR --dataset toy_scenes; add --help after the command for its options)",
              file=sys.stderr if argv[:1] not in (["-h"], ["--help"]) else sys.stdout)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return _lineval_main(argv[0], argv[1:], prog=f"mdistiller-lineval {argv[0]}")


def lineval_script(command: str) -> NoReturn:
    """The whole of ``tools/lineval/<command>.py``: the command line of ``command`` (one of
    :data:`LINEVAL_COMMANDS`) on ``sys.argv[1:]``, under the script's own name; Ctrl-C while torch imports or the
    probe runs is the one line :data:`INTERRUPTED` and exit status 130. Exits with the command's status."""
    with exit_on_interrupt():
        sys.exit(_lineval_main(command, None, prog=None))


def _lineval_main(command: str, argv: list[str] | None, prog: str | None) -> int:
    """Run lineval ``command`` on ``argv`` (``None``: ``sys.argv[1:]``); ``prog`` None names the ``tools/`` script."""
    if command == "table":
        from mdistiller.eval.table import main as table_main

        return table_main(argv, prog=prog)
    from mdistiller.eval.cli import main

    return main(command, argv, prog=prog)


@interruptible
def analyze(argv: list[str] | None = None) -> int:
    """``mdistiller-analyze``: :func:`mdistiller.analysis.cli.main` (the same command line as ``tools/analyze.py``)."""
    from mdistiller.analysis.cli import main

    return main(sys.argv[1:] if argv is None else argv, prog="mdistiller-analyze")
