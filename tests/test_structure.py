"""The library's shape: subpackages in pipeline layers, each importing only the layers below it,
and no import cycle between modules."""
from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "posekd_lib"

#: The layers, lowest first; a layer's modules import (at module level) only lower layers' and
#: their own. ``distill``, ``evaluation`` and ``mcu`` share a floor and do not import each other.
LAYERS = {"config": 0, "data": 1, "distill": 2, "evaluation": 2, "mcu": 2, "models": 3, "train": 4,
          "runs": 5, "run": 6}
#: Imports made inside a function that reach up (read at call time, so they make no cycle):
#: a KD recipe reads its config file; the MAX78000 students' ``train_ai8x_student`` calls ``fit``.
UPWARD_CALLS = {("posekd_lib.train.recipes", "posekd_lib.runs.runconfig.parse"),
                ("posekd_lib.train.recipes", "posekd_lib.runs.runconfig.schema"),
                ("posekd_lib.models.ai8x_models", "posekd_lib.train")}


def module_name(path: Path, root: Path = LIB.parent) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_imports(path: Path, modules: set[str], root: Path = LIB.parent, inside: bool = False) -> set[str]:
    """The ``posekd_lib`` modules (dotted, absolute) that ``path`` imports, relative imports
    resolved; ``from pkg import x`` counts ``pkg.x`` where that is a module. Module-level imports
    only, or (``inside``) those inside functions only."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    out = set()
    for node in ast.walk(tree):
        if (id(node) in top) == inside:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            full = ".".join(base + ([node.module] if node.module else []))
            if full.split(".")[0] == "posekd_lib":
                out.update(f"{full}.{a.name}" if f"{full}.{a.name}" in modules else full for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "posekd_lib")
    return out


def library_graph(inside: bool = False) -> dict[str, set[str]]:
    """``{module: the library modules it imports}`` over every file of ``posekd_lib``."""
    files = {module_name(p): p for p in LIB.rglob("*.py")}
    return {m: module_imports(p, set(files), inside=inside) - {m} for m, p in files.items()}


def layer(module: str) -> str:
    return module.split(".")[1] if "." in module else "config"


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


def test_module_imports_resolves_both_spellings(tmp_path):
    pkg = tmp_path / "posekd_lib" / "mcu"
    pkg.mkdir(parents=True)
    f = pkg / "m.py"
    f.write_text("from posekd_lib.mcu.hardware import limits\nfrom . import ai8x\nfrom ..data.codecs import X\n"
                 "def g():\n    from posekd_lib import run\n")
    modules = {"posekd_lib.mcu.hardware", "posekd_lib.mcu.ai8x", "posekd_lib.data.codecs", "posekd_lib.run"}
    assert module_imports(f, modules, tmp_path) == {"posekd_lib.mcu.hardware", "posekd_lib.mcu.ai8x",
                                                    "posekd_lib.data.codecs"}
    assert module_imports(f, modules, tmp_path, inside=True) == {"posekd_lib.run"}


def test_library_is_layered_and_has_no_import_cycle():
    graph = library_graph()
    assert {"posekd_lib.mcu.max78000", "posekd_lib.data.datasets", "posekd_lib.distill.distiller"} <= set(graph)
    assert set(map(layer, graph)) == set(LAYERS)                # every module sits in a named layer
    upward = sorted((m, t) for m, ts in graph.items() for t in ts
                    if layer(t) != layer(m) and LAYERS[layer(t)] >= LAYERS[layer(m)])
    assert upward == [], f"imports that reach a layer not below their own: {upward}"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    inside = sorted((m, t) for m, ts in library_graph(inside=True).items() for t in ts
                    if LAYERS[layer(t)] > LAYERS[layer(m)])
    assert set(inside) == UPWARD_CALLS, f"imports inside functions that reach up: {inside}"


def test_nothing_edits_sys_path_the_package_is_installed():
    """make's setup installs the package (pip install -e .); no notebook, script or test patches sys.path."""
    repo = Path(__file__).resolve().parent.parent
    needle = "sys.path." + "insert"
    files = [p for ext in ("*.py", "*.ipynb") for p in repo.rglob(ext)
             if not any(part.startswith(".") for part in p.relative_to(repo).parts)
             and p.relative_to(repo).parts[0] not in ("runs", "build")]
    assert len(files) > 50
    offenders = [str(p.relative_to(repo)) for p in files if needle in p.read_text(encoding="utf-8")]
    assert offenders == []
    makefile = (repo / "Makefile").read_text()
    assert "pip install --quiet --no-input --no-deps -e ." in makefile
