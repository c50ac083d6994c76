"""The package's imports flow one way (ARCHITECTURE.md).

Every module of ``captum_vit`` is read with :mod:`ast`, function-level imports
included, relative imports resolved. ``from . import name`` is an import of the
submodule ``name`` when there is one, else of the package's ``__init__``; importing a
package means importing its ``__init__``, not its submodules. The tests fail naming
every import circle and every import that goes against the layers:

    vit/ -> metrics/, attr/, shapley/ -> zoo/ -> methods -> jobs -> cli

with the leaf helpers (``_utils``, ``_guard``, ``_loader``, ``_settings``,
``distributed``) importable by anyone and importing nothing above them.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

PACKAGE = "captum_vit"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: Helpers any module may import; they import nothing of the package but each other.
LEAVES = {
    f"{PACKAGE}.{name}"
    for name in ("_guard", "_loader", "_settings", "_utils", "distributed")
}
#: The method library: no zoo, no job plumbing.
LIBRARY = ("vit", "metrics", "attr", "shapley")
#: The job modules (and their private plumbing).
JOBS = (
    "_jobs",
    "data",
    "evaluate",
    "explain",
    "models",
    "train_shapley",
    "viz",
    "_html",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, target: Optional[str]) -> str:
    """The absolute name of a (possibly relative) import target."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _owner(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """The package module ``name`` lives in (the longest known prefix), if any."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the package modules it imports, anywhere in its body."""
    modules = _modules()
    graph: Dict[str, Set[str]] = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                owner = _owner(target, modules)
                if owner is not None and owner != module:
                    edges.add(owner)
        graph[module] = edges
    return graph


def strongly_connected(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Tarjan's strongly connected components of ``graph``."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _cycle_in(component: List[str], graph: Dict[str, Set[str]]) -> List[str]:
    """One import circle through the component's first module (for the message)."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for succ in sorted(graph[node] & members):
            if succ == start:
                return paths[node] + [start]
            if succ not in paths:
                paths[succ] = paths[node] + [succ]
                queue.append(succ)
    return component


def _under(module: str, *names: str) -> bool:
    return any(
        module == f"{PACKAGE}.{name}" or module.startswith(f"{PACKAGE}.{name}.")
        for name in names
    )


@pytest.fixture(scope="module")
def graph() -> Dict[str, Set[str]]:
    return import_graph()


def test_the_graph_sees_function_level_and_relative_imports(graph):
    # cli imports its jobs inside functions, relatively
    assert f"{PACKAGE}.evaluate" in graph[f"{PACKAGE}.cli"]
    assert f"{PACKAGE}.vit.adapter" in graph[f"{PACKAGE}.vit"]


def test_no_import_circle(graph):
    circles = [c for c in strongly_connected(graph) if len(c) > 1]
    message = "\n".join(
        f"{len(c)} modules: {' -> '.join(_cycle_in(c, graph))}\n  all: {', '.join(c)}"
        for c in circles
    )
    assert not circles, f"import circles in {PACKAGE}:\n{message}"


def _bad_edges(graph: Dict[str, Set[str]], source, forbidden) -> List[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if source(module)
        for target in targets
        if forbidden(target)
    )


def test_the_method_library_imports_no_zoo_and_no_job(graph):
    bad = _bad_edges(
        graph,
        lambda m: _under(m, *LIBRARY),
        lambda t: _under(t, "zoo", "methods", "cli", *JOBS),
    )
    assert not bad, "\n".join(bad)


def test_vit_imports_no_method_and_no_metric(graph):
    bad = _bad_edges(
        graph,
        lambda m: _under(m, "vit"),
        lambda t: not _under(t, "vit") and t not in LEAVES,
    )
    assert not bad, "\n".join(bad)


def test_zoo_imports_no_job(graph):
    bad = _bad_edges(
        graph,
        lambda m: _under(m, "zoo"),
        lambda t: _under(t, "methods", "cli", *JOBS),
    )
    assert not bad, "\n".join(bad)


def test_methods_import_no_job(graph):
    bad = _bad_edges(
        graph, lambda m: m == f"{PACKAGE}.methods", lambda t: _under(t, "cli", *JOBS)
    )
    assert not bad, "\n".join(bad)


def test_jobs_do_not_import_the_cli(graph):
    bad = _bad_edges(graph, lambda m: _under(m, *JOBS), lambda t: _under(t, "cli"))
    assert not bad, "\n".join(bad)


def test_leaf_helpers_import_only_leaf_helpers(graph):
    bad = _bad_edges(graph, lambda m: m in LEAVES, lambda t: t not in LEAVES)
    assert not bad, "\n".join(bad)


def test_the_adapter_does_not_import_the_families(graph):
    # the family files register themselves (vit.adapter.register_family)
    bad = _bad_edges(
        graph,
        lambda m: m == f"{PACKAGE}.vit.adapter",
        lambda t: _under(t, "vit.families"),
    )
    assert not bad, "\n".join(bad)


def test_the_families_register_in_matching_order():
    from captum_vit.vit import FAMILIES
    from captum_vit.vit.adapter import registered_families

    assert [f.__name__ for f in FAMILIES] == [
        "EvaAdapter",
        "BeitAdapter",
        "TimmViTAdapter",
        "SwinAdapter",
        "TorchvisionViTAdapter",
        "HFViTAdapter",
        "HFCLIPVisionAdapter",
        "OpenCLIPVisionAdapter",
        "ZeroShotAdapter",
    ]
    assert registered_families() == FAMILIES
