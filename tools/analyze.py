#!/usr/bin/env python
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/analysis or output/analysis/<model>)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the text table")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--wandb", action="store_true",
                   help="also log the report and its figures to wandb (a run of its own in the group of the (first) "
                        "run directory's training run, job type analysis) and the figures to its TensorBoard")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mdistiller.analysis.commands import COMMANDS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True, metavar="<what>")
    for command in COMMANDS.values():
        p = sub.add_parser(command.name, help=command.help)
        command.add_arguments(p)
        _common(p)
    return ap.parse_args(argv)


def _out_dir(args: argparse.Namespace) -> Path:
    from mdistiller.analysis.inputs import is_run_dir

    if args.out:
        return Path(args.out)
    first = getattr(args, "run_dir", None) or (getattr(args, "run_dirs", None) or [None])[0]
    if first is None and is_run_dir(args.model):
        first = args.model
    if first is not None:
        return Path(first) / "analysis"
    return Path("output/analysis") / Path(args.model).name


def build_report(args: argparse.Namespace) -> dict:
    """Run the chosen analysis (the library does the work; this only dispatches)."""
    from mdistiller.analysis.commands import run_report

    return run_report(args.what, args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mdistiller.analysis.commands import format_report, save_report, write_figures
    from mdistiller.analysis.commands.base import UsageError, check_args

    try:
        check_args(args)
        report = build_report(args)
        out = _out_dir(args)
        figures = [] if args.no_figures else write_figures(report, out)
        files = save_report(report, out, figures)
        if args.wandb:
            from mdistiller.engine.dashboards import log_analysis

            first = getattr(args, "run_dir", None) or (getattr(args, "run_dirs", None) or [None])[0]
            log_analysis(first or getattr(args, "model", None), report["command"], files["json"], figures)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, KeyError, TypeError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    if args.json:
        print(files["json"].read_text())
    else:
        print(format_report(report))
        print(f"written: {files['json']}, {files['text']}" + (f" and {len(figures)} figures" if figures else ""))
    return 0


if __name__ == "__main__":
    from mdistiller.cli import exit_on_interrupt

    with exit_on_interrupt():  # Ctrl-C while torch imports: one line, exit 130
        sys.exit(main())
