"""Every message accounted for: random mixes of good, poison and failing messages, one cycle each.

For any mix, each message ends up in exactly one place — at its target, in the
parking queue, or still in its DLQ — and the cycle's report says the same.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retryd.drain.cycle import CycleReport
from retryd.service.lifecycle import run_once
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.world import ACCOUNT, REGION, World, envelope

PARKING = "retryd-parking"
DLQS = ("retry-a", "retry-b")
GOOD = ("sqs", "sns", "lambda", "stepfunctions", "eventbridge")
POISON = ("broken-envelope", "plain-text", "foreign-target", "exhausted", "bad-event")
# Which target each fault breaks (transiently), and the call it answers.
FAULTS = {
    # Matched on the QueueUrl, so that parked copies (whose bodies name "dest") still go.
    "sqs": Fault(
        "sqs",
        "SendMessageBatch",
        code="ServiceUnavailable",
        status=503,
        contains=f'{ACCOUNT}/dest"',
    ),
    "lambda": Fault("lambda", "Invoke", code="TooManyRequestsException", status=429),
    "eventbridge": Fault("events", "PutEvents", code="ThrottlingException"),
}


class Arns:
    """The targets of one example's world."""

    def __init__(self, world: World) -> None:
        world.create_queue(PARKING)
        for dlq in DLQS:
            world.create_queue(dlq)
        world.create_queue("dest")
        self.sqs = world.queue_arn("dest")
        self.lambda_ = world.create_function("fn")
        self.stepfunctions = world.create_state_machine("flow")
        self.sns, self.sns_spy = world.create_topic_with_spy("topic")
        self.eventbridge, self.bus_spy = world.create_bus_with_spy("bus", source="mix")


def body(kind: str, number: int, arns: Arns) -> dict[str, Any] | str:
    payload = {"i": number}
    bodies: dict[str, Any] = {
        "sqs": lambda: envelope("sqs", arns.sqs, payload),
        "sns": lambda: envelope("sns", arns.sns, payload),
        "lambda": lambda: envelope("lambda", arns.lambda_, payload),
        "stepfunctions": lambda: envelope("stepfunctions", arns.stepfunctions, payload),
        "eventbridge": lambda: envelope(
            "eventbridge", arns.eventbridge, {"Source": "mix", "DetailType": "t", "Detail": payload}
        ),
        "broken-envelope": lambda: {
            "envelope": "retryd/v1",
            "target": {"type": "sqs"},
            "payload": payload,
        },
        "plain-text": lambda: f"not an envelope {number}",
        "foreign-target": lambda: envelope(
            "sqs", f"arn:aws:sqs:{REGION}:999999999999:dest", payload
        ),
        "exhausted": lambda: envelope("sqs", arns.sqs, payload, attempt=9),
        # EventBridge refuses an entry with no DetailType.
        "bad-event": lambda: envelope(
            "eventbridge", arns.eventbridge, {"Source": "mix", "Detail": payload}
        ),
    }
    made: dict[str, Any] | str = bodies[kind]()
    return made


def expected(kind: str, broken: str | None) -> str:
    if kind in POISON:
        return "parked"
    return "failed" if kind == broken else "resubmitted"


def delivered_numbers(world: World, arns: Arns) -> list[int]:
    """`i` of every copy that reached a target, whatever the target."""
    found = [json.loads(m["Body"])["i"] for m in world.drain("dest")]
    found += [json.loads(m["Body"])["i"] for m in world.drain(arns.sns_spy)]
    found += [json.loads(m["Body"])["detail"]["i"] for m in world.drain(arns.bus_spy)]
    found += [json.loads(call["payload"])["i"] for call in world.invocations("fn")]
    found += [json.loads(e["input"])["i"] for e in world.executions(arns.stepfunctions)]
    return found


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kinds=st.lists(st.sampled_from(GOOD + POISON), min_size=1, max_size=24),
    broken=st.none() | st.sampled_from(sorted(FAULTS)),
)
def test_every_message_ends_up_in_exactly_one_place(
    world: World, make_settings: SettingsFactory, kinds: list[str], broken: str | None
) -> None:
    """Target, parking queue or DLQ: one each, and the report agrees message by message."""
    world.server.reset()
    world.faults.clear()
    arns = Arns(world)
    for number, kind in enumerate(kinds):
        world.send(DLQS[number % len(DLQS)], body(kind, number, arns))
    if broken is not None:
        world.faults.add(FAULTS[broken])
    world.record()

    report: CycleReport = anyio.run(lambda: run_once(make_settings(), collect=True))

    world.faults.clear()
    delivered = delivered_numbers(world, arns)
    parked = [m["Body"] for m in world.drain(PARKING)]
    still_queued = sum(world.depth(dlq) for dlq in DLQS)
    want = Counter(expected(kind, broken) for kind in kinds)
    assert report.outcomes == want
    assert sorted(delivered) == sorted(
        n for n, kind in enumerate(kinds) if expected(kind, broken) == "resubmitted"
    )
    assert len(parked) == want["parked"]
    assert still_queued == want["failed"]
    assert len(delivered) + len(parked) + still_queued == len(kinds)
    assert report.received == len(kinds)
