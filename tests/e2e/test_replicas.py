"""Three real `retryd run` processes on one DynamoDB ledger share rate budgets and breakers."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from retryd.cluster.dynamodb import AGREE_S
from retryd.ledger import create_table
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.processes import json_lines
from tests.world import ACCOUNT, REGION, World, envelope

pytestmark = pytest.mark.slow

PARKING = "retryd-parking"
TABLE = "retryd-ledger-replicas"
# A rest, budget and lease (kept no longer: max_lease_s = the lease) this short give a
# heartbeat of 2 x (0.5 + 2 + 5) = 15 s.
CONFIG = f"""
[aws]
max_attempts = 1
[discovery]
queue_prefixes = ["retry-"]
[schedule]
interval_s = 0.5
[drain]
receive_wait_s = 0
visibility_timeout_s = 5
max_lease_s = 5
workers_per_queue = 1
cycle_budget_s = 2
[guards]
allow_targets = ["arn:aws:sqs:{REGION}:{ACCOUNT}:orders-*", "arn:aws:lambda:*:*:function:*"]
[backoff]
base_s = 0.001
max_s = 0.001
[ledger]
backend = "dynamodb"
table = "{TABLE}"
[http]
enabled = false
"""


class Replica:
    """One `retryd run` process, its log lines read back from a file."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "retryd", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            text=True,
            env=os.environ.copy(),
        )

    def lines(self) -> list[dict[str, Any]]:
        return json_lines(self.log_path.read_text())

    def logged(self, event: str, **fields: Any) -> bool:
        return any(
            line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
            for line in self.lines()
        )

    def logged_count(self, event: str) -> int:
        return sum(line.get("event") == event for line in self.lines())

    def stop(self) -> None:
        """SIGTERM (a clean stop, leaving the cluster), then reap."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def kill(self) -> None:
        """SIGKILL: no goodbye, its heartbeat has to expire."""
        self.process.kill()
        self.process.wait()


@contextmanager
def replicas(config: Path, tmp_path: Path, count: int) -> Iterator[list[Replica]]:
    with ExitStack() as stack:
        started = []
        for index in range(count):
            replica = Replica(config, tmp_path / f"replica-{index}.log")
            stack.callback(replica.stop)
            started.append(replica)
        yield started


def wait_for(what: str, done: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(0.2)
    pytest.fail(f"never happened: {what}")


def alive(running: list[Replica]) -> bool:
    """True while every replica runs; fails at once, with its log, if one has exited."""
    for replica in running:
        if replica.process.poll() is not None:
            pytest.fail(f"{replica.log_path.name} exited: {replica.log_path.read_text()[-2000:]}")
    return True


def setup(world: World, make_settings: SettingsFactory, tmp_path: Path, extra: str) -> Path:
    world.create_queue(PARKING)
    world.create_queue("retry-orders")
    anyio.run(create_table, make_settings(ledger={"backend": "dynamodb", "table": TABLE}))
    config = tmp_path / "retryd.toml"
    config.write_text(CONFIG + extra)
    return config


def test_three_replicas_share_a_rate_and_take_over_a_killed_ones_share(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """per_s = 5 over three replicas: at most 5 x elapsed + burst delivered in total; once one
    is killed, the other two count two live replicas and take half each."""
    config = setup(world, make_settings, tmp_path, "[rate_limit]\nper_s = 5\nburst = 5\n")
    world.create_queue("orders-target")
    target_arn = world.queue_arn("orders-target")
    for n in range(200):
        world.send("retry-orders", envelope("sqs", target_arn, {"n": n}))

    world.record()
    started_s = time.monotonic()
    with replicas(config, tmp_path, 3) as running:
        wait_for(
            "three live replicas",
            lambda: alive(running) and all(r.logged("cluster-members", live=3) for r in running),
        )
        running[0].kill()
        wait_for(
            "the two survivors count two",
            lambda: all(r.logged("cluster-members", live=2, was=3) for r in running[1:]),
        )
        delivered = world.depth("orders-target")
        elapsed_s = time.monotonic() - started_s
        for replica in running:
            replica.stop()
        ran_s = time.monotonic() - started_s
        cycles = sum(r.logged_count("cycle") for r in running)

    assert 0 < delivered <= 5 * elapsed_s + 5, (delivered, elapsed_s)
    # Counted by receiving every message, once the killed replica's leases have run out:
    # moto's approximate counts read the clock per message and can miss one changing state.
    world.wait_visible(["orders-target", "retry-orders", PARKING])
    sent = [json.loads(m["Body"])["n"] for m in world.drain("orders-target")]
    left = [json.loads(m["Body"])["payload"]["n"] for m in world.drain("retry-orders")]
    parked = [m["Body"] for m in world.drain(PARKING)]
    assert parked == []
    assert sorted(set(sent) | set(left)) == list(range(200)), (len(sent), len(left))
    # A killed replica's claimed batch may go out again (at least once), nothing more.
    assert len(sent) + len(left) - 200 <= 10, (len(sent), len(left))
    # What agreeing costs: at most one UpdateItem per cycle (busy cycles that follow each
    # other within AGREE_S share one), one re-read every AGREE_S while a replica drains,
    # plus one to leave: bounded by time, none per message.
    calls = cluster_calls(world)
    assert 3 <= calls <= cycles + 3 * (ran_s / AGREE_S + 2), (calls, cycles, ran_s)


def _body(entry: dict[str, Any]) -> str:
    body = entry.get("body") or ""
    return base64.b64decode(body).decode() if entry.get("body_encoded") else str(body)


def cluster_calls(world: World) -> int:
    """DynamoDB calls on the cluster's item, as the moto server recorded them."""
    return sum(
        "retryd-cluster/" in _body(entry)
        for entry in world.server.recording()
        if "DynamoDB" in str(entry.get("headers", {}).get("X-Amz-Target", ""))
    )


def test_a_failing_target_opens_everywhere_and_gets_only_the_canaries_of_each_episode(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Every call fails: each replica's breaker opens, and each half-open episode (one claim in
    the table) sends at most half_open_calls canaries in total, not one set per replica."""
    config = setup(
        world,
        make_settings,
        tmp_path,
        "[rate_limit]\nper_s = 1000\nburst = 1000\n"
        "[breaker]\nwindow_calls = 4\nmin_calls = 2\nfailure_rate = 0.5\n"
        "cooldown_s = 2\nhalf_open_calls = 2\n",
    )
    flaky = world.create_function("flaky")
    for n in range(60):
        world.send("retry-orders", envelope("lambda", flaky, {"n": n}))
    world.faults.add(
        Fault("lambda", "Invoke", code="TooManyRequestsException", status=429, contains="flaky")
    )
    world.record()

    with replicas(config, tmp_path, 3) as running:
        wait_for(
            "two half-open episodes",
            lambda: (
                sum(
                    line.get("event") == "cluster-canaries-claimed"
                    for r in running
                    for line in r.lines()
                )
                >= 2
            ),
        )
        for replica in running:
            replica.stop()
        claims = sum(
            line.get("event") == "cluster-canaries-claimed" for r in running for line in r.lines()
        )
        opened = [r.logged("breaker", to="open") for r in running]

    calls = len(world.invocations("flaky"))
    assert all(opened)
    # Before the breaker opened, each replica had at most one batch (10) in flight;
    # after, only the holder of each claimed episode sent canaries.
    assert calls <= 3 * 10 + 2 * claims, (calls, claims)
    assert claims >= 2
