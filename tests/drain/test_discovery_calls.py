"""What a drain cycle costs per DLQ: one depth look-up for an empty one, none for a busy one."""

from __future__ import annotations

import json

import anyio
from prometheus_client import CollectorRegistry

from retryd.aws import open_clients
from retryd.drain.cycle import Cycle, CycleReport
from retryd.ledger import open_ledger
from retryd.metrics import Metrics
from retryd.service.lifecycle import run_once
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.world import World

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


def test_a_dlq_that_had_messages_is_drained_again_without_asking_its_depth(
    world: World, make_settings: SettingsFactory
) -> None:
    """Back-to-back cycles: the DLQ whose last drain found messages is read straight away
    (it is read in its receive anyway); the idle one is asked its depth every cycle; once a
    drain finds the busy one empty, its depth is asked again."""
    _two_dlqs(world)
    for n in range(3):
        world.send("retry-busy", {"n": n})
    depths = world.faults.add(
        Fault("sqs", "GetQueueAttributes", code=None, contains="ApproximateNumberOfMessagesDelayed")
    )
    settings = make_settings(drain={"receive_wait_s": 0})
    hits: list[int] = []

    async def main() -> list[CycleReport]:
        metrics = Metrics(CollectorRegistry())
        reports = []
        async with (
            open_clients(settings.aws) as clients,
            open_ledger(settings.ledger, clients, metrics) as ledger,
        ):
            cycle = Cycle(settings, clients, metrics, ledger=ledger)
            for _ in range(3):
                before = depths.hits
                with anyio.fail_after(60):
                    reports.append(await cycle.run(anyio.Event()))
                hits.append(depths.hits - before)
        return reports

    reports = anyio.run(main)
    assert [r.outcomes.get("resubmitted", 0) for r in reports] == [3, 0, 0]
    # Both asked; then the idle one alone (the busy one found empty by its receive); both.
    assert hits == [2, 1, 2]
    assert len(world.drain("busy")) == 3


def test_a_busy_dlq_s_depth_is_asked_again_after_the_schedule_interval(
    world: World, make_settings: SettingsFactory
) -> None:
    """The depth gauge of a DLQ that stays busy is never older than `schedule.interval_s`."""
    _two_dlqs(world)
    world.send("retry-busy", {"n": 0})
    depths = world.faults.add(Fault("sqs", "GetQueueAttributes", code=None, contains="retry-busy"))
    settings = make_settings(drain={"receive_wait_s": 0}, schedule={"interval_s": 1})

    async def main() -> int:
        metrics = Metrics(CollectorRegistry())
        async with (
            open_clients(settings.aws) as clients,
            open_ledger(settings.ledger, clients, metrics) as ledger,
        ):
            cycle = Cycle(settings, clients, metrics, ledger=ledger)
            with anyio.fail_after(60):
                await cycle.run(anyio.Event())
                first = depths.hits
                world.send("retry-busy", {"n": 1})
                await anyio.sleep(1.1)
                await cycle.run(anyio.Event())
            return depths.hits - first

    assert anyio.run(main) == 1
    assert len(world.drain("busy")) == 2
