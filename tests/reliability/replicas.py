"""`retryd run` processes for the reliability suites: logs to files, always reaped, read back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.reliability.front import CHAOS_KEY_ID
from tests.world import REGION


def retryd_env(url: str) -> dict[str, str]:
    """The environment of a retryd process on the front: its calls are the ones chaos may fail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETRYD_", "AWS_"))}
    env.update(
        AWS_ENDPOINT_URL=url,
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
        AWS_ACCESS_KEY_ID=CHAOS_KEY_ID,
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE="/nonexistent/retryd-test-config",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/retryd-test-credentials",
    )
    return env


@dataclass
class Replica:
    """One `retryd run` process, its log file, and when it started (wall clock)."""

    process: subprocess.Popen[bytes]
    log_path: Path
    started_s: float
    # The access key id it signs with: the front tells its calls apart by it.
    signer: str = CHAOS_KEY_ID
    ended_s: float | None = None
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no chance to settle anything."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.killed = True
        self.ended_s = time.time()

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, then wait for the exit code."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout_s)
        self.ended_s = time.time()
        return code

    def started(self) -> bool:
        """Whether it has logged `started` (its clients and ledger are open)."""
        return '"event": "started"' in self.text()

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def open_fds(self) -> int:
        return int(psutil.Process(self.pid).num_fds())

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines; anything else (a traceback printed raw) is kept as {"raw": line}."""
        events: list[dict[str, Any]] = []
        for line in self.text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                event = {"raw": line}
            events.append(event if isinstance(event, dict) else {"raw": line})
        return events


@dataclass
class Fleet:
    """Every process a suite started, so that none outlives it."""

    config: Path
    env: Mapping[str, str]
    log_dir: Path
    replicas: list[Replica] = field(default_factory=list)

    def start(self, config: Path | None = None, prefix: Sequence[str] = ()) -> Replica:
        """A `retryd run` process; `prefix` runs it under another command (`taskset -c 0`)."""
        index = len(self.replicas)
        log_path = self.log_dir / f"retryd-{index:03d}.log"
        signer = f"{CHAOS_KEY_ID}{index:03d}"
        command = [sys.executable, "-m", "retryd", "run", "--config", str(config or self.config)]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*prefix, *command],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.env, "AWS_ACCESS_KEY_ID": signer},
            )
        replica = Replica(process, log_path, time.time(), signer=signer)
        self.replicas.append(replica)
        return replica

    def reap(self) -> None:
        for replica in self.replicas:
            if replica.alive():
                replica.process.kill()
                replica.process.wait(timeout=30)

    def events(self) -> list[dict[str, Any]]:
        return [event for replica in self.replicas for event in replica.events()]

    def tracebacks(self) -> list[str]:
        """Log lines that carry a Python traceback, in a JSON field or raw."""
        found = []
        for replica in self.replicas:
            for line in replica.text().splitlines():
                if "Traceback (most recent call last)" in line:
                    found.append(f"{replica.log_path.name}: {line[:300]}")
        return found


@contextmanager
def fleet(config: Path, env: Mapping[str, str], log_dir: Path) -> Iterator[Fleet]:
    log_dir.mkdir(parents=True, exist_ok=True)
    processes = Fleet(config, env, log_dir)
    try:
        yield processes
    finally:
        processes.reap()


def wait_until(condition: Any, timeout_s: float, what: str, poll_s: float = 0.25) -> None:
    """Poll `condition()` until true; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)
