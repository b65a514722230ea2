"""A batch kept alive by its heartbeat, and parked once through the ledger (issue 21)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
from prometheus_client import CollectorRegistry

from retryd.aws import open_clients
from retryd.drain.cycle import Cycle, CycleReport
from retryd.ledger import open_ledger
from retryd.metrics import Metrics
from retryd.models import Decision, Outcome
from retryd.resolve.keys import parking_key
from retryd.settings import Settings
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.world import ACCOUNT, World, envelope

PARKING = "retryd-parking"
POISON = "poison: no envelope, no route"
LEASE = {"visibility_timeout_s": 5, "workers_per_queue": 1}
LABELS = {"queue": "retry-slow", "account": ACCOUNT, "region": "us-east-1"}


def _cycles(
    settings: Settings, count: int, between: Callable[[CycleReport], None] | None = None
) -> tuple[list[CycleReport], CollectorRegistry]:
    """`count` cycles of one Cycle and one ledger, and the registry they counted on."""
    registry = CollectorRegistry()

    async def main() -> list[CycleReport]:
        metrics = Metrics(registry)
        async with (
            open_clients(settings.aws) as clients,
            open_ledger(settings.ledger, clients, metrics) as ledger,
        ):
            cycle = Cycle(settings, clients, metrics, ledger=ledger)
            reports = []
            for _ in range(count):
                reports.append(await cycle.run(anyio.Event(), collect=True))
                if between is not None:
                    await anyio.to_thread.run_sync(between, reports[-1])
        return reports

    return anyio.run(main), registry


def _decisions(report: CycleReport) -> list[Decision]:
    assert report.decisions is not None
    return report.decisions


def _slow_world(world: World, delay_s: float) -> None:
    world.create_queue(PARKING)
    world.create_queue("retry-slow")
    world.create_queue("slow-dest")
    world.send("retry-slow", envelope("sqs", world.queue_arn("slow-dest"), {"n": 1}))
    world.faults.add(
        Fault("sqs", "SendMessageBatch", code=None, delay_s=delay_s, contains="slow-dest")
    )


def test_a_target_slower_than_the_lease_is_waited_for_and_sent_once(
    world: World, make_settings: SettingsFactory
) -> None:
    """An answer taking 1.6 leases: resubmitted (not lease-expired), deleted, the lease extended."""
    _slow_world(world, delay_s=8)
    [report], registry = _cycles(make_settings(drain=LEASE), 1)
    world.faults.clear()
    assert [(d.outcome, d.reason) for d in _decisions(report)] == [(Outcome.RESUBMITTED, "")]
    assert len(world.drain("slow-dest")) == 1
    assert world.depth("retry-slow") == 0
    extended = registry.get_sample_value("retryd_lease_extensions_total", LABELS)
    assert extended is not None
    assert extended >= 1


def test_a_failing_heartbeat_stops_extending_and_the_message_stays(
    world: World, make_settings: SettingsFactory
) -> None:
    """Extensions throttled: the batch ends at its first lease, lease-expired, nothing lost."""
    _slow_world(world, delay_s=8)
    world.faults.add(Fault("sqs", "ChangeMessageVisibilityBatch"))
    [report], registry = _cycles(make_settings(drain=LEASE), 1)
    world.faults.clear()
    [decision] = _decisions(report)
    assert (decision.outcome, decision.reason) == (Outcome.FAILED, "lease-expired")
    assert "heartbeat failed" in decision.detail
    failures = registry.get_sample_value(
        "retryd_heartbeat_failures_total", {**LABELS, "step": "visibility"}
    )
    assert failures == 1
    assert world.depth("retry-slow") == 1


def test_a_parked_message_whose_delete_was_lost_is_only_deleted_next_time(
    world: World, make_settings: SettingsFactory
) -> None:
    """Parked, its delete lost: the next cycle finds it parked and only deletes it; one copy."""
    world.create_queue(PARKING)
    world.create_queue("retry-slow")
    world.send("retry-slow", POISON)
    world.faults.add(Fault("sqs", "DeleteMessageBatch", code="InternalError", status=500, times=1))

    def show_again(report: CycleReport) -> None:
        sqs = world.client("sqs")
        for decision in _decisions(report):
            try:
                sqs.change_message_visibility(
                    QueueUrl=world.queue_url("retry-slow"),
                    ReceiptHandle=decision.letter.receipt_handle,
                    VisibilityTimeout=0,
                )
            except sqs.exceptions.ReceiptHandleIsInvalid:
                continue  # deleted: nothing to show again

    first, second = _cycles(make_settings(drain=LEASE), 2, show_again)[0]
    assert [(d.outcome, d.reason) for d in _decisions(first)] == [(Outcome.PARKED, "unresolvable")]
    assert [(d.outcome, d.reason) for d in _decisions(second)] == [
        (Outcome.PARKED, "already-parked")
    ]
    assert [m["Body"] for m in world.drain(PARKING)] == [POISON]
    assert world.depth("retry-slow") == 0


def test_a_parked_copy_is_recorded_with_its_parking_message_id(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """The ledger keeps (message, attempt, parking message id) under the DLQ-and-body key."""
    world.create_queue(PARKING)
    world.create_queue("retry-slow")
    world.send("retry-slow", POISON)
    ledger = {"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite3")}
    settings = make_settings(drain=LEASE, ledger=ledger)
    [report], _ = _cycles(settings, 1)
    [decision] = _decisions(report)
    [copy] = world.drain(PARKING)
    key = parking_key(world.queue_arn("retry-slow"), POISON)

    async def read() -> tuple[tuple[str, int, str], ...]:
        async with open_ledger(settings.ledger, None) as opened:
            return (await opened.read([key]))[key].parked

    assert anyio.run(read) == ((decision.letter.message_id, 0, copy["MessageId"]),)
