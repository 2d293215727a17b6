"""Every name-based link of the package, declared in this one place (:data:`LINKS`), and their one loader.

A *link* is a function that one module reaches by a ``"package.module:function"`` string instead of an import:

* ``hook``: a lower layer calls into an upper one without importing it (the trainer draws its dashboard figures with
  the analysis package through the ``run_figures`` hook, :func:`get_hook`);
* ``check``: a config check of a layer above ``mdistiller.config``, run in declaration order by
  ``mdistiller.config.validate_config`` (:func:`config_checks`);
* ``job``: a command the process pool runs in a child process (``mdistiller.jobs.Job(target=...)``), named by a
  string because a job crosses a process boundary (``mdistiller.jobs`` resolves it in the worker).

:func:`resolve`, the one loader of such strings, imports a target's module only when the link is first used and
refuses a string that is not declared here, so no module reaches another by a name the architecture test cannot
see. ``tests/test_architecture.py`` reads :data:`LINKS`: a link counts as an import of each of its ``callers`` (a
job target must lie in a layer the caller may import; hooks and checks are the declared way up), every
``"module:function"`` string in ``mdistiller/`` and ``tools/`` must be declared with the module holding it as a
caller, and every declared target must exist. This module imports
no other module of the package (no yacs, no torch), so ``import mdistiller`` stays instant.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "LINKS", "Link", "config_checks", "declared", "get_hook", "hook_target", "require_declared",
           "resolve", "targets"]

#: the kinds of link, see the module docstring
KINDS = ("hook", "check", "job")


@dataclass(frozen=True)
class Link:
    """One declared link: its ``kind`` (:data:`KINDS`), its ``target`` ``"package.module:function"``, the
    ``callers`` (dotted modules, ``tools.*`` for the scripts) that reach it by name: the module asking for a hook,
    ``mdistiller.config`` for the checks, the modules that name a job target in a ``Job``; and for a hook the
    ``name`` its caller asks for."""

    kind: str
    target: str
    callers: tuple[str, ...]
    name: str = ""

    @property
    def module(self) -> str:
        """The dotted module of :attr:`target`."""
        return self.target.partition(":")[0]


LINKS: tuple[Link, ...] = (
    # the trainer's dashboard figures, drawn by the analysis package (imported on first use)
    Link("hook", "mdistiller.analysis.commands.figures:run_figures", ("mdistiller.engine.trainer",),
         name="run_figures"),
    # config checks that need the layers above mdistiller.config (run in this order; imported only when they run)
    Link("check", "mdistiller.distillers.build:check_config_against_models", ("mdistiller.config",)),
    Link("check", "mdistiller.dataset:check_dataset_config", ("mdistiller.config",)),
    Link("check", "mdistiller.dataset.device_decode:check_decode_config", ("mdistiller.config",)),
    # the commands the demo's and the study's process pool runs (mdistiller.jobs resolves them in its workers)
    Link("job", "mdistiller.engine.launch:main", ("tools.demo", "mdistiller.study.jobs")),
    Link("job", "mdistiller.eval.probing:probe_job", ("tools.demo", "mdistiller.study.jobs")),
)


def targets(kind: str | None = None) -> list[str]:
    """The declared targets of ``kind`` (every kind when ``None``), in declaration order."""
    return [link.target for link in LINKS if kind is None or link.kind == kind]


def declared(target: str, kind: str | None = None) -> bool:
    """Whether ``target`` (``"package.module:function"``) is declared, as a link of ``kind`` when one is given."""
    return target in targets(kind)


def hook_target(name: str) -> str | None:
    """The target of the hook called ``name``, or ``None`` when no hook of that name is declared."""
    return next((link.target for link in LINKS if link.kind == "hook" and link.name == name), None)


def require_declared(path: str, kind: str | None = None) -> None:
    """Raise ``ValueError`` (one sentence) unless ``path`` is a declared link (of ``kind``, when given)."""
    if not declared(path, kind):
        what = f"{kind} target" if kind else "link"
        instead = ", or pass the function itself" if kind == "job" else ""
        raise ValueError(f"'{path}' is not a declared {what}; declare it in LINKS of mdistiller/hooks.py with the "
                         f"module that calls it{instead}.")


def resolve(path: str) -> Callable[..., Any]:
    """The function at the declared link ``"package.module:function"``, its module imported now."""
    require_declared(path)
    module, _, func = path.partition(":")
    return getattr(importlib.import_module(module), func)


def config_checks() -> list[str]:
    """The declared config checks (``"module:function"``, called with the config; raise ``ConfigError``), in order."""
    return targets("check")


def get_hook(name: str) -> Callable[..., Any] | None:
    """The function declared for hook ``name`` (its module imported now), or ``None`` when none is declared."""
    path = hook_target(name)
    return resolve(path) if path is not None else None
