"""The package's layers: what runs in the daemon never reaches into an operator command."""

from __future__ import annotations

import ast
from pathlib import Path

import retryd

PACKAGE = Path(retryd.__file__).parent
# The operator's front ends (the CLI, the web console) and the demo world sit on top of the
# runtime; nothing runs under them.
FRONT_ENDS = ("commands", "console", "sandbox")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_runtime_modules_never_import_an_operator_command() -> None:
    """No module outside the front ends imports retryd.commands, the console or the sandbox."""
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            name
            for name in _imports(path)
            if name.startswith(tuple(f"retryd.{front}" for front in FRONT_ENDS))
        )
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).parts[0] not in FRONT_ENDS and path.name != "__main__.py"
    }
    assert {path: names for path, names in offenders.items() if names} == {}
