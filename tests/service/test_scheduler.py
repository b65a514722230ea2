"""How long `retryd run` rests between cycles: briefly while messages leave, else an interval."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from retryd.drain.cycle import CycleReport
from retryd.models import CYCLE_OUTCOMES, DELETED_OUTCOMES
from retryd.service.scheduler import rest_s
from retryd.settings import ScheduleSettings
from tests.faults import Fault
from tests.processes import retryd_run
from tests.world import ACCOUNT, QUIET_GUARDS_TOML, REGION, World, envelope

counts = st.fixed_dictionaries(
    {outcome.value: st.integers(min_value=0, max_value=50) for outcome in CYCLE_OUTCOMES}
)
seconds = st.floats(min_value=0.001, max_value=3_600, allow_nan=False)


@given(counts, st.booleans(), seconds, st.floats(min_value=0, max_value=7_200))
def test_only_a_cycle_that_moved_messages_without_errors_rests_briefly(
    outcomes: dict[str, int], errored: bool, interval_s: float, busy_interval_s: float
) -> None:
    """Resubmitted or parked, no error: the busy rest (never longer than the interval);
    anything else (deferred or failed only, an error, an empty cycle): the full interval."""
    report = CycleReport(outcomes=Counter(outcomes), errors=["boom"] if errored else [])
    schedule = ScheduleSettings(interval_s=interval_s, busy_interval_s=busy_interval_s)
    moved = sum(outcomes[outcome.value] for outcome in DELETED_OUTCOMES)
    if moved and not errored:
        assert rest_s(report, schedule) == min(busy_interval_s, interval_s)
    else:
        assert rest_s(report, schedule) == interval_s


def test_the_defaults_rest_a_minute_only_when_nothing_left() -> None:
    schedule = ScheduleSettings()
    assert rest_s(CycleReport(outcomes=Counter(resubmitted=3)), schedule) == 0
    assert rest_s(CycleReport(outcomes=Counter(deferred=3)), schedule) == 60
    assert rest_s(CycleReport(), schedule) == 60


CONFIG = (
    f"""
[aws]
max_attempts = 1

[discovery]
queue_prefixes = ["retry-"]

[drain]
receive_wait_s = 1

[guards]
allow_targets = ["arn:aws:*:{REGION}:{ACCOUNT}:*"]

[http]
enabled = false

[schedule]
interval_s = 600
"""
    + QUIET_GUARDS_TOML
)


def test_a_dlq_that_refilled_during_a_cycle_is_drained_at_once_not_after_the_interval(
    world: World, tmp_path: Path
) -> None:
    """Two DLQs; one's target answers slowly, so the cycle outlasts the other's drain, and
    a letter lands in that other DLQ meanwhile: it reaches its target at the next cycle,
    at once, not after the ten minutes `retryd run` rests when idle.

    Before, `interval_s` of rest always followed a cycle, so that letter waited it all."""
    world.create_queue("retryd-parking")
    for name in ("retry-work", "retry-slow", "dest", "dest-slow"):
        world.create_queue(name)
    world.send("retry-work", envelope("sqs", world.queue_arn("dest"), {"n": 0}))
    world.send("retry-slow", envelope("sqs", world.queue_arn("dest-slow"), {"n": 0}))
    slow = Fault("sqs", "SendMessage", code=None, delay_s=15, contains="dest-slow", times=1)
    slow_batch = Fault(
        "sqs", "SendMessageBatch", code=None, delay_s=15, contains="dest-slow", times=1
    )
    world.faults.add(slow)
    world.faults.add(slow_batch)
    config = tmp_path / "retryd.toml"
    config.write_text(CONFIG)
    world.record()

    with retryd_run(config) as process:
        wait_until(process, lambda: world.depth("dest") == 1 and world.depth("retry-work") == 0)
        # retry-work's drain ends with a receive that long-polls 1 s for nothing: after it,
        # a new letter can only be found by another cycle.
        wait_until(process, lambda: receives(world, "retry-work") >= 2)
        time.sleep(2)
        assert slow.hits + slow_batch.hits == 1, "the slow target's send is held: cycle one goes on"
        world.send("retry-work", envelope("sqs", world.queue_arn("dest"), {"n": 1}))
        # Far below the 600 s rest, far above a cycle.
        wait_until(process, lambda: world.depth("dest") == 2, within_s=60)
    world.wait_visible(["dest", "retry-work", "dest-slow"])
    assert sorted(json.loads(m["Body"])["n"] for m in world.drain("dest")) == [0, 1]
    assert [json.loads(m["Body"])["n"] for m in world.drain("dest-slow")] == [0]


def receives(world: World, queue: str) -> int:
    """ReceiveMessage requests on `queue` the emulator has seen since `world.record()`."""
    return sum(
        entry["headers"].get("X-Amz-Target") == "AmazonSQS.ReceiveMessage"
        and f"/{queue}".encode() in base64.b64decode(entry["body"])
        for entry in world.server.recording()
    )


def wait_until(
    process: subprocess.Popen[str], done: Callable[[], bool], within_s: float = 30
) -> None:
    deadline_s = time.monotonic() + within_s
    while not done():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline_s, f"not within {within_s} s"
        time.sleep(0.1)
