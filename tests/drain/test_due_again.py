"""A message deferred in a cycle that comes back due in the same cycle is judged again.

Deferred for its backoff, a message is hidden until it is due. While its DLQ is still
being drained it then comes back to the same drain; taken for one already handled, it
was left hidden for a whole lease (`drain.visibility_timeout_s`) beyond its due time,
and a drain that met three such batches stopped with other messages still in the DLQ.
The bench's steady world met it: 7 of 30,000 messages were still in their DLQs two
minutes after the feed stopped.
"""

from __future__ import annotations

import json

import anyio

from retryd.drain.cycle import CycleReport
from retryd.service.lifecycle import run_once
from tests.conftest import SettingsFactory
from tests.world import World

MESSAGES = 6
# Each first resubmission waits up to this long after the message reached its DLQ
# (jittered by key), well inside one long poll of the drain.
BACKOFF_S = 2
RECEIVE_WAIT_S = 5


def test_a_message_deferred_for_its_backoff_is_resubmitted_when_due_in_the_same_cycle(
    world: World, make_settings: SettingsFactory
) -> None:
    world.create_queue("retryd-parking")
    world.create_queue("retry-orders")
    policy = json.dumps(
        {"deadLetterTargetArn": world.queue_arn("retry-orders"), "maxReceiveCount": "1"}
    )
    world.create_queue("orders", RedrivePolicy=policy)
    for n in range(MESSAGES):
        world.send("retry-orders", {"orderId": n})
    settings = make_settings(
        drain={"receive_wait_s": RECEIVE_WAIT_S, "workers_per_queue": 1},
        backoff={"base_s": BACKOFF_S, "max_s": BACKOFF_S},
    )

    async def main() -> CycleReport:
        with anyio.fail_after(60):
            return await run_once(settings, collect=True)

    report = anyio.run(main)

    # The backoff held some back at first: the case under test happened.
    assert report.outcomes.get("deferred", 0) >= 1
    assert report.outcomes.get("resubmitted", 0) == MESSAGES
    back = sorted(json.loads(m["Body"])["orderId"] for m in world.drain("orders"))
    assert back == list(range(MESSAGES))
    assert world.drain("retry-orders") == []
