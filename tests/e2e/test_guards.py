"""The guards end to end on the moto server: breaker, ledger, crash safety, several replicas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry

from retryd.aws import open_clients
from retryd.drain.cycle import Cycle, CycleReport
from retryd.ledger import create_table, open_ledger
from retryd.ledger.base import Claim, Ledger
from retryd.metrics import Metrics
from retryd.models import ParkReason
from retryd.settings import Settings
from tests.conftest import SettingsFactory
from tests.e2e.helpers import one_decision_each
from tests.faults import Fault
from tests.world import ACCOUNT, REGION, World, envelope

PARKING = "retryd-parking"


def run_cycles(
    settings: Settings,
    count: int,
    *,
    between: Callable[[int], None] | None = None,
    inspect: Callable[[Ledger], Any] | None = None,
) -> tuple[list[CycleReport], Any]:
    """`count` cycles of one long-lived Cycle (as `retryd run` keeps one), then an optional look
    at its ledger; `between(i)` runs (blocking) after cycle i."""

    async def main() -> tuple[list[CycleReport], Any]:
        metrics = Metrics(CollectorRegistry())
        async with (
            open_clients(settings.aws) as clients,
            open_ledger(settings.ledger, clients, metrics) as ledger,
        ):
            cycle = Cycle(settings, clients, metrics, ledger=ledger)
            reports = []
            for index in range(count):
                reports.append(one_decision_each(await cycle.run(anyio.Event(), collect=True)))
                if between is not None:
                    await anyio.to_thread.run_sync(between, index)
            seen = await inspect(ledger) if inspect is not None else None
        return reports, seen

    return anyio.run(main)


def wait_visible(world: World, queue: str, count: int, timeout_s: float = 30.0) -> None:
    """Block until `count` messages of `queue` are visible again (their leases ran out)."""
    deadline = time.monotonic() + timeout_s
    attributes: dict[str, str] = {}
    while time.monotonic() < deadline:
        attributes = world.client("sqs").get_queue_attributes(
            QueueUrl=world.queue_url(queue), AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        if int(attributes["ApproximateNumberOfMessages"]) >= count:
            return
        time.sleep(0.2)
    pytest.fail(f"{queue}: {count} messages never became visible again: {attributes}")


def invocation_payloads(world: World, function: str) -> list[Any]:
    return [json.loads(call["payload"]) for call in world.invocations(function)]


def test_a_throttling_target_opens_its_breaker_while_other_targets_flow(
    world: World, make_settings: SettingsFactory
) -> None:
    """Throttling opens the target's breaker; its messages stay unconsumed; half-open canaries
    then close it and the rest drain, each message sent once."""
    world.create_queue(PARKING)
    world.create_queue("retry-flaky")
    world.create_queue("retry-steady")
    flaky = world.create_function("flaky")
    steady = world.create_function("steady")
    for n in range(20):
        world.send("retry-flaky", envelope("lambda", flaky, {"n": n}, idempotencyKey=f"f{n}"))
    for n in range(5):
        world.send("retry-steady", envelope("lambda", steady, {"n": n}))
    world.faults.add(
        Fault("lambda", "Invoke", code="TooManyRequestsException", status=429, contains="flaky")
    )
    world.record()
    settings = make_settings(
        drain={"workers_per_queue": 1, "visibility_timeout_s": 5, "receive_wait_s": 0},
        breaker={
            "window_calls": 4,
            "min_calls": 2,
            "failure_rate": 0.5,
            "cooldown_s": 2,
            "half_open_calls": 2,
        },
    )

    def lift_fault_and_wait(index: int) -> None:
        if index == 0:
            world.faults.clear()
        wait_visible(world, "retry-flaky", 20 - len(invocation_payloads(world, "flaky")))

    keys = [f"f{n}" for n in range(20)]
    reports, records = run_cycles(
        settings, 3, between=lift_fault_and_wait, inspect=lambda ledger: ledger.read(keys)
    )

    first = reports[0]
    # The first batch was let through and failed; the breaker opened before the second.
    assert first.reasons[("failed", "transient-error")] == 10
    assert first.reasons[("deferred", "breaker-open")] == 10
    assert first.outcomes["resubmitted"] == 5
    # Half-open: two canaries went first, then the closed breaker let the rest go.
    assert reports[1].reasons[("deferred", "breaker-open")] == 8
    assert sum(r.outcomes["resubmitted"] for r in reports[1:]) == 20
    assert sorted(p["n"] for p in invocation_payloads(world, "flaky")) == list(range(20))
    assert world.depth("retry-flaky") == 0
    # Throttled calls and deferrals consumed no attempt: each key was resubmitted once.
    assert {record.attempts for record in records.values()} == {1}


def test_the_ledger_count_wins_over_what_the_message_says(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A message that says attempt 0 but whose key the ledger counts at the limit is parked."""
    world.create_queue(PARKING)
    world.create_queue("retry-counted")
    function_arn = world.create_function("charge")
    world.send("retry-counted", envelope("lambda", function_arn, {"n": 1}, idempotencyKey="k1"))
    settings = make_settings(
        guards={"max_attempts": 3}, ledger={"backend": "sqlite", "path": str(tmp_path / "l")}
    )

    async def exhaust() -> None:
        async with open_ledger(settings.ledger, None) as ledger:
            for attempt in (1, 2, 3):
                claim = Claim("k1", f"earlier-{attempt}", attempt, None)
                await ledger.begin([claim])
                await ledger.commit([claim], time.time())

    anyio.run(exhaust)
    world.record()
    [report], _ = run_cycles(settings, 1)

    [decision] = report.decisions or []
    assert decision.reason == ParkReason.ATTEMPTS_EXHAUSTED
    assert "ledger" in decision.detail
    assert world.invocations() == []


def _message_id(world: World, queue: str) -> str:
    """The id SQS gave the only message of `queue`, leaving it visible."""
    sqs = world.client("sqs")
    [message] = sqs.receive_message(QueueUrl=world.queue_url(queue))["Messages"]
    sqs.change_message_visibility(
        QueueUrl=world.queue_url(queue),
        ReceiptHandle=message["ReceiptHandle"],
        VisibilityTimeout=0,
    )
    return str(message["MessageId"])


@pytest.mark.parametrize("committed", [False, True], ids=["begun-only", "committed"])
def test_a_crash_between_the_steps_is_repaired_on_the_next_look(
    world: World, make_settings: SettingsFactory, tmp_path: Path, committed: bool
) -> None:
    """Begun but not committed (a crash mid-send): resubmitted once more under the same key and
    attempt. Committed but not deleted: only deleted, the target is not called again."""
    world.create_queue(PARKING)
    world.create_queue("retry-crash")
    function_arn = world.create_function("charge")
    world.send("retry-crash", envelope("lambda", function_arn, {"n": 1}, idempotencyKey="k"))
    message_id = _message_id(world, "retry-crash")
    settings = make_settings(ledger={"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite3")})

    async def crashed_replica() -> None:
        # A replica that died long ago: its claim has expired.
        async with open_ledger(
            settings.ledger, None, owner="dead", clock=lambda: time.time() - 3600
        ) as ledger:
            claim = Claim("k", message_id, 1, None)
            await ledger.begin([claim])
            if committed:
                await ledger.commit([claim], time.time() - 3600)

    anyio.run(crashed_replica)
    world.record()
    [report], records = run_cycles(settings, 1, inspect=lambda ledger: ledger.read(["k"]))

    [decision] = report.decisions or []
    assert decision.outcome == "resubmitted"
    assert decision.attempt == 1
    assert records["k"].attempts == 1
    assert len(world.invocations("charge")) == (0 if committed else 1)
    assert decision.reason == ("already-resubmitted" if committed else "")
    assert world.depth("retry-crash") == 0


def test_two_replicas_on_one_dynamodb_ledger_resubmit_each_message_exactly_once(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Two `retryd once` processes at the same time on the same DLQs: each message once."""
    world.create_queue(PARKING)
    target_url = world.create_queue("orders-target")
    target_arn = world.queue_arn("orders-target")
    for queue in ("retry-one", "retry-two"):
        world.create_queue(queue)
        for n in range(30):
            world.send(queue, envelope("sqs", target_arn, {"q": queue, "n": n}))
    config = tmp_path / "retryd.toml"
    config.write_text(
        f"""
[aws]
max_attempts = 3
[discovery]
queue_prefixes = ["retry-"]
[drain]
receive_wait_s = 0
visibility_timeout_s = 30
workers_per_queue = 2
[guards]
allow_targets = ["arn:aws:sqs:{REGION}:{ACCOUNT}:orders-*"]
[rate_limit]
per_s = 10000
burst = 10000
[backoff]
base_s = 0.001
max_s = 0.001
[ledger]
backend = "dynamodb"
table = "retryd-ledger-test"
[http]
enabled = false
"""
    )
    settings = make_settings(ledger={"backend": "dynamodb", "table": "retryd-ledger-test"})
    anyio.run(create_table, settings)
    command = [sys.executable, "-m", "retryd", "once", "--config", str(config)]
    replicas = [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        for _ in range(2)
    ]
    outputs = [replica.communicate(timeout=90) for replica in replicas]

    assert [replica.returncode for replica in replicas] == [0, 0], outputs
    delivered = world.drain("orders-target")
    bodies = sorted((json.loads(m["Body"])["q"], json.loads(m["Body"])["n"]) for m in delivered)
    assert bodies == sorted((q, n) for q in ("retry-one", "retry-two") for n in range(30))
    assert world.depth("retry-one") == world.depth("retry-two") == 0
    assert world.depth(PARKING) == 0
    assert target_url
