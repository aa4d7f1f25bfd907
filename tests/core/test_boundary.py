"""The floor plan, checked on the source: who may import whom, no import cycles, no oversized modules.

Every `import x`, `from x import y` (where `y` may itself be a submodule: `from pai_distil import
synthetic`) and `importlib.import_module("literal")` in every .py file under pai_distil/ and jobs/
counts, at any depth: lazy imports inside functions (and under `if TYPE_CHECKING:`) are imports too.
Relative imports are resolved against the importing module. Each failure names file:line and the
import as written.

    jobs/ (pai_distil_jobs)      may import pai_distil.core, itself and third parties, nothing else of pai_distil
    pai_distil/                  never imports pai_distil_jobs
    pai_distil/core/             torch-free, and imports only pai_distil.core (and the standard library / light deps)
    pai_distil.synthetic,        leaves: imported only by pai_distil/cli/ and by the package itself
    pai_distil.emulator
    every project module         is on no import cycle, and is at most MAX_LINES lines
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"pai_distil": ROOT / "pai_distil", "pai_distil_jobs": ROOT / "jobs"}
ALIASES = {"jobs": "pai_distil_jobs"}  # the jobs/ folder is installed as pai_distil_jobs
HEAVY = ("torch", "transformers", "trl", "accelerate", "peft", "deepspeed", "vllm")
LEAVES = ("pai_distil.synthetic", "pai_distil.emulator")
LEAF_IMPORTERS = ("pai_distil.cli",)
MAX_LINES = 500


@dataclass(frozen=True)
class Import:
    path: Path  # the importing file
    module: str  # the importing module's dotted name
    line: int
    text: str  # the statement as written
    target: str  # the imported module's absolute dotted name (a submodule when `from pkg import submodule`)

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.text}"


def _module_name(path: Path) -> tuple[str, bool]:
    """(dotted name, is a package __init__) of a source file."""
    for top, base in PACKAGES.items():
        if path.is_relative_to(base):
            parts = [top, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                return ".".join(parts[:-1]), True
            return ".".join(parts), False
    raise AssertionError(f"{path} is outside the project packages")


@functools.cache
def files() -> dict[str, Path]:
    """Every project module by dotted name."""
    out = {}
    for base in PACKAGES.values():
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            out[_module_name(path)[0]] = path
    return out


def _canonical(name: str) -> str:
    top, _, rest = name.partition(".")
    top = ALIASES.get(top, top)
    return f"{top}.{rest}" if rest else top


def _is_project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str | None:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(base) - 1:
        return None  # beyond the top-level package
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _segment(source: str, node: ast.AST) -> str:
    text = ast.get_source_segment(source, node) or ast.unparse(node)
    return " ".join(text.split())


@functools.cache
def imports_of(path: Path) -> tuple[Import, ...]:
    """Every import in a file, anywhere in it, with its absolute target."""
    return _parse(path.read_text(encoding="utf-8"), path, *_module_name(path))


def _parse(source: str, path: Path, module: str, is_package: bool) -> tuple[Import, ...]:
    tree = ast.parse(source, filename=str(path))
    known = files()
    out: list[Import] = []

    def add(node, target):
        out.append(Import(path, module, node.lineno, _segment(source, node), _canonical(target)))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _resolve_relative(module, is_package, node.level, node.module)
                if base is None:
                    add(node, f"<relative import beyond the top package from {module}>")
                    continue
            else:
                base = node.module
            base = _canonical(base)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # `from pkg import submodule` imports the submodule; `from pkg import name` imports pkg
                add(node, sub if sub in known else base)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and _call_name(node.func) in ("import_module", "__import__")):
            add(node, node.args[0].value)
    return tuple(sorted(set(out), key=lambda i: (i.line, i.target)))


def _call_name(func: ast.AST) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def all_imports() -> list[Import]:
    return [i for path in files().values() for i in imports_of(path)]


def _report(what: str, bad: list[Import]) -> str:
    return f"{what} ({len(bad)}):\n  " + "\n  ".join(i.where() + f"   [-> {i.target}]" for i in bad)


def _owner(target: str) -> str:
    """The project module a target names: itself, or the longest known prefix (`pkg.name` -> `pkg`)."""
    known = files()
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return target


# -- the rules -------------------------------------------------------------------------------------


SAMPLE = """
import os, pai_distil.core.errors as errors
from pai_distil import core, synthetic
from . import sibling
from ..run import not_a_module
if TYPE_CHECKING:
    import torch.nn
def lazy():
    from pai_distil_jobs.models import models
    import importlib
    importlib.import_module("pai_distil.emulator.oss")
"""


def test_the_walk_sees_the_project():
    """Guards the guard: every kind of import is found, lazy and `from pkg import sub` alike."""
    names = files()
    assert len(names) > 50 and "pai_distil" in names and "pai_distil_jobs" in names and "pai_distil.core" in names
    found = [(i.line, i.target) for i in _parse(SAMPLE, ROOT / "pai_distil/core/sample.py", "pai_distil.core.sample", False)]
    assert found == [(2, "os"), (2, "pai_distil.core.errors"), (3, "pai_distil.core"), (3, "pai_distil.synthetic"),
                     (4, "pai_distil.core"), (5, "pai_distil.run"), (7, "torch.nn"),
                     (9, "pai_distil_jobs.models.models"), (10, "importlib"), (11, "pai_distil.emulator.oss")]
    assert _resolve_relative("a.b.c", False, 1, "d") == "a.b.d"
    assert _resolve_relative("a.b", True, 1, "d") == "a.b.d"
    assert _resolve_relative("a.b.c", False, 2, None) == "a"
    assert _resolve_relative("a", False, 2, "x") is None


def test_jobs_import_only_the_core_of_pai_distil():
    bad = [i for i in all_imports() if _within(i.module, "pai_distil_jobs")
           and _within(i.target, "pai_distil") and not _within(i.target, "pai_distil.core")]
    if bad:
        pytest.fail(_report("jobs/ imports pai_distil outside pai_distil.core", bad), pytrace=False)


def test_pai_distil_never_imports_the_jobs():
    bad = [i for i in all_imports() if _within(i.module, "pai_distil") and _within(i.target, "pai_distil_jobs")]
    if bad:
        pytest.fail(_report("pai_distil/ imports pai_distil_jobs", bad), pytrace=False)


def test_core_is_torch_free():
    bad = [i for i in all_imports() if _within(i.module, "pai_distil.core") and i.target.split(".")[0] in HEAVY]
    if bad:
        pytest.fail(_report(f"pai_distil/core/ imports a training library ({', '.join(HEAVY)})", bad), pytrace=False)


def test_core_imports_nothing_else_of_the_project():
    bad = [i for i in all_imports() if _within(i.module, "pai_distil.core")
           and (_is_project(i.target) or i.target.startswith("<")) and not _within(i.target, "pai_distil.core")]
    if bad:
        pytest.fail(_report("pai_distil/core/ imports the project outside pai_distil.core", bad), pytrace=False)


def test_synthetic_and_emulator_are_leaves():
    bad = []
    for i in all_imports():
        for leaf in LEAVES:
            if _within(i.target, leaf) and not _within(i.module, leaf) \
                    and not any(_within(i.module, p) for p in LEAF_IMPORTERS):
                bad.append(i)
    if bad:
        what = f"{' / '.join(LEAVES)} imported outside {', '.join(LEAF_IMPORTERS)} and themselves"
        pytest.fail(_report(what, bad), pytrace=False)


def import_graph() -> dict[str, dict[str, Import]]:
    """module -> {imported project module: the first import of it}, top-level and lazy imports alike."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in files()}
    for i in all_imports():
        target = _owner(i.target)
        if target in graph and target != i.module:
            graph[i.module].setdefault(target, i)
    return graph


def _cycles(graph: dict[str, dict[str, Import]]) -> list[tuple[list[str], list[str]]]:
    """(one cycle: a path back to its start, every module of its strongly connected component) per
    component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan, iteratively (deep graphs would overflow the recursion limit)
        work = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        while work:
            node, edges = work[-1]
            for w in edges:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for comp in components:  # the shortest way from the component's first module back to itself
        members, start = set(comp), comp[0]
        prev: dict[str, str] = {}
        frontier, seen, found = [start], {start}, None
        while frontier and found is None:
            nxt = []
            for u in frontier:
                for w in sorted(graph[u]):
                    if w == start:
                        found = u
                        break
                    if w in members and w not in seen:
                        seen.add(w)
                        prev[w] = u
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [found]
        while path[-1] != start:
            path.append(prev[path[-1]])
        cycles.append(([*reversed(path), start], comp))
    return cycles


def test_cycle_finder_finds_a_cycle():
    imp = Import(ROOT, "x", 1, "import y", "y")
    graph = {"a": {"b": imp}, "b": {"c": imp}, "c": {"a": imp, "d": imp}, "d": {}}
    assert _cycles(graph) == [(["a", "b", "c", "a"], ["a", "b", "c"])]
    assert _cycles({"a": {"b": imp}, "b": {}}) == []


def test_no_import_cycles():
    graph = import_graph()
    cycles = _cycles(graph)
    lines = []
    for cycle, comp in cycles:
        lines.append(" -> ".join(cycle))
        if len(comp) > len(cycle) - 1:
            lines.append(f"  (one cycle of {len(comp)} modules importing each other: {', '.join(comp)})")
        lines += [f"    {graph[a][b].where()}" for a, b in zip(cycle, cycle[1:])]
    if cycles:
        pytest.fail(f"import cycles among the project's modules ({len(cycles)}):\n  " + "\n  ".join(lines), pytrace=False)


def test_no_module_over_the_line_limit():
    long = {p: n for p in files().values() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    if long:
        pytest.fail(f"modules over {MAX_LINES} lines:\n  " + "\n  ".join(
            f"{p.relative_to(ROOT)}: {n} lines" for p, n in sorted(long.items())), pytrace=False)
