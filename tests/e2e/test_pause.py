"""Pauses across processes: one `retryd pause` honoured by a running `retryd run`, then resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.processes import json_lines
from tests.world import ACCOUNT, REGION, World, envelope

WAIT_S = 60


def write_config(tmp_path: Path, backend: str) -> Path:
    path = tmp_path / "retryd.toml"
    path.write_text(
        f"""
[aws]
max_attempts = 1

[discovery]
queue_prefixes = ["retry-"]

[drain]
receive_wait_s = 0
visibility_timeout_s = 5

[schedule]
interval_s = 1

[guards]
allow_targets = ["arn:aws:*:{REGION}:{ACCOUNT}:*"]

[http]
enabled = false

[log]
format = "json"

[ledger]
backend = "{backend}"
path = "{tmp_path / "ledger.sqlite3"}"
table = "retryd-ledger"

[backoff]
base_s = 0.001
max_s = 0.001
"""
    )
    return path


def retryd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One retryd command as its own process."""
    return subprocess.run(
        [sys.executable, "-m", "retryd", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=WAIT_S,
        check=False,
    )


def wait_until(what: str, done: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert process.poll() is None, f"retryd run exited while waiting for {what}"
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def log_events(log: Path) -> list[dict[str, Any]]:
    return json_lines(log.read_text())


@pytest.mark.parametrize("backend", ["sqlite", "dynamodb"])
def test_a_pause_from_one_process_holds_a_running_daemon_until_resumed(
    world: World, tmp_path: Path, backend: str
) -> None:
    """`pause` (own process) makes a running daemon defer as `paused`; `resume` lets it go."""
    world.create_queue("retryd-parking")
    world.create_queue("retry-work")
    world.create_queue("dest")
    dest = world.queue_arn("dest")
    config = write_config(tmp_path, backend)
    if backend == "dynamodb":
        created = retryd(config, "ledger", "create-table")
        assert created.returncode == 0, created.stderr
    log = tmp_path / "run.log"
    with log.open("w") as sink:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "retryd", "run", "--config", str(config)],
            stdout=sink,
            stderr=sink,
            text=True,
            env=os.environ.copy(),
        )
    try:
        paused = retryd(config, "pause", dest, "--reason", "queue migration")
        assert paused.returncode == 0, paused.stderr
        assert "paused " + dest in paused.stdout
        world.send("retry-work", envelope("sqs", dest, {"n": 1}))

        def deferred_as_paused() -> bool:
            return any(
                e.get("event") == "deferred" and e.get("reason") == "paused"
                for e in log_events(log)
            )

        wait_until("a paused deferral", deferred_as_paused, daemon)
        assert world.depth("dest") == 0
        assert world.depth("retry-work") == 1
        listed = retryd(config, "pauses", "--output", "json")
        assert [p["pattern"] for p in json.loads(listed.stdout)["pauses"]] == [dest]

        resumed = retryd(config, "resume", dest)
        assert resumed.returncode == 0, resumed.stderr
        wait_until("the delivery after resume", lambda: world.depth("dest") == 1, daemon)
        assert world.depth("retry-work") == 0
    finally:
        daemon.kill()
        daemon.wait()
    audit = json.loads(retryd(config, "audit", "--output", "json").stdout)["records"]
    assert [(r["action"], r["count"]) for r in audit] == [("resume", 1), ("pause", 1)]
    assert all(r["who"].startswith("arn:aws:") for r in audit)


def test_a_bad_pause_is_refused_with_a_clear_line(world: World, tmp_path: Path) -> None:
    """A pause with no target, a glob that is no ARN, or no reason: exit 2, one error line."""
    config = write_config(tmp_path, "memory")
    for args in (["--reason", "x"], ["charge", "--reason", "x"], [f"arn:aws:sqs:{REGION}:1:q"]):
        result = retryd(config, "pause", *args)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("retryd")]
        assert len(errors) == 1, result.stderr
