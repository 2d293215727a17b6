"""Analyse a ViT teacher or trained distillation runs: ``python tools/analyze.py <what> [options]``.

    artifacts        per-layer patch-norm artifacts and the layer recommendation   (--model NAME|RUN_DIR)
    nullspace        singular spectra of W̃_l (Fig. 8) and sub-layer changes (Fig. 7)   (--model)
    null-vs-reality  SiNGER / Jacobian / random bases on the real next block (Table 8+)   (--model)
    subspace         subspace energy of patches vs their norm (App. I, Fig. 13)   (--model)
    adapter          trained SiNGER adapters: Table 3, 5a, 5b, Fig. 6   (RUN_DIR)
    similarity       teacher-student Gram distance and CKA of several runs (Table 2)   (RUN_DIR ...)
    figures          norm / PCA / similarity maps per image (Fig. 2, 9, 11, 12)   (RUN_DIR ...)

Each prints its table (``--json``: the JSON instead) and writes ``<what>.json``, ``<what>.txt`` and PNG figures into
``RUN_DIR/analysis/`` (the first run directory), ``output/analysis/<model>/`` for a model name, or ``--out``.
Results with emulated artifacts (``--emulate LAYER`` or a run trained with them) say "emulated artifacts".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mdistiller.analysis.commands import COMMANDS, UsageError
from mdistiller.analysis.commands.base import check_positive
from mdistiller.analysis.commands.options import parse_kv, parse_patch

__all__ = ["build_parser", "call_arguments", "main", "parse_args"]

#: the options whose value the typed ``run(...)`` takes under another name or in another form: destination →
#: (keyword argument, conversion); every other option's destination is the keyword argument itself
CONVERSIONS: dict[str, tuple[str, Callable[[Any], Any] | None]] = {
    "model_kwargs": ("model_kwargs", parse_kv),
    "patch": ("patch", parse_patch),
    "image_index": ("image_indices", None),
    "no_principal": ("principal", lambda v: not v),
    "no_figures": ("figures", lambda v: not v),
}
#: options of the command line itself, not of the analysis (``what``: the sub-command; ``json``: what to print)
CLI_ONLY = ("what", "json")
#: options every sub-command accepts (the common ones) that a command's analysis does not use
UNUSED: dict[str, tuple[str, ...]] = {"figures": ("batch_size",)}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/analysis or output/analysis/<model>)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the text table")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--wandb", action="store_true",
                   help="also log the report and its figures to wandb (a run of its own in the group of the (first) "
                        "run directory's training run, job type analysis) and the figures to its TensorBoard")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The analysis command line: one sub-command per entry of :data:`COMMANDS`, its options and the common ones
    (``--out``, ``--json``, ``--no-figures``, ``--batch-size``, ``--wandb``)."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True, metavar="<what>")
    for command in COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help)
        command.add_arguments(p)
        _common(p)
    return ap


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """Parse the analysis command line (``sys.argv[1:]`` when ``argv`` is ``None``)."""
    return build_parser(prog).parse_args(argv)


def call_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of the chosen command's typed ``run(...)`` from parsed ``args`` (:data:`CONVERSIONS`
    applied; :data:`CLI_ONLY` and :data:`UNUSED` options left out). Raises ``ValueError`` for an option string that
    does not parse (``--model-kwargs``, ``--patch``)."""
    skip = set(CLI_ONLY) | set(UNUSED.get(args.what, ()))
    kwargs = {}
    for dest, value in vars(args).items():
        if dest in skip:
            continue
        name, convert = CONVERSIONS.get(dest, (dest, None))
        kwargs[name] = convert(value) if convert is not None and value is not None else value
    return kwargs


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run one analysis command: print its tables (``--json``: its JSON) and the files written; returns the exit
    status (0; 2 for an option value that cannot work, before any compute; 1 for a missing or unusable input), the
    error as one line ``error: ...`` on stderr."""
    args = parse_args(argv, prog)
    try:
        check_positive(vars(args))  # also the common --batch-size of a command that does not use it
        result = COMMANDS[args.what].function(**call_arguments(args))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, KeyError, TypeError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    if args.json:
        print(result.json.read_text())
    else:
        print(result.format())
        figures = result.figures
        print(f"written: {result.json}, {result.text}" + (f" and {len(figures)} figures" if figures else ""))
    return 0
