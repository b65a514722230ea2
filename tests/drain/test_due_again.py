"""A message deferred in a cycle is read again once due: in the same cycle, or in a later
one whatever its DLQ's count says.

Deferred for its backoff, a message is hidden until it is due. While its DLQ is still
being drained it then comes back to the same drain; taken for one already handled, it
was left hidden for a whole lease (`drain.visibility_timeout_s`) beyond its due time,
and a drain that met three such batches stopped with other messages still in the DLQ.
The bench's steady world met it: 7 of 30,000 messages were still in their DLQs two
minutes after the feed stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import anyio

from retryd.control.memory import MemoryControlStore
from retryd.control.pauses import add_pause
from retryd.drain.cycle import CycleReport
from retryd.service.lifecycle import run_once
from retryd.settings import Settings
from tests.conftest import SettingsFactory
from tests.drain.test_settling_rules import run_cycles
from tests.faults import Fault
from tests.world import World

MESSAGES = 6
# Each first resubmission waits up to this long after the message reached its DLQ
# (jittered by key), well inside one long poll of the drain.
BACKOFF_S = 4
DUE_BACKOFF_S = 8
RECEIVE_WAIT_S = 5


def test_a_message_deferred_for_its_backoff_is_resubmitted_when_due_in_the_same_cycle(
    world: World, make_settings: SettingsFactory
) -> None:
    _orders_world(world)
    settings = make_settings(
        drain={"receive_wait_s": RECEIVE_WAIT_S, "workers_per_queue": 1},
        backoff={"base_s": BACKOFF_S, "max_s": BACKOFF_S},
    )

    async def main() -> CycleReport:
        with anyio.fail_after(60):
            return await run_once(settings, collect=True)

    report = anyio.run(main)

    # The backoff held some back at first: the case under test happened.
    assert report.reasons[("deferred", "backoff")] >= 1
    assert report.outcomes.get("resubmitted", 0) == MESSAGES
    back = sorted(json.loads(m["Body"])["orderId"] for m in world.drain("orders"))
    assert back == list(range(MESSAGES))
    assert world.drain("retry-orders") == []


def _lagging_count(world: World) -> Fault:
    """Depth look-ups answered "none visible, some in flight": SQS's counts may lag changes
    by a minute or more (and fauxqs 1.9.2's never catch up by themselves)."""
    body = {
        "Attributes": {
            "ApproximateNumberOfMessages": "0",
            "ApproximateNumberOfMessagesNotVisible": str(MESSAGES),
            "ApproximateNumberOfMessagesDelayed": "0",
            "MessageRetentionPeriod": "345600",
        }
    }
    return world.faults.add(
        Fault(
            "sqs",
            "GetQueueAttributes",
            contains="ApproximateNumberOfMessagesDelayed",
            answer=json.dumps(body),
        )
    )


def _cycles(
    settings: Settings, pause_s: float, steps: list[Callable[[], object]]
) -> list[CycleReport]:
    """A first cycle, then after `pause_s` one cycle per step (run just before it), all on
    one Cycle as `retryd run` keeps it."""
    done: list[CycleReport] = []

    def between(report: CycleReport) -> None:
        done.append(report)
        if len(done) > len(steps):
            return
        if len(done) == 1:
            time.sleep(pause_s)
        steps[len(done) - 1]()

    return run_cycles(settings, 1 + len(steps), between)


def _orders_world(world: World) -> None:
    world.create_queue("retryd-parking")
    world.create_queue("retry-orders")
    policy = json.dumps(
        {"deadLetterTargetArn": world.queue_arn("retry-orders"), "maxReceiveCount": "1"}
    )
    world.create_queue("orders", RedrivePolicy=policy)
    for n in range(MESSAGES):
        world.send("retry-orders", {"orderId": n})


def test_a_dlq_holding_deferred_messages_now_due_is_read_whatever_its_count_says(
    world: World, make_settings: SettingsFactory
) -> None:
    """retryd hid them until a time it knows: once that has passed, the next cycle receives
    from their DLQ even when its depth look-up still says none are visible. The cycle after
    that reads its depth again rather than reuse the "none visible" it began from."""
    _orders_world(world)
    # Every message's first delay is at least 2 s here (jitter is by key): the first
    # cycle, in-process, defers them all before any is due.
    settings = make_settings(backoff={"base_s": DUE_BACKOFF_S, "max_s": DUE_BACKOFF_S})
    lagging: list[Fault] = []

    def lag() -> None:
        lagging.append(_lagging_count(world))

    def catch_up() -> None:
        world.faults.clear()
        world.send("retry-orders", {"orderId": MESSAGES})

    first, second, third = _cycles(settings, DUE_BACKOFF_S + 1.5, [lag, catch_up])

    assert first.outcomes == {"deferred": MESSAGES}
    assert lagging[0].hits >= 1
    assert second.outcomes == {"resubmitted": MESSAGES}
    # The new message was read (and, fresh, deferred for its backoff).
    assert third.received == 1
    assert len(world.drain("orders")) == MESSAGES


def test_a_dlq_whose_deferred_messages_are_not_due_is_not_long_polled(
    world: World, make_settings: SettingsFactory
) -> None:
    """Not yet due: the count is believed, and the DLQ costs its one depth look-up."""
    _orders_world(world)
    settings = make_settings(drain={"receive_wait_s": 1}, backoff={"base_s": 600, "max_s": 600})
    receives: list[Fault] = []

    def count_receives() -> None:
        _lagging_count(world)
        receives.append(
            world.faults.add(Fault("sqs", "ReceiveMessage", code=None, contains="retry-orders"))
        )

    first, second = _cycles(settings, 0, [count_receives])

    assert first.outcomes.get("deferred", 0) == MESSAGES
    assert second.received == 0
    assert receives[0].hits == 0


def test_a_message_paused_without_an_end_is_judged_once_a_cycle(
    world: World, make_settings: SettingsFactory
) -> None:
    """A pause with no end hides its messages for a schedule interval, and the pauses are
    read once a cycle: judged again in the same cycle it could only be paused again. With
    the interval shorter than a long poll, that kept the DLQ's drain (and the cycle) going
    until the cycle's budget."""
    _orders_world(world)
    anyio.run(
        lambda: add_pause(
            MemoryControlStore(), world.queue_arn("orders"), reason="test", by="test", until_s=None
        )
    )
    settings = make_settings(
        schedule={"interval_s": 1},
        drain={"receive_wait_s": 4, "workers_per_queue": 1, "cycle_budget_s": 120},
    )

    async def main() -> CycleReport:
        with anyio.fail_after(30):
            return await run_once(settings, collect=True)

    report = anyio.run(main)

    assert report.reasons[("deferred", "paused")] == MESSAGES
    assert report.outcomes == {"deferred": MESSAGES}
