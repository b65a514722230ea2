"""retryd.logs: each log line reaches stderr whole, in one write."""

from __future__ import annotations

import json

import pytest
import structlog

from retryd.logs import configure_logging


class _Writes:
    """A stderr that keeps each write it is given."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_json_line_is_one_write_with_its_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes (drain.processes) share one stderr: a line written in two parts
    could be cut by another's, and unbuffered (PYTHONUNBUFFERED) each part is a syscall."""
    stderr = _Writes()
    monkeypatch.setattr("sys.stderr", stderr)
    configure_logging("info", "json")
    structlog.get_logger("retryd.test").info("resubmitted", queue="q", attempt=2)
    assert len(stderr.writes) == 1, stderr.writes
    line = stderr.writes[0]
    assert line.endswith("\n")
    assert line.count("\n") == 1
    event = json.loads(line)
    assert (event["event"], event["queue"], event["attempt"]) == ("resubmitted", "q", 2)
