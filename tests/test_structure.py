"""The library's shape: module-level imports between ``posekd_lib`` modules form no cycle."""
from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "posekd_lib"


def module_imports(path: Path, in_package: bool = False) -> set[str]:
    """``posekd_lib`` modules and subpackages that ``path`` imports at module level (not inside
    functions). In a subpackage's file (``in_package``), ``from .x`` is a sibling (not counted)
    and ``from ..x`` is the library's ``x``."""
    top = 2 if in_package else 1                     # the relative level that means posekd_lib
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == top or (node.level == 0 and mod.startswith("posekd_lib")):
                base = mod.removeprefix("posekd_lib").lstrip(".")
                if base:
                    out.add(base.split(".")[0])
                else:                                  # from posekd_lib import ai8x / from . import x
                    out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("posekd_lib."))
    return out


def library_graph() -> dict[str, set[str]]:
    """Module-level imports between the library's top-level modules and subpackages (a subpackage
    is one node: the union of its files' imports)."""
    graph = {p.stem: module_imports(p) for p in LIB.glob("*.py") if p.stem != "__init__"}
    for pkg in (d for d in LIB.iterdir() if (d / "__init__.py").is_file()):
        graph[pkg.name] = set().union(*(module_imports(f, in_package=True) for f in pkg.glob("*.py")))
    return {k: {m for m in v if m in graph and m != k} for k, v in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_module_imports_reads_both_spellings(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from posekd_lib.hardware import limits\nfrom . import ai8x\nfrom .data import X\n"
                 "def g():\n    from posekd_lib import export\n")
    assert module_imports(f) == {"hardware", "ai8x", "data"}
    g = tmp_path / "sub.py"
    g.write_text("from .device import Device\nfrom ..hardware import limits\nfrom posekd_lib.data import X\n")
    assert module_imports(g, in_package=True) == {"hardware", "data"}


def test_library_has_no_import_cycle():
    graph = library_graph()
    assert {"ai8x", "distill"} <= set(graph)                        # subpackages are nodes too
    assert graph["max78000"] >= {"ai8x", "hardware"} and "max78000" not in graph["ai8x"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_nothing_edits_sys_path_the_package_is_installed():
    """make's setup installs the package (pip install -e .); no notebook, script or test patches sys.path."""
    repo = Path(__file__).resolve().parent.parent
    needle = "sys.path." + "insert"
    files = [p for ext in ("*.py", "*.ipynb") for p in repo.rglob(ext)
             if not any(part.startswith(".") or part in ("runs", "build") for part in p.relative_to(repo).parts)]
    assert len(files) > 50
    offenders = [str(p.relative_to(repo)) for p in files if needle in p.read_text(encoding="utf-8")]
    assert offenders == []
    makefile = (repo / "Makefile").read_text()
    assert "pip install --quiet --no-input --no-deps -e ." in makefile
