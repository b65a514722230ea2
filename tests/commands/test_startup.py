"""What a command imports to start: the facts behind its start-up time (bench's `startup` world)."""

from __future__ import annotations

import json
import subprocess
import sys

# Each over 10 ms to import here, and none needed to print a version.
HEAVY = ("botocore", "pydantic_settings", "rich", "structlog", "aiobotocore", "jsonschema")

# Runs the command line in a fresh interpreter and prints the top-level modules it loaded.
PROBE = """
import json, sys
from retryd.commands.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
sys.stdout.flush()
print("\\nMODULES " + json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def loaded(*args: str) -> set[str]:
    """The top-level modules loaded by `retryd ARGS` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("MODULES "), done.stdout
    return set(json.loads(last.removeprefix("MODULES ")))


def test_version_imports_neither_the_sdk_nor_the_settings_nor_rich() -> None:
    """`retryd --version` loads no botocore, pydantic_settings, rich or structlog."""
    assert not loaded("--version") & set(HEAVY)


def test_help_imports_neither_the_sdk_nor_the_settings_nor_rich() -> None:
    """`retryd --help` builds the whole command line without botocore, pydantic settings, rich
    or structlog (the console's subcommand once pulled in the settings for its parser)."""
    assert not loaded("--help") & set(HEAVY)
