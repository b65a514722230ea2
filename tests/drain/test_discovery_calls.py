"""What a drain cycle costs per DLQ: one depth look-up for an empty one, none for a busy one."""

from __future__ import annotations

import json

import anyio
import pytest
from prometheus_client import CollectorRegistry

from retryd.aws import open_clients
from retryd.drain import cycle as cycle_module
from retryd.drain.cycle import Cycle, CycleReport
from retryd.ledger import open_ledger
from retryd.metrics import Metrics
from retryd.service.lifecycle import run_once
from retryd.settings import Settings
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.world import ACCOUNT, REGION, World

PARKING = "retryd-parking"


def counting(world: World, operation: str) -> Fault:
    """A fault that passes every `operation` call on to moto and counts it."""
    return world.faults.add(Fault("sqs", operation, code=None))


def test_an_empty_dlq_costs_no_redrive_source_look_up(
    world: World, make_settings: SettingsFactory
) -> None:
    """Of 5 DLQs only the one with a message has its sources looked up; its message resolves."""
    world.create_queue(PARKING)
    for index in range(4):
        world.create_queue(f"retry-empty-{index}")
    world.create_queue("retry-orders")
    policy = json.dumps(
        {"deadLetterTargetArn": world.queue_arn("retry-orders"), "maxReceiveCount": "1"}
    )
    world.create_queue("orders", RedrivePolicy=policy)
    world.send("retry-orders", {"orderId": 7})
    sources = counting(world, "ListDeadLetterSourceQueues")

    report: CycleReport = anyio.run(lambda: run_once(make_settings(), collect=True))

    assert report.outcomes == {"resubmitted": 1}
    assert sources.hits == 1
    (back,) = world.drain("orders")
    assert json.loads(back["Body"]) == {"orderId": 7}


def _two_dlqs(world: World) -> None:
    world.create_queue(PARKING)
    world.create_queue("retry-idle")
    world.create_queue("retry-busy")
    policy = json.dumps(
        {"deadLetterTargetArn": world.queue_arn("retry-busy"), "maxReceiveCount": "1"}
    )
    world.create_queue("busy", RedrivePolicy=policy)


def _depth_hits(
    world: World, settings: Settings, fault: Fault, feeds: list[int], registry: CollectorRegistry
) -> tuple[list[CycleReport], list[int]]:
    """Cycles back to back on one Cycle, `feeds[i]` more messages into retry-busy before
    cycle i+1; the depth look-ups `fault` counted in each."""
    hits: list[int] = []

    async def main() -> list[CycleReport]:
        metrics = Metrics(registry)
        reports = []
        async with (
            open_clients(settings.aws) as clients,
            open_ledger(settings.ledger, clients, metrics) as ledger,
        ):
            cycle = Cycle(settings, clients, metrics, ledger=ledger)
            for count in feeds:
                for n in range(count):
                    world.send("retry-busy", {"n": n})
                before = fault.hits
                with anyio.fail_after(60):
                    reports.append(await cycle.run(anyio.Event()))
                hits.append(fault.hits - before)
        return reports

    return anyio.run(main), hits


def _visible(registry: CollectorRegistry, queue: str) -> float | None:
    labels = {"queue": queue, "account": ACCOUNT, "region": REGION, "state": "visible"}
    return registry.get_sample_value("retryd_dlq_messages", labels)


def test_a_dlq_that_moved_messages_is_drained_again_without_asking_its_depth(
    world: World, make_settings: SettingsFactory
) -> None:
    """Back-to-back cycles: the DLQ whose last drain moved messages is read straight away
    (it is read in its receive anyway); the idle one is asked its depth every cycle. Once a
    drain finds the busy one quiet, its depth is read then (its gauge shows 0 at once) and
    in every cycle after."""
    _two_dlqs(world)
    depths = world.faults.add(
        Fault("sqs", "GetQueueAttributes", code=None, contains="ApproximateNumberOfMessagesDelayed")
    )
    registry = CollectorRegistry()
    settings = make_settings(drain={"receive_wait_s": 0})

    reports, hits = _depth_hits(world, settings, depths, [3, 2, 0, 0], registry)

    assert [r.outcomes.get("resubmitted", 0) for r in reports] == [3, 2, 0, 0]
    # Both; the idle one alone; the idle one and the busy one found quiet; both.
    assert hits == [2, 1, 2, 2]
    assert _visible(registry, "retry-busy") == 0
    assert len(world.drain("busy")) == 5


def test_a_dlq_whose_messages_only_deferred_is_asked_its_depth_next_time(
    world: World, make_settings: SettingsFactory
) -> None:
    """Deferred messages are hidden until due: the next cycle would find the DLQ empty, so it
    is asked its depth (one call) rather than long-polled."""
    _two_dlqs(world)
    depths = world.faults.add(
        Fault("sqs", "GetQueueAttributes", code=None, contains="ApproximateNumberOfMessagesDelayed")
    )
    settings = make_settings(drain={"receive_wait_s": 0}, backoff={"base_s": 600, "max_s": 600})

    reports, hits = _depth_hits(world, settings, depths, [3, 0], CollectorRegistry())

    assert [r.outcomes.get("deferred", 0) for r in reports] == [3, 0]
    assert hits == [2, 2]


def test_a_busy_dlq_s_depth_is_read_again_once_its_last_read_is_old(
    world: World, make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DLQ that stays busy still has its depth (gauge, retention) read every
    BUSY_DEPTH_MAX_AGE_S: here 1 s, after a cycle that reused a read and one past it."""
    monkeypatch.setattr(cycle_module, "BUSY_DEPTH_MAX_AGE_S", 1.0)
    _two_dlqs(world)
    depths = world.faults.add(Fault("sqs", "GetQueueAttributes", code=None, contains="retry-busy"))
    settings = make_settings(drain={"receive_wait_s": 0})

    async def main() -> list[int]:
        metrics = Metrics(CollectorRegistry())
        hits = []
        async with (
            open_clients(settings.aws) as clients,
            open_ledger(settings.ledger, clients, metrics) as ledger,
        ):
            cycle = Cycle(settings, clients, metrics, ledger=ledger)
            for pause_s in (0.0, 0.0, 1.1):
                await anyio.sleep(pause_s)
                world.send("retry-busy", {"pause_s": pause_s})
                before = depths.hits
                with anyio.fail_after(60):
                    await cycle.run(anyio.Event())
                hits.append(depths.hits - before)
        return hits

    first, reused, after = anyio.run(main)
    assert first >= 1
    assert (reused, after) == (0, 1)
    assert len(world.drain("busy")) == 3
