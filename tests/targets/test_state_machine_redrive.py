"""Failed Step Functions executions are redriven, or handled as configured when they cannot be.

moto has no RedriveExecution: tests/stepfunctions_front.py answers it as AWS documents it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.aws import AwsClients
from retryd.models import FailedExecution, Job, Refusal, Target
from retryd.settle.outcome import rejected
from retryd.targets.base import Resubmitter
from retryd.targets.state_machine import (
    CLIENT_TOKEN_MAX_CHARS,
    StateMachineTarget,
    client_token,
    not_redrivable_because,
)
from tests.conftest import SettingsFactory
from tests.stepfunctions_front import fail_execution, redrive_count
from tests.targets.helpers import make_job, submit
from tests.world import World


def sfn_target(clients: AwsClients) -> Resubmitter:
    return StateMachineTarget(clients.stepfunctions, anyio.CapacityLimiter(4))


def failed_run(world: World, machine: str, name: str = "run-1", **how: object) -> str:
    """An execution of `machine` that ended as `how` says (FAILED now, by default)."""
    sfn = world.client("stepfunctions")
    arn: str = sfn.start_execution(stateMachineArn=machine, name=name, input='{"n": 1}')[
        "executionArn"
    ]
    fail_execution(arn, **how)  # type: ignore[arg-type]
    return arn


def redrive_job(target: Target, execution_arn: str, *, start: bool = False, key: str = "k") -> Job:
    """The job the resolver makes of the failed execution's status-change event."""
    job = make_job(target, '{"n": 1}', key=key)
    return replace(
        job,
        origin=FailedExecution(execution_arn, "FAILED", start_if_not_redrivable=start),
    )


def test_a_redrivable_execution_is_redriven_not_started_again(
    world: World, make_settings: SettingsFactory
) -> None:
    """RedriveExecution resumes the same execution; no new execution is started."""
    target = Target.from_arn(world.create_state_machine("orders"))
    arn = failed_run(world, target.arn)

    (delivery,) = submit(make_settings, sfn_target, target, [redrive_job(target, arn)])

    assert delivery.accepted
    assert redrive_count(arn) == 1
    assert [e["executionArn"] for e in world.executions(target.arn)] == [arn]
    assert world.executions(target.arn)[0]["status"] == "RUNNING"


def test_the_same_failure_sent_twice_is_redriven_once(
    world: World, make_settings: SettingsFactory
) -> None:
    """A second try of the same job (a crash before the ledger commit) finds it redriven."""
    target = Target.from_arn(world.create_state_machine("orders"))
    arn = failed_run(world, target.arn)
    job = redrive_job(target, arn)

    first = submit(make_settings, sfn_target, target, [job])
    again = submit(make_settings, sfn_target, target, [job])

    assert first[0].accepted
    assert again[0].accepted
    assert redrive_count(arn) == 1


def test_a_redriven_execution_that_failed_again_is_not_redriven_by_the_old_event(
    world: World, make_settings: SettingsFactory
) -> None:
    """An event from before a redrive (redriveCount 0) is done once the count moved on."""
    target = Target.from_arn(world.create_state_machine("orders"))
    arn = failed_run(world, target.arn)
    submit(make_settings, sfn_target, target, [redrive_job(target, arn, key="first")])
    fail_execution(arn)

    (delivery,) = submit(make_settings, sfn_target, target, [redrive_job(target, arn, key="old")])

    assert delivery.accepted
    assert redrive_count(arn) == 1


def test_a_not_redrivable_execution_is_parked_not_redrivable_by_default(
    world: World, make_settings: SettingsFactory
) -> None:
    """Stopped 15 days ago: refused with why, and that refusal parks `not-redrivable`."""
    target = Target.from_arn(world.create_state_machine("orders"))
    arn = failed_run(world, target.arn, stopped_at=datetime.now(UTC) - timedelta(days=15))

    (delivery,) = submit(make_settings, sfn_target, target, [redrive_job(target, arn)])

    assert delivery.error is not None
    assert delivery.error.refusal is Refusal.NOT_REDRIVABLE
    assert "14 days" in delivery.error.message
    park = rejected(delivery)
    assert park is not None
    assert park.reason.value == "not-redrivable"
    assert redrive_count(arn) == 0
    assert len(world.executions(target.arn)) == 1


def test_a_not_redrivable_execution_starts_afresh_when_configured(
    world: World, make_settings: SettingsFactory
) -> None:
    """With the start fallback, a new execution runs with the original input."""
    target = Target.from_arn(world.create_state_machine("orders"))
    arn = failed_run(world, target.arn, not_redrivable="event history too long")

    (delivery,) = submit(make_settings, sfn_target, target, [redrive_job(target, arn, start=True)])

    assert delivery.accepted
    started = [e for e in world.executions(target.arn) if e["executionArn"] != arn]
    assert [json.loads(e["input"]) for e in started] == [{"n": 1}]
    assert redrive_count(arn) == 0


def test_a_vanished_execution_is_not_redrivable(
    world: World, make_settings: SettingsFactory
) -> None:
    """ExecutionDoesNotExist: refused not-redrivable, saying it no longer exists."""
    target = Target.from_arn(world.create_state_machine("orders"))
    arn = "arn:aws:states:us-east-1:123456789012:execution:orders:gone"

    (delivery,) = submit(make_settings, sfn_target, target, [redrive_job(target, arn)])

    assert delivery.error is not None
    assert delivery.error.refusal is Refusal.NOT_REDRIVABLE
    assert "no longer exists" in delivery.error.message


@given(st.text(min_size=1, max_size=600))
def test_client_tokens_are_short_printable_ascii_and_one_per_key(key: str) -> None:
    """1-64 printable ASCII characters (the API's constraint), the same for the same key."""
    token = client_token(key)
    assert 1 <= len(token) <= CLIENT_TOKEN_MAX_CHARS
    assert token.isascii()
    assert token.isprintable()
    assert token == client_token(key)
    assert token != client_token(key + "x")


@pytest.mark.parametrize(
    ("described", "why"),
    [
        ({"status": "FAILED", "redriveStatus": "REDRIVABLE"}, None),
        ({"status": "FAILED", "redriveStatus": "NOT_REDRIVABLE"}, "NOT_REDRIVABLE"),
        (
            {"status": "FAILED", "redriveStatus": "NOT_REDRIVABLE", "redriveStatusReason": "r"},
            "r",
        ),
        ({"status": "ABORTED"}, None),
        ({"status": "SUCCEEDED"}, "it is SUCCEEDED"),
        ({"status": "TIMED_OUT", "stopDate": datetime(2026, 1, 1, tzinfo=UTC)}, "14 days"),
    ],
)
def test_step_functions_own_redrive_status_decides_else_the_documented_rules(
    described: dict[str, object], why: str | None
) -> None:
    """redriveStatus when given; without it, closed unsuccessfully within 14 days."""
    answer = not_redrivable_because(described, datetime(2026, 12, 7, tzinfo=UTC))
    assert answer == why if why is None or answer is None else why in answer
