"""The analysis commands (``mdistiller-analyze`` / ``tools/analyze.py``), one module per command, listed in
:data:`COMMANDS`. Importing this package is light (no torch): a command's module is imported when it runs.

Each command's module holds its typed entry point ``run(...)`` — keyword arguments named like the command line's
options, returning an :class:`~.output.AnalysisResult` (the report and the files written) and raising an exception
with a one-sentence message (:class:`~.base.UsageError` for an option value that cannot work, before any compute;
``FileNotFoundError`` / ``ValueError`` for a missing or unusable input) — its computation (``<command>_report``),
its text tables (``format_text``) and its figures (``plot``)::

    from mdistiller.analysis.commands import artifacts
    result = artifacts.run("vit_small", weights="random", images="toy", num_images=4, out="output/a")
    result.json, result.figures, result.report["recommendation"]

The keywords several commands share are typed once: every ``run`` takes ``out``, ``figures`` and ``wandb``
(:class:`~.base.OutputOptions`), and a model-level command's ``run(model, ..., **options)`` also the model and
image keywords (:class:`~.base.ModelOptions`; together :class:`~.base.ModelCommandOptions`) and runs its report
through :func:`~.model_level.run_on_model`. :attr:`Command.keywords` lists every keyword of a ``run``.

Adding an analysis means adding a module here (``run``, ``format_text``, ``plot``), its options in
:mod:`.options` and its name in :data:`.registry.NAMES`; the command line (:mod:`mdistiller.analysis.cli`) loops
over the registry for its sub-commands.

Modules and their imports (no circle): :mod:`.options` (argparse only) and :mod:`.base` (the :class:`Command`,
checks, shared keywords, model inputs) import nothing of this package; :mod:`.registry` imports both;
:mod:`.output` imports :mod:`.registry`; :mod:`.model_level` imports :mod:`.base` and :mod:`.output`; the command
modules import :mod:`.base`, :mod:`.output` and :mod:`.model_level`; this ``__init__`` only re-exports.
"""

from __future__ import annotations

from .base import Command, ModelCommandOptions, ModelOptions, OutputOptions, UsageError
from .output import AnalysisResult, format_report, save_report, write_figures
from .registry import COMMANDS, NAMES

__all__ = ["COMMANDS", "NAMES", "AnalysisResult", "Command", "ModelCommandOptions", "ModelOptions", "OutputOptions",
           "UsageError", "format_report", "save_report", "write_figures"]
