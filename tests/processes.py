"""`retryd run` as a real child process, always reaped, whatever the test did."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
