"""Every public function, class and method of the package has a docstring (read with ``ast``, nothing imported).

Public: a module-level function or class whose name does not start with ``_``, and a method (or nested class) of a
public class whose name does not start with ``_``; dunder methods, members of private classes and functions nested in
functions are not API and are not checked. A missing docstring is reported as ``path:line Qual.name``.

``python -m tests.test_docstrings`` prints the missing docstrings of the whole package, with a count per file
(exit status 1 when any is missing).
"""

from __future__ import annotations

import ast
import fnmatch
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mdistiller"

# The paths (relative to the repository root; a trailing "/" is a whole folder, recursively) whose public names must
# have a docstring: the whole package. `python -m tests.test_docstrings` lists what is missing, with a count per file.
CHECKED: frozenset[str] = frozenset({"mdistiller/"})

# Names that need no docstring because the name says everything, as ``fnmatch`` patterns over the qualified name
# (``Class.method``), each with its reason. Keep it short: anything with a choice in it gets a docstring.
ALLOWED: dict[str, str] = {
    "*.extra_repr": "torch's nn.Module hook that adds the module's settings to repr(); nothing else to say",
}


@dataclass(frozen=True)
class Missing:
    """A public definition without a docstring."""

    path: str
    line: int
    name: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.name}"


def public_definitions(source: str) -> Iterator[tuple[int, str, bool]]:
    """``(line, qualified name, has a docstring)`` of every public definition in ``source`` (see the module doc)."""

    def walk(body: list[ast.stmt], prefix: str) -> Iterator[tuple[int, str, bool]]:
        for node in body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) or node.name.startswith("_"):
                continue
            yield node.lineno, prefix + node.name, ast.get_docstring(node) is not None
            if isinstance(node, ast.ClassDef):
                yield from walk(node.body, f"{prefix}{node.name}.")

    yield from walk(ast.parse(source).body, "")


def allowed(name: str) -> bool:
    """Whether ``name`` matches an :data:`ALLOWED` pattern."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in ALLOWED)


def relative(path: Path) -> str:
    """``path`` relative to the repository root, with ``/`` separators."""
    return path.resolve().relative_to(ROOT).as_posix()


def package_files() -> list[Path]:
    """Every ``.py`` file of the package, sorted."""
    return sorted(PACKAGE.rglob("*.py"))


def is_checked(rel: str) -> bool:
    """Whether the repository path ``rel`` lies in :data:`CHECKED` (a listed file, or under a listed folder)."""
    return any(rel == entry or (entry.endswith("/") and rel.startswith(entry)) for entry in CHECKED)


def missing_docstrings(paths: Iterable[Path]) -> list[Missing]:
    """The public definitions of ``paths`` that have no docstring and are not :data:`ALLOWED`."""
    out = []
    for path in paths:
        for line, name, documented in public_definitions(path.read_text(encoding="utf-8")):
            if not documented and not allowed(name):
                out.append(Missing(relative(path), line, name))
    return out


def test_checked_paths_exist() -> None:
    """A renamed or moved file must not drop out of the check unnoticed."""
    absent = sorted(e for e in CHECKED if not ((ROOT / e).is_dir() if e.endswith("/") else (ROOT / e).is_file()))
    assert not absent, f"CHECKED names paths that do not exist: {', '.join(absent)}; update the set."


def test_allowlist_names_real_definitions() -> None:
    """Every :data:`ALLOWED` pattern matches a public definition of the package, so no entry is dead."""
    names = {name for path in package_files() for _, name, _ in public_definitions(path.read_text(encoding="utf-8"))}
    dead = sorted(p for p in ALLOWED if not any(fnmatch.fnmatchcase(n, p) for n in names))
    assert not dead, f"ALLOWED patterns that match no public definition: {', '.join(dead)}; remove them."


def test_walker_finds_exactly_the_public_definitions() -> None:
    """The walker reports public functions, classes and methods (nested public classes too) and skips private names,
    dunders, members of private classes and functions nested in functions."""
    source = '''
def documented():
    """Yes."""
def bare(): pass
async def bare_async(): pass
def _private(): pass
class Public:
    """Yes."""
    def __init__(self): pass
    def method(self): pass
    @property
    def prop(self):
        """Yes."""
    def _helper(self): pass
    class Inner:
        def deep(self): pass
class _Hidden:
    def method(self): pass
def outer():
    """Yes."""
    def nested(): pass
'''
    got = {name: documented for _, name, documented in public_definitions(source)}
    assert got == {"documented": True, "bare": False, "bare_async": False, "Public": True, "Public.method": False,
                   "Public.prop": True, "Public.Inner": False, "Public.Inner.deep": False, "outer": True}
    assert allowed("SiNGERAdapter.extra_repr") and not allowed("extra_repr_of")


def test_checked_files_have_docstrings() -> None:
    """Every public definition of the :data:`CHECKED` files has a docstring (or an :data:`ALLOWED` name)."""
    files = [p for p in package_files() if is_checked(relative(p))]
    assert files, "CHECKED selects no file of the package."
    missing = missing_docstrings(files)
    assert not missing, ("public definitions without a docstring (one accurate line is enough; cite the paper's "
                         "equation where one applies):\n" + "\n".join(map(str, missing)))


def main() -> int:
    """Print every missing docstring of the whole package and the count per file; 1 when any is missing."""
    missing = missing_docstrings(package_files())
    for m in missing:
        print(m)
    counts = Counter(m.path for m in missing)
    if counts:
        print(f"\n{len(missing)} missing in {len(counts)} files:")
        for path, n in sorted(counts.items()):
            print(f"{n:4d}  {path}{'' if is_checked(path) else '  (not in CHECKED)'}")
    else:
        print("every public definition of the package has a docstring.")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
