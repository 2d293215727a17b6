"""The layering of docs/architecture.md holds: every module imports only packages of lower layers (or its own
package), imports inside functions included; ``mdistiller/__init__.py`` (the composition root) and
``mdistiller/__main__.py`` (``python -m mdistiller COMMAND``) are exempt."""

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
    assert units - {"__init__", "__main__"} == set(LAYERS), ("add the new module to LAYERS here and to "
                                                            "docs/architecture.md")


def test_imports_go_down_the_layers() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if unit in ("__init__", "__main__"):  # the composition root and the command dispatcher
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


# ---- no import circle inside a package (imports inside functions included)
def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """``{module: modules it imports}`` for every ``.py`` file under ``root``, the folder of the package named
    ``package`` (``mdistiller/analysis`` ↔ ``mdistiller.analysis``), read with ``ast``: imports anywhere in a file
    (inside functions too), relative ones resolved. ``from P import n`` is an edge to the module ``P.n`` when that is
    a module under ``root``, else to ``P``; edges leave out modules outside ``root`` and the implicit import of a
    parent package's ``__init__``."""
    def name_of(path: Path) -> str:
        parts = path.relative_to(root).with_suffix("").parts
        return ".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])

    files = {name_of(p): p for p in sorted(root.rglob("*.py"))}

    def known(dotted: str) -> str | None:  # the longest prefix of ``dotted`` that is a module under root
        parts = dotted.split(".")
        return next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in files), None)

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        edges: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {known(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                edges |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else known(base) for a in node.names}
        graph[module] = {e for e in edges if e is not None and e != module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: every strongly connected component of more than one module (Tarjan's
    algorithm), each as its sorted module names, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_no_import_cycle() -> None:
    """No import circle anywhere in the package, imports inside functions included (a package's ``__init__.py``
    counts as the package: a module importing its own package while the package imports it is a circle)."""
    cycles = find_cycles(import_graph(PACKAGE, "mdistiller"))
    assert not cycles, "import circles: " + "; ".join(" ↔ ".join(c) for c in cycles)
    commands = import_graph(PACKAGE / "analysis" / "commands", "mdistiller.analysis.commands")
    assert "mdistiller.analysis.commands.options" in commands["mdistiller.analysis.commands.registry"]


def test_the_cycle_finder_sees_function_level_relative_and_long_circles(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {"__init__.py": "from .a import x\n",  # the package → a, but nothing imports the package: no circle
             "a.py": "import os\n\n\ndef f():\n    from . import b\n",  # a → b inside a function
             "b.py": "from pkg.sub import c\n",  # b → sub.c (a module, not the package sub)
             "sub/__init__.py": "",
             "sub/c.py": "from ..a import f\n",  # c → a: the circle a → b → c → a
             "d.py": "from . import e\nimport pkg.a\n", "e.py": "from .d import g\n",  # d ↔ e
             "f.py": "from . import a\n"}  # into a circle, not part of it
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg, "pkg")
    assert graph["pkg"] == {"pkg.a"} and graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.sub"] == set()
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"], ["pkg.d", "pkg.e"]]


# ------------------------------------------------------------------------------------------------ name-based links
# Every "package.module:function" link is declared in LINKS of mdistiller/hooks.py with the modules that call it;
# these tests treat a link as an import of its callers. Self-contained: only LAYERS and PACKAGE above are shared.
import re  # noqa: E402

from mdistiller.hooks import KINDS, LINKS, Link  # noqa: E402

REPO = PACKAGE.parent
#: the layer of the command-line scripts in tools/ (docs/architecture.md)
TOOLS_LAYER = 8
LINK_STRING = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def _layer(module: str) -> int:
    """The layer of dotted ``module`` (``mdistiller.<unit>...`` or ``tools....``)."""
    parts = module.split(".")
    if parts[0] == "tools":
        return TOOLS_LAYER
    assert parts[0] == "mdistiller" and len(parts) > 1, f"{module} is neither in mdistiller/ nor in tools/"
    return LAYERS[parts[1]]


def _source(module: str) -> Path:
    """The file of dotted ``module`` in this repository (a package's ``__init__.py``)."""
    base = REPO.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _calls(path: Path, name: str) -> list[ast.Call]:
    """The calls of a function called ``name`` (plain or as an attribute) in ``path``."""
    return [n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.Call)
            and (getattr(n.func, "id", None) == name or getattr(n.func, "attr", None) == name)]


def link_violations(links: tuple[Link, ...] | list[Link]) -> list[str]:
    """What breaks the layering in ``links``: a job target one of its callers could not import, or a hook or check
    that does not go up the layers from its caller (a plain import would do)."""
    wrong = []
    for link in links:
        for caller_module in link.callers:
            caller, target = _layer(caller_module), _layer(link.module)
            same_unit = caller_module.split(".")[:2] == link.module.split(".")[:2]
            importable = same_unit or target < caller
            if link.kind == "job" and not importable:
                wrong.append(f"job target {link.target} (layer {target}) is named by {caller_module} (layer "
                             f"{caller}), which may not import it")
            if link.kind in ("hook", "check") and importable:
                wrong.append(f"{link.kind} {link.target} (layer {target}) lies below its caller {caller_module} "
                             f"(layer {caller}): import it instead")
    return wrong


def test_links_are_declared_once_with_a_known_kind() -> None:
    assert KINDS == ("hook", "check", "job") and LINKS and all(link.kind in KINDS and link.callers for link in LINKS)
    keys = [(link.kind, link.target) for link in LINKS]
    assert len(keys) == len(set(keys)), "a link is declared twice"
    names = [link.name for link in LINKS if link.kind == "hook"]
    assert all(names) and len(names) == len(set(names)), "every hook needs a name of its own"
    assert all(LINK_STRING.fullmatch(link.target) for link in LINKS)


def test_links_go_the_way_the_layers_allow() -> None:
    """(a) A link counts as an import of its caller: a job target lies in a layer its caller may import; a hook or
    check is the declared way up, so it lies above its caller."""
    assert not (wrong := link_violations(LINKS)), "\n".join(wrong)
    # the rule can fail: a job that calls upward, a hook that points down
    bad = [Link("job", "mdistiller.study:main", ("mdistiller.engine.trainer",)),
           Link("hook", "mdistiller.fileio:atomic_write", ("mdistiller.engine.trainer",), name="x")]
    assert len(link_violations(bad)) == 2


def test_every_declared_link_resolves_and_its_caller_uses_it() -> None:
    from mdistiller.hooks import resolve

    for link in LINKS:
        for caller in link.callers:
            assert _source(caller).is_file(), f"{link.target}: caller {caller} does not exist"
        assert callable(resolve(link.target)), link.target
    for link in LINKS:
        path = _source(link.callers[0])
        if link.kind == "hook":
            asked = {c.args[0].value for c in _calls(path, "get_hook") if c.args and isinstance(c.args[0],
                                                                                                 ast.Constant)}
            assert link.name in asked, f"{link.callers[0]} is declared to ask for hook '{link.name}' but never does"
        if link.kind == "check":
            assert _calls(path, "config_checks"), f"{link.callers[0]} is declared to run config checks but never does"
    for path in sorted(PACKAGE.rglob("*.py")):  # whoever asks for a hook is its declared caller
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for call in _calls(path, "get_hook"):
            if call.args and isinstance(call.args[0], ast.Constant):
                name = call.args[0].value
                assert any(link.name == name and module in link.callers for link in LINKS if link.kind == "hook"), \
                    f"{module} asks for hook '{name}', which mdistiller/hooks.py does not declare for it"


def link_strings(path: Path) -> list[tuple[int, str]]:
    """The ``"package.module:function"`` string literals of ``path`` (line, text)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and LINK_STRING.fullmatch(n.value)
            and "." in n.value.partition(":")[0] + n.value]  # a dotted module: not "a:b" dictionary text


def test_every_module_function_string_is_declared() -> None:
    """(b) No hidden link: each ``"module:function"`` literal in mdistiller/ and tools/ is declared, with the module
    that holds it among the link's callers."""
    callers = {(link.target, caller) for link in LINKS for caller in link.callers}
    files = sorted([*PACKAGE.rglob("*.py"), *(REPO / "tools").rglob("*.py")])
    found = [(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"), line, text)
             for p in files if p != PACKAGE / "hooks.py" for line, text in link_strings(p)]
    assert "mdistiller.engine.launch:main" in {t for *_, t in found}, "the scan finds the demo's job targets"
    undeclared = [f"{m}:{line}: '{text}'" for m, line, text in sorted(found) if (text, m) not in callers]
    assert not undeclared, ("declare these links in LINKS of mdistiller/hooks.py, with the module holding the string "
                            "as a caller:\n" + "\n".join(undeclared))


#: calls that run code in another process or from a file path
RUNNERS = {f"subprocess.{f}" for f in ("run", "Popen", "call", "check_call", "check_output", "getoutput",
                                       "getstatusoutput")} | {
    "os.system", "os.popen", "os.execv", "os.execve", "os.execvp", "os.execvpe", "os.execl", "os.execlp",
    "os.spawnv", "os.spawnl", "os.posix_spawn", "os.posix_spawnp", "runpy.run_path", "runpy.run_module",
    "importlib.util.spec_from_file_location"}
#: a string naming the tools/ folder or a script in it, alone or in a shell command line; or a tools.* module
TOOL_SCRIPT = re.compile(r"(.*[\s/])?tools(/\S*)?(\s.*)?|tools\.[\w.]+")


def tool_runs(source: str) -> list[str]:
    """Where ``source`` runs a tools/ script: a string naming one (``"tools/x.py"``, ``"tools"``, ``"tools.x"``)
    that reaches a process-starting call (:data:`RUNNERS`) or a function of the module that makes one, directly or
    through a local variable of the calling function."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {(a.asname or a.name).split(".")[0]: (a.asname and a.name) or a.name.split(".")[0]
                        for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            aliases |= {a.asname or a.name: f"{node.module}.{a.name}" for a in node.names}

    def dotted(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    runners = set(RUNNERS)
    while True:  # functions of this module that start a process are runners too
        more = {f.name for f in functions if f.name not in runners and any(
            isinstance(c, ast.Call) and dotted(c.func) in runners for c in ast.walk(f))}
        if not more:
            break
        runners |= more

    if not any(isinstance(c, ast.Call) and dotted(c.func) in RUNNERS for c in ast.walk(tree)):
        return []

    def assignments(scope: ast.AST) -> dict[str, list[ast.expr]]:
        out: dict[str, list[ast.expr]] = {}
        for a in ast.walk(scope):
            targets = a.targets if isinstance(a, ast.Assign) else [a.target] if isinstance(
                a, ast.AugAssign | ast.AnnAssign) else []
            for t in targets:
                if isinstance(t, ast.Name) and a.value is not None:
                    out.setdefault(t.id, []).append(a.value)
        return out

    def strings(node: ast.AST, names: dict[str, list[ast.expr]], seen: set[str]) -> list[str]:
        out = []
        for n in ast.walk(node):
            if isinstance(n, ast.Constant) and isinstance(n.value, str):
                out.append(n.value)
            elif isinstance(n, ast.Name) and n.id not in seen:
                seen.add(n.id)
                for value in names.get(n.id, []):
                    out += strings(value, names, seen)
        return out

    found = []
    top = ast.Module(body=[st for st in tree.body if not isinstance(st, ast.FunctionDef | ast.AsyncFunctionDef
                                                                     | ast.ClassDef)], type_ignores=[])
    for scope in [top, *functions]:
        names = assignments(scope)
        for call in (c for c in ast.walk(scope) if isinstance(c, ast.Call) and dotted(c.func) in runners):
            for arg in [*call.args, *(k.value for k in call.keywords)]:
                found += [f"line {call.lineno}: {s!r}" for s in strings(arg, names, set()) if TOOL_SCRIPT.fullmatch(s)]
    return sorted(set(found))


def test_the_tool_run_scan_sees_lists_variables_and_wrappers() -> None:
    old_gpu_check = ('import subprocess\n\ndef _run(cmd, timeout):\n    return subprocess.run(cmd, timeout=timeout)\n\n'
                     'def part(s):\n    base = [s.python, "tools/train.py", "--cfg", "x"]\n'
                     '    _run(base + ["--resume", "none"], 10)\n')
    assert tool_runs(old_gpu_check) == ["line 8: 'tools/train.py'"]
    assert tool_runs('import os as o\no.system("python tools/bench.py --tiny")\n') == [
        "line 2: 'python tools/bench.py --tiny'"]
    assert tool_runs('from runpy import run_path\nrun_path("tools/demo.py")\n') == ["line 2: 'tools/demo.py'"]
    loader = ('import importlib.util\nfrom pathlib import Path\nscript = Path(__file__).parent / "tools" / "a.py"\n'
              'spec = importlib.util.spec_from_file_location("x", script)\n')
    assert tool_runs(loader) == ["line 4: 'tools'"]
    assert tool_runs('import subprocess\nsubprocess.run(["python", "-m", "mdistiller", "bench"])\n') == []


def test_no_module_of_the_package_runs_a_tools_script() -> None:
    """(c) The package never runs ``tools/*.py``: its command lines live in the package (``python -m mdistiller``)."""
    wrong = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(REPO))
        if (runs := tool_runs(path.read_text(encoding="utf-8"))):
            wrong[rel] = runs
    assert not wrong, f"these modules run tools/ scripts; call the package's command line instead: {wrong}"
