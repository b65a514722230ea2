"""A DLQ of failed Step Functions executions beside other shapes, through whole cycles.

moto has no RedriveExecution: tests/stepfunctions_front.py answers it as AWS documents it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from retryd.models import Outcome
from tests.conftest import SettingsFactory
from tests.e2e.helpers import cycle
from tests.native_helpers import PARKING, detail_of, fixture, parked_by_reason
from tests.stepfunctions_front import fail_execution, redrive_count
from tests.world import ACCOUNT, World

DLQ = "retry-executions"
OTHER_ACCOUNT = "210987654321"


def status_change(execution_arn: str, machine_arn: str, **detail: Any) -> dict[str, Any]:
    """The event an EventBridge rule on failed executions puts in the queue."""
    event: dict[str, Any] = json.loads(fixture("stepfunctions_execution_failed")["Body"])
    event["detail"].update(
        executionArn=execution_arn,
        stateMachineArn=machine_arn,
        input='{"orderId": "42"}',
        stopDate=int(datetime.now(UTC).timestamp() * 1000),
        **detail,
    )
    event["resources"] = [execution_arn]
    return event


def failed_execution(world: World, machine: str, name: str, **how: Any) -> str:
    arn: str = world.client("stepfunctions").start_execution(
        stateMachineArn=machine, name=name, input='{"orderId": "42"}'
    )["executionArn"]
    fail_execution(arn, **how)
    return arn


def arrange(world: World) -> tuple[str, str, str]:
    """A redrivable failure, one stopped 15 days ago, and a Lambda record."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    machine = world.create_state_machine("orders")
    fresh = failed_execution(world, machine, "fresh")
    old = failed_execution(
        world, machine, "old", status="TIMED_OUT", stopped_at=datetime.now(UTC) - timedelta(days=15)
    )
    world.send(DLQ, status_change(fresh, machine))
    world.send(DLQ, status_change(old, machine, status="TIMED_OUT"))
    charge = world.create_function("charge")
    record = json.loads(fixture("lambda_destination_record")["Body"])
    record["requestContext"]["functionArn"] = charge
    record["timestamp"] = datetime.now(UTC).isoformat()
    world.send(DLQ, record)
    return machine, fresh, old


def test_failed_executions_are_redriven_once_and_the_unredrivable_parked(
    world: World, make_settings: SettingsFactory
) -> None:
    """The same failure delivered twice is redriven once; the old one parks not-redrivable;
    the Lambda record beside them is invoked; the queue ends empty."""
    machine, fresh, old = arrange(world)
    world.record()

    first = cycle(make_settings())
    # The same failure delivered again (EventBridge delivers at least once), once the
    # first was redriven: Step Functions shows it redriven, so it is not redriven again.
    world.send(DLQ, status_change(fresh, machine))
    second = cycle(make_settings())

    assert first.decisions is not None
    assert second.decisions is not None
    assert sorted((d.outcome.value, d.reason or "") for d in first.decisions) == [
        ("parked", "not-redrivable"),
        ("resubmitted", ""),
        ("resubmitted", ""),
    ]
    assert [d.outcome for d in second.decisions] == [Outcome.RESUBMITTED]
    assert (redrive_count(fresh), redrive_count(old)) == (1, 0)
    assert len(world.executions(machine)) == 2
    (parked_copy,) = parked_by_reason(world.drain(PARKING))["not-redrivable"]
    assert old in detail_of(parked_copy)
    assert "14 days" in detail_of(parked_copy)
    assert world.depth(DLQ) == 0


def test_an_unredrivable_execution_starts_afresh_when_configured(
    world: World, make_settings: SettingsFactory
) -> None:
    """`not_redrivable = "start-execution"`: the old failure runs again with its input."""
    machine, fresh, old = arrange(world)

    report = cycle(make_settings(stepfunctions={"not_redrivable": "start-execution"}))

    assert report.outcomes == {"resubmitted": 3}
    started = [e for e in world.executions(machine) if e["executionArn"] not in (fresh, old)]
    assert [json.loads(e["input"]) for e in started] == [{"orderId": "42"}]
    assert redrive_count(fresh) == 1
    assert world.depth(DLQ) == 0


def test_an_execution_outside_the_allowlist_is_never_described_or_redriven(
    world: World, make_settings: SettingsFactory
) -> None:
    """A forged event naming another account's execution is parked target-not-allowed, and
    no Step Functions call is made for it."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    foreign = f"arn:aws:states:us-east-1:{OTHER_ACCOUNT}:stateMachine:orders"
    execution = f"arn:aws:states:us-east-1:{OTHER_ACCOUNT}:execution:orders:x"
    world.send(DLQ, status_change(execution, foreign))
    world.record()

    report = cycle(make_settings(guards={"allow_targets": [f"arn:aws:*:*:{ACCOUNT}:*"]}))

    assert report.decisions is not None
    assert [(d.outcome, d.reason) for d in report.decisions] == [
        (Outcome.PARKED, "target-not-allowed")
    ]
    assert step_functions_calls(world) == []


def execution_envelope(execution_arn: str, **target: Any) -> dict[str, Any]:
    """A producer's retryd envelope naming a failed execution to redrive."""
    return {
        "envelope": "retryd/v1",
        "target": {"type": "stepfunctions", "arn": execution_arn, **target},
        "payload": {"orderId": "42"},
    }


def test_an_envelope_naming_a_failed_execution_is_redriven_once_beside_its_event(
    world: World, make_settings: SettingsFactory
) -> None:
    """The envelope and the status-change event of one failure are one piece of work: one
    RedriveExecution, no new execution."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    machine = world.create_state_machine("orders")
    failed = failed_execution(world, machine, "failed-1")
    world.send(DLQ, execution_envelope(failed))
    world.send(DLQ, status_change(failed, machine))

    report = cycle(make_settings())

    assert report.decisions is not None
    assert sorted((d.outcome.value, d.reason) for d in report.decisions) == [
        # One key for the two: the second waits while the first is sent.
        ("deferred", "claimed-elsewhere"),
        ("resubmitted", ""),
    ]
    assert redrive_count(failed) == 1
    assert [e["executionArn"] for e in world.executions(machine)] == [failed]


def test_an_envelope_naming_an_execution_outside_the_allowlist_is_never_redriven(
    world: World, make_settings: SettingsFactory
) -> None:
    """Another account's execution in an envelope: parked target-not-allowed (the state
    machine is what the allowlist judges), and no Step Functions call is made."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    execution = f"arn:aws:states:us-east-1:{OTHER_ACCOUNT}:execution:orders:x"
    world.send(DLQ, execution_envelope(execution))
    world.record()

    report = cycle(make_settings(guards={"allow_targets": [f"arn:aws:*:*:{ACCOUNT}:*"]}))

    assert report.decisions is not None
    assert [(d.outcome, d.reason) for d in report.decisions] == [
        (Outcome.PARKED, "target-not-allowed")
    ]
    assert step_functions_calls(world) == []


def test_an_envelope_execution_that_cannot_be_redriven_starts_afresh_with_its_payload(
    world: World, make_settings: SettingsFactory
) -> None:
    """Stopped 15 days ago, `not_redrivable = "start-execution"`: a new execution with the
    envelope's payload as its input."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    machine = world.create_state_machine("orders")
    old = failed_execution(
        world, machine, "old", status="TIMED_OUT", stopped_at=datetime.now(UTC) - timedelta(days=15)
    )
    world.send(DLQ, execution_envelope(old))

    report = cycle(make_settings(stepfunctions={"not_redrivable": "start-execution"}))

    assert report.outcomes == {"resubmitted": 1}
    started = [e for e in world.executions(machine) if e["executionArn"] != old]
    assert [json.loads(e["input"]) for e in started] == [{"orderId": "42"}]
    assert redrive_count(old) == 0


def step_functions_calls(world: World) -> list[dict[str, Any]]:
    """The Step Functions requests the emulator recorded since `world.record()`."""
    return [
        entry
        for entry in world.server.recording()
        if "AWSStepFunctions" in entry.get("headers", {}).get("X-Amz-Target", "")
    ]
