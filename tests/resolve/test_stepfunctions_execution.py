"""The failed-execution resolver: EventBridge status-change events become redrives."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.models import FailedExecution, Job, ParkReason, Target, TargetType, Unresolvable
from retryd.resolve.envelope import EnvelopeResolver
from retryd.resolve.stepfunctions_execution import StepFunctionsExecutionResolver
from tests.native_helpers import fixture, letter, load_letter

MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:state-machine-name"
EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:state-machine-name:execution-name"


def event_with(**detail: object) -> dict[str, Any]:
    """The documented FAILED event with detail fields changed (None removes one)."""
    event: dict[str, Any] = json.loads(fixture("stepfunctions_execution_failed")["Body"])
    for name, value in detail.items():
        if value is None:
            event["detail"].pop(name, None)
        else:
            event["detail"][name] = value
    return event


def resolve(
    body: str | dict[str, Any] | list[Any], *, start: bool = False
) -> Job | Unresolvable | None:
    return StepFunctionsExecutionResolver(start_if_not_redrivable=start).resolve(letter(body))


def test_the_documented_event_is_a_redrive_of_its_execution_on_its_state_machine() -> None:
    """Target: the state machine; origin: the execution; body: its input; first failure: stop."""
    job = StepFunctionsExecutionResolver().resolve(load_letter("stepfunctions_execution_failed"))
    assert isinstance(job, Job)
    assert job.target == Target(TargetType.STEPFUNCTIONS, MACHINE)
    assert isinstance(job.origin, FailedExecution)
    assert (job.origin.execution_arn, job.origin.status) == (EXECUTION, "FAILED")
    assert not job.origin.start_if_not_redrivable
    assert job.body == "{}"
    assert job.first_failed_at == datetime(2019, 2, 26, 23, 50, 17, 576000, tzinfo=UTC)
    assert job.resolver == "stepfunctions-execution"


def test_the_same_failure_twice_has_one_key_and_a_later_failure_another() -> None:
    """Keyed on execution and redrive count, not on the input two executions may share."""
    first, again = resolve(event_with()), resolve(event_with())
    later = resolve(event_with(redriveCount=1))
    other = resolve(event_with(executionArn=EXECUTION + "-2"))
    assert isinstance(first, Job)
    assert isinstance(again, Job)
    assert isinstance(later, Job)
    assert isinstance(other, Job)
    assert first.key == again.key
    assert len({first.key, later.key, other.key}) == 3


def test_the_fallback_setting_travels_with_the_job() -> None:
    """start_if_not_redrivable comes from `[stepfunctions] not_redrivable`."""
    job = resolve(event_with(), start=True)
    assert isinstance(job, Job)
    assert isinstance(job.origin, FailedExecution)
    assert job.origin.start_if_not_redrivable


@pytest.mark.parametrize("status", ["RUNNING", "SUCCEEDED", "PENDING_REDRIVE", 7])
def test_a_status_that_is_no_failure_is_parked_unresolvable(status: object) -> None:
    """A rule matching every status: nothing to redrive."""
    answer = resolve(event_with(status=status))
    assert isinstance(answer, Unresolvable)
    assert answer.reason is ParkReason.UNRESOLVABLE


@pytest.mark.parametrize(
    "execution",
    [
        "not an arn",
        7,
        "arn:aws:states:us-east-1:123456789012:stateMachine:state-machine-name",
        "arn:aws:states:us-east-1:123456789012:express:state-machine-name:x:y",
        "arn:aws:lambda:us-east-1:123456789012:execution:state-machine-name:x",
        "arn:aws:states:us-east-1:12345:execution:state-machine-name:x",
    ],
)
def test_an_execution_arn_that_is_not_a_standard_execution_is_unresolvable(
    execution: object,
) -> None:
    """Nothing is redriven that is not a Standard execution ARN of a valid state machine."""
    answer = resolve(event_with(executionArn=execution))
    assert isinstance(answer, Unresolvable)
    assert answer.reason is ParkReason.UNRESOLVABLE


def test_a_state_machine_arn_that_disagrees_with_the_execution_is_unresolvable() -> None:
    """A forged stateMachineArn cannot steer the target: the execution ARN's machine is it."""
    forged = "arn:aws:states:us-east-1:123456789012:stateMachine:allowed-machine"
    answer = resolve(event_with(stateMachineArn=forged))
    assert isinstance(answer, Unresolvable)
    assert "is not the state machine of execution" in answer.detail


def test_a_missing_input_leaves_an_empty_body() -> None:
    """inputDetails.included false: the job has no input to start afresh with."""
    job = resolve(event_with(input=None))
    assert isinstance(job, Job)
    assert job.body == ""


@pytest.mark.parametrize(
    "body",
    [
        {"source": "aws.states", "detail-type": "Step Functions State Machine Status Change"},
        {"source": "aws.ec2", "detail-type": "Step Functions Execution Status Change"},
        {"source": "aws.states", "detail-type": "Step Functions Execution Status Change"},
        [1],
        "text",
    ],
)
def test_other_shapes_are_left_to_the_next_resolver(body: str | dict[str, Any] | list[Any]) -> None:
    """Only aws.states execution status changes with a detail object are this shape."""
    assert resolve(body) is None


@given(
    st.dictionaries(
        st.sampled_from(
            ["executionArn", "stateMachineArn", "status", "input", "redriveCount", "stopDate"]
        ),
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    )
)
def test_any_detail_resolves_to_an_answer_without_raising(detail: dict[str, object]) -> None:
    """Whatever the detail holds, the resolver answers (a Job only for a Standard execution)."""
    answer = resolve(event_with(**{k: v for k, v in detail.items() if v is not None}))
    assert answer is not None
    if isinstance(answer, Job):
        assert answer.target.type is TargetType.STEPFUNCTIONS
        assert isinstance(answer.origin, FailedExecution)
        assert answer.origin.execution_arn.split(":")[5] == "execution"


def execution_envelope(**target: object) -> dict[str, Any]:
    """A retryd envelope naming a failed execution to redrive (its target fields changed)."""
    return {
        "envelope": "retryd/v1",
        "target": {"type": "stepfunctions", "arn": EXECUTION, **target},
        "payload": {"orderId": "42"},
    }


def resolve_envelope(body: dict[str, Any], *, start: bool = False) -> Job | Unresolvable | None:
    return EnvelopeResolver(start_if_not_redrivable=start).resolve(letter(body))


def test_an_envelope_naming_an_execution_is_the_events_redrive_under_the_same_key() -> None:
    """target.arn an execution ARN: the state machine is the target, the execution the origin,
    the payload the input for a fresh start; keyed as the status-change event of that failure
    is, so one failure delivered both ways is redriven once."""
    job = resolve_envelope(execution_envelope(), start=True)
    event_job = resolve(event_with(input='{"orderId":"42"}'))
    assert isinstance(job, Job)
    assert isinstance(event_job, Job)
    assert job.target == Target(TargetType.STEPFUNCTIONS, MACHINE)
    assert isinstance(job.origin, FailedExecution)
    assert job.origin.execution_arn == EXECUTION
    assert job.origin.redrive_count == 0
    assert job.origin.start_if_not_redrivable
    assert json.loads(job.body) == {"orderId": "42"}
    assert job.key == event_job.key
    assert job.resolver == "envelope"


def test_an_envelope_execution_keys_on_its_redrive_count_or_the_producers_key() -> None:
    """A failure after a redrive (redriveCount 1) is new work; an idempotencyKey wins."""
    first = resolve_envelope(execution_envelope())
    later = resolve_envelope(execution_envelope(redriveCount=1))
    keyed = resolve_envelope({**execution_envelope(), "idempotencyKey": "order-42"})
    assert isinstance(first, Job)
    assert isinstance(later, Job)
    assert isinstance(keyed, Job)
    assert isinstance(later.origin, FailedExecution)
    assert later.origin.redrive_count == 1
    assert len({first.key, later.key, keyed.key}) == 3
    assert keyed.key == "order-42"


def test_an_envelope_execution_with_a_null_payload_has_no_input_to_start_with() -> None:
    """payload null: the redrive goes on; a fresh start has no input (as an event without one)."""
    job = resolve_envelope({**execution_envelope(), "payload": None})
    assert isinstance(job, Job)
    assert job.body == ""


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ({"arn": "arn:aws:states:us-east-1:123456789012:express:m:x:y"}, "is not a Standard"),
        ({"arn": "arn:aws:states:us-east-1:12345:execution:m:x"}, "execution"),
        ({"arn": "arn:aws:states:us-east-1:123456789012:execution:m"}, "is not a Standard"),
        ({"redriveCount": -1}, "redriveCount"),
        ({"redriveCount": True}, "redriveCount"),
        ({"type": "lambda"}, "must be a state machine ARN"),
        (
            {"arn": MACHINE, "redriveCount": 1},
            "redriveCount applies only to an execution ARN",
        ),
    ],
)
def test_a_bad_execution_target_is_an_invalid_envelope(target: dict[str, Any], says: str) -> None:
    """An execution ARN that names no Standard execution, a bad redriveCount, or a
    redriveCount beside a state machine ARN: parked invalid-envelope, with the reason."""
    answer = resolve_envelope(execution_envelope(**target))
    assert isinstance(answer, Unresolvable)
    assert answer.reason is ParkReason.INVALID_ENVELOPE
    assert says in answer.detail, answer.detail
