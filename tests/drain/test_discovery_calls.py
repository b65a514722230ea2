"""What one drain cycle costs per empty DLQ: one depth look-up, no feed look-up."""

from __future__ import annotations

import json

import anyio

from retryd.drain.cycle import CycleReport
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
