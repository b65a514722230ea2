"""The Step Functions resubmitter: one named execution per dead letter, against the moto server."""

from __future__ import annotations

import json
from typing import Any, cast

import anyio
import pytest
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from retryd.aws import AwsClients
from retryd.models import ErrorClass, Job, Refusal, SendError, Target
from retryd.targets.base import Resubmitter
from retryd.targets.state_machine import (
    EXECUTION_INPUT_MAX_BYTES,
    EXECUTION_NAME_MAX_CHARS,
    StateMachineTarget,
    execution_name,
)
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.targets.helpers import (
    DEEP_JSON,
    YEAR_ONE_EVENT,
    codes,
    make_job,
    permanent,
    recorded_calls,
    submit,
)
from tests.world import ACCOUNT, REGION, World


def name_of(job: Job) -> str:
    """The execution name retryd gives a job."""
    return execution_name(job.key, job.letter.message_id, job.next_attempt)


def sfn_target(clients: AwsClients) -> Resubmitter:
    return StateMachineTarget(clients.stepfunctions, anyio.CapacityLimiter(4))


def test_state_machine_starts_named_execution_with_the_body_as_input(
    world: World, make_settings: SettingsFactory
) -> None:
    """Each job starts one execution whose input is the body and whose name is its dead letter's."""
    target = Target.from_arn(world.create_state_machine("orders"))
    jobs = [make_job(target, json.dumps({"n": n}), key=f"order-{n}", attempt=1) for n in range(2)]

    deliveries = submit(make_settings, sfn_target, target, jobs)

    assert all(d.accepted for d in deliveries)
    started = {execution["name"]: execution["input"] for execution in world.executions(target.arn)}
    assert started == {name_of(job): job.body for job in jobs}
    assert all(name.endswith("-a2") for name in started)


def test_state_machine_same_job_twice_starts_one_execution(
    world: World, make_settings: SettingsFactory
) -> None:
    """A repeat of one dead letter's attempt is accepted and starts nothing; the next one starts."""
    target = Target.from_arn(world.create_state_machine("orders"))
    job = make_job(target, '{"n": 1}', key="order-1", attempt=0)

    first = submit(make_settings, sfn_target, target, [job])
    again = submit(make_settings, sfn_target, target, [job])
    assert first[0].accepted
    assert again[0].accepted
    assert len(world.executions(target.arn)) == 1

    next_attempt = make_job(target, '{"n": 1}', key="order-1", attempt=1)
    assert submit(make_settings, sfn_target, target, [next_attempt])[0].accepted
    names = sorted(execution["name"] for execution in world.executions(target.arn))
    assert names == sorted([name_of(job), name_of(next_attempt)])


def test_state_machine_new_dead_letter_with_the_same_key_runs_again(
    world: World, make_settings: SettingsFactory
) -> None:
    """Same key and attempt but a new DLQ message id (it failed again): a second execution."""
    target = Target.from_arn(world.create_state_machine("orders"))
    first = make_job(target, '{"n": 1}', key="sha256:abc", message_id="dlq-message-1")
    second = make_job(target, '{"n": 1}', key="sha256:abc", message_id="dlq-message-2")

    deliveries = submit(make_settings, sfn_target, target, [first]) + submit(
        make_settings, sfn_target, target, [second]
    )

    assert all(d.accepted for d in deliveries)
    names = sorted(execution["name"] for execution in world.executions(target.arn))
    assert names == sorted([name_of(first), name_of(second)])


def test_state_machine_closed_execution_of_the_same_dead_letter_is_permanent(
    world: World, make_settings: SettingsFactory
) -> None:
    """If this dead letter's execution already ended unsuccessfully, it is not called delivered."""
    target = Target.from_arn(world.create_state_machine("orders"))
    job = make_job(target, '{"n": 1}', key="order-1")
    assert submit(make_settings, sfn_target, target, [job])[0].accepted
    [execution] = world.executions(target.arn)
    world.client("stepfunctions").stop_execution(executionArn=execution["executionArn"])

    [delivery] = submit(make_settings, sfn_target, target, [job])

    error = permanent(delivery)
    assert error.code == "ExecutionAlreadyExists"
    assert name_of(job) in error.message
    assert "ABORTED" in error.message
    assert len(world.executions(target.arn)) == 1


def test_state_machine_same_name_with_a_different_input_is_permanent(
    world: World, make_settings: SettingsFactory
) -> None:
    """An execution under our name with another input is a permanent ExecutionAlreadyExists."""
    target = Target.from_arn(world.create_state_machine("orders"))
    submit(make_settings, sfn_target, target, [make_job(target, '{"v": 1}', key="order-7")])

    [delivery] = submit(
        make_settings, sfn_target, target, [make_job(target, '{"v": 2}', key="order-7")]
    )

    error = permanent(delivery)
    assert error.code == "ExecutionAlreadyExists"
    assert "different input" in error.message
    [execution] = world.executions(target.arn)
    assert execution["input"] == '{"v": 1}'


def test_state_machine_already_exists_for_a_running_execution_is_a_suppressed_duplicate(
    world: World, make_settings: SettingsFactory
) -> None:
    """ExecutionAlreadyExists whose execution runs with our input is accepted, logged at info."""
    target = Target.from_arn(world.create_state_machine("orders"))
    job = make_job(target, '{"v": 1}', key="order-7")
    submit(make_settings, sfn_target, target, [job])
    # moto answers a running repeat with success; AWS may answer ExecutionAlreadyExists once
    # the execution has moved on, so that answer is injected to reach the DescribeExecution path.
    world.faults.add(Fault("states", "StartExecution", code="ExecutionAlreadyExists", times=1))
    with capture_logs() as logs:
        # Whitespace differs: the comparison is of the JSON, not of its spelling.
        [delivery] = submit(
            make_settings, sfn_target, target, [make_job(target, '{ "v" : 1 }', key="order-7")]
        )

    assert delivery.accepted
    assert len(world.executions(target.arn)) == 1
    suppressed = [line for line in logs if line["event"] == "stepfunctions-duplicate-suppressed"]
    assert len(suppressed) == 1
    assert suppressed[0]["log_level"] == "info"
    assert suppressed[0]["execution_name"] == name_of(job)
    assert suppressed[0]["status"] == "RUNNING"


def test_state_machine_describe_failure_after_already_exists_is_classified(
    world: World, make_settings: SettingsFactory
) -> None:
    """A throttled DescribeExecution leaves the job transient rather than guessing either way."""
    target = Target.from_arn(world.create_state_machine("orders"))
    world.faults.add(Fault("states", "StartExecution", code="ExecutionAlreadyExists"))
    world.faults.add(Fault("states", "DescribeExecution", code="ThrottlingException"))

    [delivery] = submit(make_settings, sfn_target, target, [make_job(target, "{}")])

    assert delivery.error == SendError(
        ErrorClass.TRANSIENT, "ThrottlingException", "injected fault"
    )


class _ExistingExecution:
    """A stepfunctions client whose every name is taken by an execution in `status`."""

    def __init__(self, status: str, execution_input: str) -> None:
        self.status = status
        self.execution_input = execution_input
        self.described: list[str] = []

    async def start_execution(self, **_: Any) -> dict[str, Any]:
        error = {"Error": {"Code": "ExecutionAlreadyExists", "Message": "exists"}}
        raise ClientError(cast(Any, error), "StartExecution")

    async def describe_execution(self, executionArn: str) -> dict[str, Any]:  # noqa: N803 - botocore's keyword
        self.described.append(executionArn)
        return {"status": self.status, "input": self.execution_input}


@pytest.mark.parametrize(
    ("status", "accepted"),
    [
        ("RUNNING", True),
        ("SUCCEEDED", True),
        ("PENDING_REDRIVE", True),
        ("FAILED", False),
        ("TIMED_OUT", False),
        ("ABORTED", False),
    ],
)
def test_state_machine_existing_execution_status_decides(status: str, accepted: bool) -> None:
    """Running or succeeded counts as delivered; failed, timed out or aborted is permanent."""
    target = Target.from_arn(f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:orders:live")
    job = make_job(target, '{"v": 1}')
    client = _ExistingExecution(status, '{"v":1}')

    [delivery] = anyio.run(
        StateMachineTarget(client, anyio.CapacityLimiter(1)).submit, target, [job]
    )

    # The alias is not part of an execution's ARN: executions belong to the machine.
    assert client.described == [
        f"arn:aws:states:{REGION}:{ACCOUNT}:execution:orders:{name_of(job)}"
    ]
    if accepted:
        assert delivery.accepted
    else:
        error = permanent(delivery)
        assert error.code == "ExecutionAlreadyExists"
        assert f"ended {status}" in error.message


def test_state_machine_unknown_execution_status_is_transient() -> None:
    """A status this code does not know leaves the job waiting, neither delivered nor parked."""
    target = Target.from_arn(f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:orders")
    client = _ExistingExecution("PAUSED", "{}")

    [delivery] = anyio.run(
        StateMachineTarget(client, anyio.CapacityLimiter(1)).submit,
        target,
        [make_job(target, "{}")],
    )

    assert delivery.error is not None
    assert delivery.error.error_class is ErrorClass.TRANSIENT


def test_state_machine_throttling_is_transient(
    world: World, make_settings: SettingsFactory
) -> None:
    """A throttled StartExecution is transient and starts nothing."""
    target = Target.from_arn(world.create_state_machine("orders"))
    world.faults.add(Fault("states", "StartExecution", code="ThrottlingException"))

    [delivery] = submit(make_settings, sfn_target, target, [make_job(target, "{}")])

    assert delivery.error is not None
    assert delivery.error.error_class is ErrorClass.TRANSIENT
    assert delivery.error.code == "ThrottlingException"
    assert world.executions(target.arn) == []


def test_state_machine_missing_is_permanent(world: World, make_settings: SettingsFactory) -> None:
    """A state machine that does not exist is a permanent error."""
    target = Target.from_arn(f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:gone")

    [delivery] = submit(make_settings, sfn_target, target, [make_job(target, "{}")])

    assert delivery.error is not None
    assert delivery.error.error_class is ErrorClass.PERMANENT
    assert delivery.error.code == "StateMachineDoesNotExist"


def test_state_machine_refuses_bad_input_without_calling_aws(
    world: World, make_settings: SettingsFactory
) -> None:
    """Non-JSON and oversized inputs are refused up front and start no execution."""
    target = Target.from_arn(world.create_state_machine("orders"))
    world.record()
    jobs = [
        make_job(target, "{broken", key="a"),
        make_job(target, json.dumps("x" * EXECUTION_INPUT_MAX_BYTES), key="b"),
    ]

    deliveries = submit(make_settings, sfn_target, target, jobs)

    assert codes(deliveries) == [Refusal.INVALID_PAYLOAD, Refusal.PAYLOAD_TOO_LARGE]
    assert recorded_calls(world, "StartExecution", target.arn) == []
    assert world.executions(target.arn) == []


def test_state_machine_unpreparable_input_fails_that_job_alone(
    world: World, make_settings: SettingsFactory
) -> None:
    """Deeply nested JSON is a permanent invalid input naming the exception; others still start."""
    target = Target.from_arn(world.create_state_machine("orders"))
    jobs = [
        make_job(target, DEEP_JSON, key="deep"),
        make_job(target, YEAR_ONE_EVENT, key="year-one"),
        make_job(target, '{"ok": true}', key="ok"),
    ]

    deliveries = submit(make_settings, sfn_target, target, jobs)

    error = permanent(deliveries[0])
    assert error.code == Refusal.INVALID_PAYLOAD
    assert "RecursionError" in error.message
    assert "[[" not in error.message
    # Time means nothing to Step Functions: that body is a valid input like any other.
    assert [d.accepted for d in deliveries[1:]] == [True, True]
    assert sorted(e["input"] for e in world.executions(target.arn)) == sorted(
        [YEAR_ONE_EVENT, '{"ok": true}']
    )


@given(
    key=st.text(max_size=500),
    message_id=st.text(max_size=100),
    attempt=st.integers(0, 10**12),
)
def test_execution_name_is_always_legal_and_specific(
    key: str, message_id: str, attempt: int
) -> None:
    """Names fit Step Functions' rules for any key, and differ between attempts and dead letters."""
    name = execution_name(key, message_id, attempt)
    assert len(name) <= EXECUTION_NAME_MAX_CHARS
    assert all(c.isascii() and (c.isalnum() or c in "-_") for c in name)
    assert name == execution_name(key, message_id, attempt)
    assert name != execution_name(key, message_id, attempt + 1)
    assert name != execution_name(key, message_id + "x", attempt)
