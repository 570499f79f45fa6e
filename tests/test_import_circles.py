"""No import circles in python/anomaly_edge: a module that imports another, directly or through
others, must not be imported back by it.

The graph is read from the source with ``ast``, and counts every import, including those inside
functions and under TYPE_CHECKING: a circle hidden behind a lazy import is still a circle in the
design. A package's ``__init__`` is not counted as a dependency of its own submodules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import anomaly_edge

PACKAGE = Path(anomaly_edge.__file__).resolve().parent

# No circle is allowed: a new one fails, with its modules named.
KNOWN_CIRCLES: list[frozenset[str]] = []


def _module_name(package: Path, path: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_names(module: str, is_package: bool, tree: ast.AST) -> set[str]:
    """Every dotted name an import statement in the module can refer to (absolute)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            names.add(base)
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports."""
    paths = {_module_name(package, p): p for p in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        targets: set[str] = set()
        for name in _imported_names(module, path.name == "__init__.py", tree):
            while name and name not in paths:  # a.b.function -> a.b
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                targets.add(name)
        graph[module] = targets
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(frozenset(component))
    return circles


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_check_finds_circles_of_every_import_form(tmp_path: Path) -> None:
    package = _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg import a\n",  # a package's own __init__: no circle
            "pkg/a.py": "from . import b\n",
            "pkg/b.py": "def f():\n    from pkg.c import thing\n",  # lazy import counts
            "pkg/c.py": "import pkg.a\nthing = 1\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/x.py": "from ..sub import y\n",
            "pkg/sub/y.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pkg.sub.x import X\n",
            "pkg/free.py": "from pkg.a import b\n",  # imports into the circle, not part of it
        },
    )
    circles = import_circles(import_graph(package))
    assert sorted(circles, key=sorted) == [
        frozenset({"pkg.a", "pkg.b", "pkg.c"}),
        frozenset({"pkg.sub.x", "pkg.sub.y"}),
    ]


def test_the_check_passes_a_package_without_circles(tmp_path: Path) -> None:
    package = _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import f\n",
            "pkg/a.py": "from pkg import b\nfrom pkg.b import g as f\n",
            "pkg/b.py": "import os\ndef g():\n    return os\n",
        },
    )
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.b"}
    assert import_circles(graph) == []


def test_no_new_import_circles_in_the_package() -> None:
    circles = import_circles(import_graph(PACKAGE))
    new = [c for c in circles if not any(c <= known for known in KNOWN_CIRCLES)]
    assert not new, (
        "import circles in python/anomaly_edge (move the shared part into a module both can "
        "import, or invert the dependency):\n"
        + "\n".join("  " + " <-> ".join(sorted(c)) for c in new)
    )
