"""stop: SIGTERM in the middle of a cycle, with and without writes slower than the drain timeout.

The process must exit 0 within its drain deadline (plus a little for closing its
clients), and every message must be somewhere: delivered, parked, or still in
its DLQ to reappear after its lease.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from retryd.sandbox.emulator import MotoServer
from tests.faults import Fault
from tests.reliability.conftest import record_figures
from tests.reliability.front import Front
from tests.reliability.mixed import MixedWorld, base_tables, write_config
from tests.reliability.replicas import fleet, retryd_env, wait_until
from tests.world import World

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

MESSAGES = 120
# From the signal to `stopped` in the log: the drain deadline, plus closing the AWS
# clients and the ledger.
STOPPED_GRACE_S = 0.5
# From `stopped` to the process's exit: interpreter teardown, slow on a loaded 2-core box
# (about 1 s measured there).
EXIT_GRACE_S = 5.0
SLOW_S = 6.0
TARGET_WRITES = [
    ("sqs", "SendMessageBatch"),
    ("lambda", "Invoke"),
    ("sns", "Publish"),
    ("events", "PutEvents"),
    ("states", "StartExecution"),
]
# The ledger writes every change of a call in one TransactWriteItems.
LEDGER_WRITES = [("dynamodb", "TransactWriteItems")]
# (drain timeout, the writes held back, for how long)
CASES = [
    # Held long enough that the signal lands mid-cycle, short enough to settle within the drain.
    pytest.param((10.0, TARGET_WRITES, 2.0), id="settles-in-time"),
    pytest.param((1.0, TARGET_WRITES, SLOW_S), id="target-writes-slower-than-drain"),
    pytest.param((1.0, LEDGER_WRITES, SLOW_S), id="ledger-writes-slower-than-drain"),
]


@pytest.mark.parametrize("case", CASES)
def test_sigterm_mid_cycle_exits_zero_in_time_and_loses_nothing(
    fresh_world: World,
    front: Front,
    rel_server: MotoServer,
    tmp_path: Path,
    case: tuple[float, list[tuple[str, str]], float],
) -> None:
    """SIGTERM with batches in flight: exit 0 by the drain deadline, every message somewhere."""
    drain_timeout_s, slow_writes, slow_s = case
    tmp = tmp_path
    mixed = MixedWorld.build(fresh_world, front)
    mixed.create_ledger_table()
    mixed.fill(MESSAGES, seed=7)
    tables = base_tables(
        tmp,
        # Two queues at a time: some messages are still unreceived when the signal lands,
        # whatever the machine's speed (at the default 16, all 120 can be in flight at once).
        drain={"visibility_timeout_s": 30, "workers_per_queue": 2, "queue_concurrency": 2},
        ledger={"backend": "dynamodb", "table": "retryd-ledger"},
        shutdown={"drain_timeout_s": drain_timeout_s},
    )
    config = write_config(tmp / "retryd.toml", tables)
    # Every slow write is one the process started; calls of the test itself pass.
    held = [
        fresh_world.faults.add(Fault(service, operation, code=None, delay_s=slow_s))
        for service, operation in slow_writes
    ]
    with fleet(config, retryd_env(rel_server.url), tmp / "logs") as processes:
        replica = processes.start()
        wait_until(lambda: any(f.hits for f in held), 60, "a slow write to be in flight")
        signalled = time.monotonic()
        exit_code = replica.stop(timeout_s=60)
        took_s = time.monotonic() - signalled
        text = replica.text()
        logged = {
            str(event["event"]): datetime.fromisoformat(str(event["timestamp"]))
            for event in replica.events()
            if event.get("event") in {"stopping", "stopped"}
        }
    fresh_world.faults.clear()
    tally = mixed.tally()
    stopped_s = (logged["stopped"] - logged["stopping"]).total_seconds()
    record_figures(
        f"stop ({slow_writes[0][0]} writes held {slow_s:.1f}s): "
        f"stopped {stopped_s:.1f}s and exit {exit_code} {took_s:.1f}s after SIGTERM "
        f"(drain timeout {drain_timeout_s:.0f}s), "
        f"{len(tally.lost)} lost, {len(tally.copies)} delivered, {len(tally.parked)} parked, "
        f"{len(tally.in_dlq)} still in a DLQ"
    )
    assert exit_code == 0, text[-3000:]
    assert stopped_s <= drain_timeout_s + STOPPED_GRACE_S
    assert took_s <= drain_timeout_s + EXIT_GRACE_S
    assert tally.lost == []
    assert tally.strangers == []
    assert tally.wrongly_parked() == {}
    assert "Traceback" not in text
    assert ("drain-timeout" in text) == (slow_s > drain_timeout_s)
    assert tally.in_dlq, "the signal came after the last message: nothing was mid-cycle"
