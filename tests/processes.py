"""`retryd run` as a real child process, always reaped, whatever the test did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def retryd_run(config: Path) -> Iterator[subprocess.Popen[str]]:
    """Start `python -m retryd run --config CONFIG` with this test's environment."""
    process = subprocess.Popen(
        [sys.executable, "-m", "retryd", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        yield process
    finally:
        process.kill()
        process.communicate()


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a retryd process's output; anything else (a warning) is skipped."""
    lines = []
    for line in text.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return lines
