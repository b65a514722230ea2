"""The package's layers, bottom to top: no module imports one above its own layer, or beside it.

Every import is read from the source (imports inside functions and under
TYPE_CHECKING included), so a lazy import cannot hide an upward reach or a cycle.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Mapping
from pathlib import Path

import retryd
from docs.gen.layout import LAYERS, MODULE_HOMES

PACKAGE = Path(retryd.__file__).parent

# The layers (bottom -> top) and MODULE_HOMES live in docs/gen/layout.py: the design
# page's layout map is rendered from the same list this file enforces.


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imported_from(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if path.name != "__init__.py":
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


@functools.cache
def _graph() -> dict[str, dict[str, int]]:
    """Each retryd module -> the retryd modules it imports, with the line of the import."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        found: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                source = _imported_from(module, path, node)
                # `from retryd.drain import cycle` imports the module retryd.drain.cycle.
                names = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                    for alias in node.names
                ]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("retryd.") and name != module:
                    found.setdefault(name, node.lineno)
        graph[module] = found
    return graph


def _package(module: str) -> str:
    """The package a module counts in: its MODULE_HOMES entry, else retryd's child it is in."""
    if module in MODULE_HOMES:
        return MODULE_HOMES[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer_of(package: str) -> int:
    for index, (_, packages) in enumerate(LAYERS):
        if package in packages:
            return index
    raise AssertionError(f"retryd.{package} is in no layer: add it to LAYERS (docs/gen/layout.py)")


def _edges() -> Iterable[tuple[str, str, int]]:
    for module, imports in _graph().items():
        for imported, line in imports.items():
            yield module, imported, line


def _where(module: str, imported: str, line: int) -> str:
    path = _modules()[module].relative_to(PACKAGE.parent)
    return f"{path}:{line}: {module} imports {imported}"


def _reachable(graph: Mapping[str, Iterable[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def _cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The groups of nodes that reach each other round a loop, each sorted (a few hundred
    modules: reachability from every node is quick enough)."""
    reach = {node: _reachable(graph, node) for node in graph}
    groups = {
        tuple(sorted(other for other in reach[node] if node in reach[other]))
        for node in graph
        if node in reach[node]
    }
    return sorted(list(group) for group in groups)


def test_every_package_is_in_exactly_one_layer() -> None:
    """Each package and top-level module of retryd sits in one layer, and no layer names a ghost."""
    packages = {_package(module) for module in _modules()} - {""}
    named = [package for _, members in LAYERS for package in members]
    assert len(named) == len(set(named)), "a package is listed in two layers"
    assert sorted(packages - set(named)) == [], "add these to LAYERS"
    assert sorted(set(named) - packages) == [], "these are no longer in retryd/"


def test_no_module_imports_a_layer_above_or_beside_its_own() -> None:
    """Every import points down the layers (or inside its own package): which one breaks it."""
    broken = []
    for module, imported, line in _edges():
        here, there = _package(module), _package(imported)
        if not here or not there or here == there:
            continue
        if _layer_of(there) >= _layer_of(here):
            broken.append(
                f"{_where(module, imported, line)} "
                f"({LAYERS[_layer_of(here)][0]} -> {LAYERS[_layer_of(there)][0]})"
            )
    assert broken == [], "\n".join(broken)


def test_no_import_cycle_between_modules() -> None:
    """No two modules of retryd import each other, directly or round a loop (lazy imports too)."""
    graph: dict[str, set[str]] = {module: set() for module in _modules()}
    reasons: dict[tuple[str, str], str] = {}
    for module, imported, line in _edges():
        if imported in graph:
            graph[module].add(imported)
            reasons[module, imported] = _where(module, imported, line)
    cycles = _cycles(graph)
    assert cycles == [], "\n".join(
        reason
        for cycle in cycles
        for (module, imported), reason in sorted(reasons.items())
        if module in cycle and imported in cycle
    )


def test_no_import_cycle_between_packages() -> None:
    """No two packages of retryd import each other, directly or round a loop: which imports do."""
    graph: dict[str, set[str]] = {}
    reasons: dict[tuple[str, str], str] = {}
    for module, imported, line in _edges():
        here, there = _package(module), _package(imported)
        if here and there and here != there:
            graph.setdefault(here, set()).add(there)
            reasons.setdefault((here, there), _where(module, imported, line))
    cycles = _cycles(graph)
    assert cycles == [], "\n".join(
        reason
        for cycle in cycles
        for (here, there), reason in sorted(reasons.items())
        if here in cycle and there in cycle
    )


def test_runtime_modules_never_import_an_operator_command() -> None:
    """No module outside the front ends (commands, the console, the sandbox, iam) imports
    retryd.commands."""
    front_end = {"commands", "console", "sandbox", "iam", "__main__"}
    offenders = [
        _where(module, imported, line)
        for module, imported, line in _edges()
        if _package(imported) == "commands" and _package(module) not in front_end
    ]
    assert offenders == [], "\n".join(offenders)


def test_the_checks_see_an_upward_import_a_lazy_one_and_a_cycle() -> None:
    """The graph reads imports inside functions, and the cycle finder finds a three-module loop."""
    graph = _graph()
    # commands/cli.py imports its commands inside functions (keeps `--help` fast).
    assert "retryd.commands.iam_policy" in graph["retryd.commands.cli"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
