"""No module of asr/ imports one that imports it back, directly or through others.

Every `import` counts, at module level or inside a function (a lazy import is still a loop a
reader has to untangle). What Python does on its own does not: importing `a.b.c` first runs the
package `a.b`'s `__init__`, and a package that re-exports its modules is the ordinary shape of
a package, not a circle. A module that imports its own package by name is counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import asr

ROOT = Path(asr.__file__).parent


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """module name -> the modules of `package` it imports (anywhere in its file), for every
    .py file under `root` (the folder of `package`)."""
    modules = {}
    for path in root.rglob("*.py"):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path

    def owner(name: str) -> str | None:  # the module a dotted name lives in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(owner(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1 more
                    here = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        here = here.rpartition(".")[0]
                    base = f"{here}.{base}" if base else here
                for a in node.names:  # `from pkg import module` imports that module
                    targets.add(owner(f"{base}.{a.name}") if f"{base}.{a.name}" in modules else owner(base))
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def find_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_asr_has_no_import_circles():
    graph = import_graph(ROOT, "asr")
    assert len(graph) > 40  # every module was read (a walk of the wrong folder finds nothing to loop)
    assert "asr.decode.beam.search" in graph and "asr.decode.beam.flat" in graph["asr.decode.beam.search"]
    assert find_circles(graph) == []


def test_the_walk_finds_circles_direct_lazy_through_others_and_via_the_package(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import c\n")  # a lazy import counts
    (pkg / "c.py").write_text("import pkg.a\n")  # a -> b -> c -> a
    (pkg / "sub" / "__init__.py").write_text("def g():\n    from pkg.sub.leaf import y\n")
    (pkg / "sub" / "leaf.py").write_text("from pkg.sub import g\n")  # imports its own package back
    (pkg / "sub" / "fine.py").write_text("from . import leaf\nfrom pkg.d import z\n")
    (pkg / "d.py").write_text("import os\n")
    circles = find_circles(import_graph(pkg, "pkg"))
    assert circles == [["pkg.a", "pkg.b", "pkg.c"], ["pkg.sub", "pkg.sub.leaf"]]
    (pkg / "c.py").write_text("import os\n")
    (pkg / "sub" / "leaf.py").write_text("y = 1\n")
    assert find_circles(import_graph(pkg, "pkg")) == []
