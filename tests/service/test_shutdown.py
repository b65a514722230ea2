"""SIGTERM while messages are in flight: a real `retryd run`, a real signal, a slow target."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.faults import Fault
from tests.processes import retryd_run
from tests.world import ACCOUNT, QUIET_GUARDS_TOML, REGION, World, envelope

MESSAGES = 60


def config(drain_timeout_s: float) -> str:
    return (
        f"""
[aws]
max_attempts = 1
read_timeout_s = 30

[discovery]
queue_prefixes = ["retry-"]

[drain]
receive_wait_s = 0
workers_per_queue = 1
visibility_timeout_s = 5

[guards]
allow_targets = ["arn:aws:*:{REGION}:{ACCOUNT}:*"]

[http]
enabled = false

[shutdown]
drain_timeout_s = {drain_timeout_s}
"""
        + QUIET_GUARDS_TOML
    )


def write_config(tmp_path: Path, drain_timeout_s: float) -> Path:
    path = tmp_path / "retryd.toml"
    path.write_text(config(drain_timeout_s))
    return path


def fill(world: World) -> None:
    world.create_queue("retryd-parking")
    world.create_queue("retry-work")
    world.create_queue("dest")
    for n in range(MESSAGES):
        world.send("retry-work", envelope("sqs", world.queue_arn("dest"), {"n": n}))


def wait_for_first_delivery(world: World, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while world.depth("dest") == 0:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "retryd delivered nothing within 30 s"
        time.sleep(0.1)


def wait_for_held_call(fault: Fault, process: subprocess.Popen[str]) -> None:
    """Until a call is being held back by `fault`: a batch is then surely in flight."""
    deadline = time.monotonic() + 30
    while fault.hits == 0:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "retryd never reached the slow call"
        time.sleep(0.05)


def numbers(messages: list[dict[str, object]]) -> list[int]:
    """The `n` of each message, whether delivered (the payload) or still an envelope."""
    bodies = [json.loads(str(m["Body"])) for m in messages]
    return [int(body.get("payload", body)["n"]) for body in bodies]


def test_sigterm_lets_in_flight_batches_settle_and_loses_nothing(
    world: World, tmp_path: Path
) -> None:
    """With time to drain, the batch in flight finishes and is deleted; the rest stay queued."""
    fill(world)
    world.faults.add(Fault("sqs", "SendMessageBatch", code=None, delay_s=0.5))
    with retryd_run(write_config(tmp_path, 20)) as process:
        wait_for_first_delivery(world, process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    assert "drain-timeout" not in stderr
    delivered = numbers(world.drain("dest"))
    world.faults.clear()
    # Until the leases of anything received but not handled run out (5 s at most).
    world.wait_visible(["retry-work"])
    left = numbers(world.drain("retry-work"))
    assert len(delivered) < MESSAGES, "the signal came too late to test anything"
    assert len(set(delivered)) == len(delivered), "a settled batch was delivered twice"
    assert set(delivered).isdisjoint(left), "a delivered message was not deleted"
    assert sorted(delivered + left) == list(range(MESSAGES))


def test_drain_timeout_cancels_in_flight_work_without_losing_it(
    world: World, tmp_path: Path
) -> None:
    """A target slower than the drain timeout is cancelled; exit 0, every message somewhere."""
    fill(world)
    # The first batch goes through; the next ones take longer than the drain timeout.
    world.faults.add(Fault("sqs", "SendMessageBatch", code=None, delay_s=0.01, times=1))
    slow = world.faults.add(Fault("sqs", "SendMessageBatch", code=None, delay_s=4))
    with retryd_run(write_config(tmp_path, 0.5)) as process:
        wait_for_first_delivery(world, process)
        wait_for_held_call(slow, process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    assert "drain-timeout" in stderr
    world.faults.clear()  # the slow call is abandoned rather than landing late
    world.wait_visible(["retry-work"])  # until the leases run out (5 s at most)
    delivered = numbers(world.drain("dest"))
    left = numbers(world.drain("retry-work"))
    # Cancelled after the target took it but before the delete: it may be in both
    # places (the attempt ledger is what will deduplicate that), never in neither.
    assert set(delivered) | set(left) == set(range(MESSAGES))


def test_second_signal_exits_at_once(world: World, tmp_path: Path) -> None:
    """A second SIGTERM does not wait for the drain timeout."""
    fill(world)
    world.faults.add(Fault("sqs", "SendMessageBatch", code=None, delay_s=0.01, times=1))
    slow = world.faults.add(Fault("sqs", "SendMessageBatch", code=None, delay_s=8))
    with retryd_run(write_config(tmp_path, 60)) as process:
        wait_for_first_delivery(world, process)
        wait_for_held_call(slow, process)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        waited_s = time.monotonic() - started

    assert process.returncode == 0, stderr
    assert "stopping-now" in stderr
    assert waited_s < 6, f"the second signal still waited {waited_s:.1f}s"
