"""The layering of docs/architecture.md holds: every module imports only packages of lower layers (or its own
package), imports inside functions included; ``mdistiller/__init__.py`` is the composition root and exempt."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mdistiller"
LAYERS = {
    "registry": 0, "fileio": 0, "hooks": 0, "lazy": 0,
    "config": 1,
    "singer": 2, "dataset": 2,
    "models": 3,
    "distillers": 4,
    "engine": 5,
    "eval": 6, "analysis": 6, "bench": 6, "jobs": 6,
    "api": 7, "study": 7, "cli": 7,
}


def imported_units(path: Path, package: Path = PACKAGE) -> set[str]:
    """Top-level ``mdistiller`` units (package or module name) that ``path`` imports anywhere in its body."""
    parts = path.relative_to(package).with_suffix("").parts
    here = ["mdistiller", *parts[:-1]]  # the package a relative import starts from
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                names = [".".join([*base, node.module])] if node.module else [".".join([*base, a.name])
                                                                             for a in node.names]
            else:
                names = [node.module or ""]
        out |= {n.split(".")[1] for n in names if n.startswith("mdistiller.")}
    return out


def test_every_unit_has_a_layer() -> None:
    units = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.glob("*") if p.suffix == ".py"
             or (p / "__init__.py").is_file()}
    assert units - {"__init__"} == set(LAYERS), "add the new module to LAYERS here and to docs/architecture.md"


def test_imports_go_down_the_layers() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if unit == "__init__":
            continue
        for target in imported_units(path) - {unit}:
            if LAYERS[target] >= LAYERS[unit]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)} (layer {LAYERS[unit]}) imports mdistiller.{target} "
                             f"(layer {LAYERS[target]})")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    fake = tmp_path / "mdistiller" / "engine" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from . import data\nimport mdistiller.eval.cli as c\n\n\ndef f():\n"
                    "    from ..analysis import render\n    from mdistiller.bench.flops import g\n")
    assert imported_units(fake, tmp_path / "mdistiller") == {"engine", "eval", "analysis", "bench"}
    assert "dataset" in imported_units(PACKAGE / "engine" / "trainer.py")  # imported inside Trainer.__init__
