"""Lambda, Step Functions and EventBridge resubmitters: what each target really receives."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

import anyio
import pytest
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from retryd.aws import AwsClients, open_clients
from retryd.models import DeadLetter, ErrorClass, Job, QueueRef, Refusal, SendError, Target
from retryd.targets.base import Delivery, Resubmitter, pack_batches
from retryd.targets.event_bus import (
    PUT_EVENTS_LIMIT_BYTES,
    PUT_EVENTS_MAX_BYTES,
    PUT_EVENTS_MAX_ENTRIES,
    EventBusTarget,
    entry_size_bytes,
    to_entry,
)
from retryd.targets.lambda_function import (
    ASYNC_PAYLOAD_MAX_BYTES,
    CLIENT_CONTEXT_MAX_BYTES,
    LambdaFunctionTarget,
    client_context,
)
from retryd.targets.state_machine import (
    EXECUTION_INPUT_MAX_BYTES,
    EXECUTION_NAME_MAX_CHARS,
    StateMachineTarget,
    execution_name,
)
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.world import ACCOUNT, REGION, World

Build = Callable[[AwsClients], Resubmitter]
BUS_SOURCE = "retryd.test"


def make_job(
    target: Target,
    body: str,
    key: str = "order-42",
    attempt: int = 0,
    queue: str = "retry-orders",
    *,
    message_id: str | None = None,
) -> Job:
    """A resolved dead letter as the pipeline would hand it to a resubmitter."""
    ref = QueueRef(
        name=queue,
        url=f"http://localhost/{ACCOUNT}/{queue}",
        arn=f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}",
    )
    letter = DeadLetter(
        queue=ref, message_id=message_id or f"m-{key}", receipt_handle="rh", body=body
    )
    return Job(letter=letter, target=target, body=body, key=key, attempt=attempt)


def name_of(job: Job) -> str:
    """The execution name retryd gives a job."""
    return execution_name(job.key, job.letter.message_id, job.next_attempt)


def submit(
    make_settings: SettingsFactory, build: Build, target: Target, jobs: Sequence[Job]
) -> list[Delivery]:
    """Run one `submit` with fresh clients pointed at the moto server."""

    async def main() -> list[Delivery]:
        async with open_clients(make_settings().aws) as clients:
            return await build(clients).submit(target, jobs)

    return anyio.run(main)


def lambda_target(clients: AwsClients) -> Resubmitter:
    return LambdaFunctionTarget(clients.lambda_, anyio.CapacityLimiter(4))


def sfn_target(clients: AwsClients) -> Resubmitter:
    return StateMachineTarget(clients.stepfunctions, anyio.CapacityLimiter(4))


def bus_target(clients: AwsClients) -> Resubmitter:
    return EventBusTarget(clients.events)


def lambda_calls(world: World, function: str) -> list[dict[str, Any]]:
    """Invocations of `function`, which retryd addresses by ARN (percent-encoded in the path)."""
    return [
        call
        for call in world.invocations()
        if f"function:{function}/" in unquote(call["url"])
        or f"function:{function}:" in unquote(call["url"])
    ]


def recorded_calls(world: World, operation: str, contains: str) -> list[str]:
    """Bodies of recorded JSON-protocol calls to `operation` that mention `contains`."""
    bodies = []
    for entry in world.server.recording():
        if not entry.get("headers", {}).get("X-Amz-Target", "").endswith(f".{operation}"):
            continue
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode()
        if contains in body:
            bodies.append(body)
    return bodies


def codes(deliveries: Sequence[Delivery]) -> list[str | None]:
    return [delivery.error.code if delivery.error else None for delivery in deliveries]


def permanent(delivery: Delivery) -> SendError:
    """The delivery's error, which must be permanent."""
    assert delivery.error is not None
    assert delivery.error.error_class is ErrorClass.PERMANENT
    return delivery.error


# Bodies no target can prepare: JSON nested past Python's recursion limit.
DEEP_JSON = "[" * 100_000
# A valid PutEvents entry whose Time has no UTC form (it would be before year 1).
YEAR_ONE_EVENT = json.dumps(
    {"Source": BUS_SOURCE, "DetailType": "T", "Detail": {}, "Time": "0001-01-01T00:00:00+01:00"}
)


# -- Lambda ------------------------------------------------------------------------------


def test_lambda_invokes_each_job_async_with_key_in_client_context(
    world: World, make_settings: SettingsFactory
) -> None:
    """Every job is invoked as an Event, with its payload and its key in the ClientContext."""
    target = Target.from_arn(world.create_function("charge"))
    world.record()
    jobs = [
        make_job(target, json.dumps({"order": n}), key=f"order-{n}", attempt=n) for n in range(3)
    ]

    deliveries = submit(make_settings, lambda_target, target, jobs)

    assert [d.job for d in deliveries] == jobs
    assert all(d.accepted for d in deliveries)
    calls = lambda_calls(world, "charge")
    assert len(calls) == 3
    seen = {}
    for call in calls:
        assert call["headers"]["X-Amz-Invocation-Type"] == "Event"
        context = json.loads(base64.b64decode(call["headers"]["X-Amz-Client-Context"]))
        seen[call["payload"]] = context["custom"]
    for n in range(3):
        assert seen[json.dumps({"order": n})] == {
            "retryd.key": f"order-{n}",
            "retryd.attempt": str(n + 1),
            "retryd.source-queue": "retry-orders",
        }


def test_lambda_keeps_the_qualifier_of_the_target_arn(
    world: World, make_settings: SettingsFactory
) -> None:
    """A version-qualified ARN is invoked as that version, not as $LATEST."""
    arn = world.create_function("charge")
    version = world.client("lambda").publish_version(FunctionName="charge")["Version"]
    target = Target.from_arn(f"{arn}:{version}")
    world.record()

    deliveries = submit(make_settings, lambda_target, target, [make_job(target, "{}")])

    assert deliveries[0].accepted
    [call] = lambda_calls(world, "charge")
    assert unquote(call["url"]).endswith(f"function:charge:{version}/invocations")


def test_lambda_missing_function_is_permanent_not_found(
    world: World, make_settings: SettingsFactory
) -> None:
    """Invoking a function that does not exist is a permanent ResourceNotFoundException."""
    target = Target.from_arn(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:gone")
    # moto's Docker-less Lambda accepts an Event invoke of any name, so the 404 real Lambda
    # sends is injected at the wire in the shape Lambda's REST API uses.
    world.faults.add(
        Fault(
            "lambda",
            "Invoke",
            code="ResourceNotFoundException",
            status=404,
            contains="function:gone",
        )
    )

    [delivery] = submit(make_settings, lambda_target, target, [make_job(target, "{}")])

    assert delivery.error is not None
    assert delivery.error.error_class is ErrorClass.PERMANENT
    assert delivery.error.code == "ResourceNotFoundException"


def test_lambda_throttling_is_transient(world: World, make_settings: SettingsFactory) -> None:
    """A 429 TooManyRequestsException leaves every job transient, none accepted."""
    target = Target.from_arn(world.create_function("charge"))
    world.faults.add(Fault("lambda", "Invoke", code="TooManyRequestsException", status=429))
    jobs = [make_job(target, "{}", key=f"k{n}") for n in range(2)]

    deliveries = submit(make_settings, lambda_target, target, jobs)

    assert [d.error for d in deliveries] == [
        SendError(ErrorClass.TRANSIENT, "TooManyRequestsException", "injected fault")
    ] * 2


def test_lambda_refuses_bad_payloads_without_calling_aws(
    world: World, make_settings: SettingsFactory
) -> None:
    """Non-JSON and oversized bodies are refused up front; good jobs beside them still go."""
    target = Target.from_arn(world.create_function("charge"))
    world.record()
    too_large = json.dumps("x" * ASYNC_PAYLOAD_MAX_BYTES)
    jobs = [
        make_job(target, "not json", key="a"),
        make_job(target, too_large, key="b"),
        make_job(target, '{"ok": true}', key="c"),
    ]

    deliveries = submit(make_settings, lambda_target, target, jobs)

    assert codes(deliveries) == [Refusal.INVALID_PAYLOAD, Refusal.PAYLOAD_TOO_LARGE, None]
    assert all(d.error.error_class is ErrorClass.PERMANENT for d in deliveries[:2] if d.error)
    assert [call["payload"] for call in lambda_calls(world, "charge")] == ['{"ok": true}']


def test_lambda_unpreparable_payload_fails_that_job_alone(
    world: World, make_settings: SettingsFactory
) -> None:
    """Deeply nested JSON is a permanent invalid payload naming the exception; others still go."""
    target = Target.from_arn(world.create_function("charge"))
    world.record()
    jobs = [
        make_job(target, DEEP_JSON, key="deep"),
        make_job(target, YEAR_ONE_EVENT, key="year-one"),
        make_job(target, '{"ok": true}', key="ok"),
    ]

    deliveries = submit(make_settings, lambda_target, target, jobs)

    error = permanent(deliveries[0])
    assert error.code == Refusal.INVALID_PAYLOAD
    assert "RecursionError" in error.message
    assert "[[" not in error.message
    # Time means nothing to Lambda: that body is a valid payload like any other.
    assert [d.accepted for d in deliveries[1:]] == [True, True]
    assert sorted(call["payload"] for call in lambda_calls(world, "charge")) == sorted(
        [YEAR_ONE_EVENT, '{"ok": true}']
    )


def test_client_context_drops_stamps_rather_than_exceed_the_limit() -> None:
    """A key too long for ClientContext drops the stamps, never the job."""
    target = Target.from_arn(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:f")
    fits_alone = "k" * 2650
    context, dropped = client_context(make_job(target, "{}", key=fits_alone, queue="q" * 80))
    assert context is not None
    assert len(context) <= CLIENT_CONTEXT_MAX_BYTES
    assert json.loads(base64.b64decode(context))["custom"] == {"retryd.key": fits_alone}
    assert dropped == 2
    assert client_context(make_job(target, "{}", key="k" * 3000)) == (None, 3)


@given(
    key=st.text(max_size=4000),
    queue=st.text(min_size=1, max_size=80),
    attempt=st.integers(0, 10**6),
)
def test_client_context_always_fits(key: str, queue: str, attempt: int) -> None:
    """Whatever the key, the ClientContext is within Lambda's limit and decodes to JSON."""
    target = Target.from_arn(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:f")
    context, dropped = client_context(make_job(target, "{}", key=key, attempt=attempt, queue=queue))
    if context is None:
        assert dropped == 3
        return
    assert len(context) <= CLIENT_CONTEXT_MAX_BYTES
    custom = json.loads(base64.b64decode(context))["custom"]
    assert len(custom) == 3 - dropped
    assert custom["retryd.key"] == key


# -- Step Functions ----------------------------------------------------------------------


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
        raise ClientError(error, "StartExecution")

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


# -- EventBridge -------------------------------------------------------------------------


def spy_events(world: World, spy: str) -> list[dict[str, Any]]:
    return [json.loads(message["Body"]) for message in world.drain(spy)]


def test_event_bus_puts_entries_and_delivered_events_on_the_target_bus(
    world: World, make_settings: SettingsFactory
) -> None:
    """Both body shapes reach the target bus with their detail, whatever bus the body names."""
    bus_arn, spy = world.create_bus_with_spy("orders-bus", source=BUS_SOURCE)
    target = Target.from_arn(bus_arn)
    entry = {
        "Source": BUS_SOURCE,
        "DetailType": "OrderPlaced",
        "Detail": {"orderId": "1"},
        "EventBusName": "default",
    }
    delivered = {
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "source": BUS_SOURCE,
        "detail-type": "OrderPlaced",
        "account": ACCOUNT,
        "time": "2024-05-01T12:00:00Z",
        "region": REGION,
        "resources": ["arn:aws:s3:::bucket"],
        "detail": {"orderId": "2"},
    }
    jobs = [
        make_job(target, json.dumps(entry), key="a"),
        make_job(target, json.dumps(delivered), key="b"),
    ]

    deliveries = submit(make_settings, bus_target, target, jobs)

    assert all(d.accepted for d in deliveries)
    events = sorted(spy_events(world, spy), key=lambda event: event["detail"]["orderId"])
    assert [event["detail"] for event in events] == [{"orderId": "1"}, {"orderId": "2"}]
    assert {event["detail-type"] for event in events} == {"OrderPlaced"}
    assert events[1]["resources"] == ["arn:aws:s3:::bucket"]


def test_event_bus_packs_23_events_into_3_calls(
    world: World, make_settings: SettingsFactory
) -> None:
    """23 events go out in 3 PutEvents calls (10, 10, 3) and all are delivered."""
    bus_arn, spy = world.create_bus_with_spy("bulk-bus", source=BUS_SOURCE)
    target = Target.from_arn(bus_arn)
    world.record()
    jobs = [
        make_job(
            target,
            json.dumps({"Source": BUS_SOURCE, "DetailType": "T", "Detail": json.dumps({"n": n})}),
            key=f"k{n}",
        )
        for n in range(23)
    ]

    deliveries = submit(make_settings, bus_target, target, jobs)

    assert all(d.accepted for d in deliveries)
    calls = recorded_calls(world, "PutEvents", bus_arn)
    assert [len(json.loads(body)["Entries"]) for body in calls] == [10, 10, 3]
    assert sorted(event["detail"]["n"] for event in spy_events(world, spy)) == list(range(23))


def test_event_bus_throttling_fails_every_job_of_the_call(
    world: World, make_settings: SettingsFactory
) -> None:
    """A whole-call ThrottlingException is the same transient error for each job in it."""
    bus_arn, _ = world.create_bus_with_spy("orders-bus", source=BUS_SOURCE)
    target = Target.from_arn(bus_arn)
    fault = world.faults.add(Fault("events", "PutEvents", code="ThrottlingException"))
    body = json.dumps({"Source": BUS_SOURCE, "DetailType": "T", "Detail": "{}"})

    deliveries = submit(
        make_settings, bus_target, target, [make_job(target, body, key=f"k{n}") for n in range(3)]
    )

    assert [d.error for d in deliveries] == [
        SendError(ErrorClass.TRANSIENT, "ThrottlingException", "injected fault")
    ] * 3
    # Throttling is about the bus, not an entry: no entry is tried again on its own.
    assert fault.hits == 1


def test_event_bus_permanent_whole_call_failure_is_narrowed_to_its_entry(
    world: World, make_settings: SettingsFactory
) -> None:
    """A call refused as a whole is resent entry by entry: only the poisoned entry fails."""
    bus_arn, spy = world.create_bus_with_spy("orders-bus", source=BUS_SOURCE)
    target = Target.from_arn(bus_arn)
    fault = world.faults.add(
        Fault("events", "PutEvents", code="ValidationException", contains="poison-marker", times=2)
    )
    details = [{"n": 0}, {"n": 1, "p": "poison-marker"}, {"n": 2}]
    jobs = [
        make_job(
            target,
            json.dumps({"Source": BUS_SOURCE, "DetailType": "T", "Detail": detail}),
            key=f"k{n}",
        )
        for n, detail in enumerate(details)
    ]

    deliveries = submit(make_settings, bus_target, target, jobs)

    assert codes(deliveries) == [None, "ValidationException", None]
    assert permanent(deliveries[1])
    assert fault.hits == 2
    assert sorted(event["detail"]["n"] for event in spy_events(world, spy)) == [0, 2]


def test_event_bus_refuses_bad_bodies_without_calling_aws(
    world: World, make_settings: SettingsFactory
) -> None:
    """Bodies that are not JSON, lack Source/DetailType/Detail, or are too big never reach AWS."""
    bus_arn, _ = world.create_bus_with_spy("orders-bus", source=BUS_SOURCE)
    target = Target.from_arn(bus_arn)
    world.record()
    huge = {"Source": BUS_SOURCE, "DetailType": "T", "Detail": {"x": "y" * PUT_EVENTS_MAX_BYTES}}
    bodies = [
        "not json",
        json.dumps({"Source": BUS_SOURCE, "DetailType": "T"}),
        json.dumps({"DetailType": "T", "Detail": {}}),
        json.dumps({"Source": BUS_SOURCE, "DetailType": "T", "Detail": "[1, 2]"}),
        json.dumps(huge),
    ]

    deliveries = submit(
        make_settings, bus_target, target, [make_job(target, b, key=b[:9]) for b in bodies]
    )

    assert codes(deliveries) == [Refusal.INVALID_PAYLOAD] * 4 + [Refusal.PAYLOAD_TOO_LARGE]
    assert recorded_calls(world, "PutEvents", bus_arn) == []


def test_event_bus_unpreparable_bodies_fail_those_jobs_alone(
    world: World, make_settings: SettingsFactory
) -> None:
    """Deep JSON and a Time with no UTC form are permanent invalid payloads; the rest are put."""
    bus_arn, spy = world.create_bus_with_spy("orders-bus", source=BUS_SOURCE)
    target = Target.from_arn(bus_arn)
    good = [
        json.dumps({"Source": BUS_SOURCE, "DetailType": "T", "Detail": {"n": n}}) for n in range(3)
    ]
    bodies = [good[0], DEEP_JSON, good[1], YEAR_ONE_EVENT, good[2]]

    deliveries = submit(
        make_settings,
        bus_target,
        target,
        [make_job(target, b, key=f"k{n}") for n, b in enumerate(bodies)],
    )

    assert codes(deliveries) == [None, Refusal.INVALID_PAYLOAD, None, Refusal.INVALID_PAYLOAD, None]
    assert "RecursionError" in permanent(deliveries[1]).message
    assert "OverflowError" in permanent(deliveries[3]).message
    assert "0001" not in permanent(deliveries[3]).message
    assert sorted(event["detail"]["n"] for event in spy_events(world, spy)) == [0, 1, 2]


class _BrokenOnMarkerEvents:
    """An events client whose PutEvents breaks with a non-AWS error on a marked entry."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    async def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - botocore's keyword
        self.calls.append(len(Entries))
        if any("poison-marker" in entry["Detail"] for entry in Entries):
            raise ValueError("cannot serialize")
        return {"FailedEntryCount": 0, "Entries": [{"EventId": "e"} for _ in Entries]}


def test_event_bus_non_aws_whole_call_failure_is_narrowed_to_its_entry() -> None:
    """A call broken by a non-AWS exception is resent entry by entry, so good entries still go."""
    target = Target.from_arn(f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/b")
    details = [{"n": 0}, {"p": "poison-marker"}, {"n": 2}]
    jobs = [
        make_job(
            target,
            json.dumps({"Source": "s", "DetailType": "T", "Detail": detail}),
            key=f"k{n}",
        )
        for n, detail in enumerate(details)
    ]
    client = _BrokenOnMarkerEvents()

    deliveries = anyio.run(EventBusTarget(client).submit, target, jobs)

    assert codes(deliveries) == [None, "ValueError", None]
    assert client.calls == [3, 1, 1, 1]


class _PartialFailureEvents:
    """An events client answering PutEvents in AWS's documented partial-failure shape."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    async def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - botocore's keyword
        self.calls.append(Entries)
        results: list[dict[str, Any]] = [
            {"ErrorCode": "InternalFailure", "ErrorMessage": "try again"}
            if json.loads(entry["Detail"]).get("fail")
            else {"EventId": f"e{n}"}
            for n, entry in enumerate(Entries)
        ]
        return {"FailedEntryCount": sum("ErrorCode" in r for r in results), "Entries": results}


def test_event_bus_maps_failed_entries_back_to_their_jobs() -> None:
    """Per-entry ErrorCodes land on the jobs in request order, across batches and refusals."""
    target = Target.from_arn(f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/b")
    failing = {3, 11, 12}
    jobs = [
        make_job(
            target,
            json.dumps(
                {"Source": "s", "DetailType": "T", "Detail": {"n": n, "fail": n in failing}}
            ),
            key=f"k{n}",
        )
        for n in range(14)
    ]
    jobs.insert(5, make_job(target, "oops", key="bad"))
    client = _PartialFailureEvents()

    deliveries = anyio.run(EventBusTarget(client).submit, target, jobs)

    assert [d.job for d in deliveries] == jobs
    assert [len(call) for call in client.calls] == [10, 4]
    by_key = {d.job.key: d.error for d in deliveries}
    assert codes([d for d in deliveries if d.job.key == "bad"]) == [Refusal.INVALID_PAYLOAD]
    for n in range(14):
        error = by_key[f"k{n}"]
        if n in failing:
            assert error == SendError(ErrorClass.TRANSIENT, "InternalFailure", "try again")
        else:
            assert error is None
    assert all(entry["EventBusName"] == target.arn for call in client.calls for entry in call)


def test_to_entry_converts_a_delivered_event() -> None:
    """A delivered event becomes an entry; fields EventBridge assigns itself are dropped."""
    entry = to_entry(
        json.dumps(
            {
                "id": "x",
                "account": ACCOUNT,
                "source": "s",
                "detail-type": "T",
                "detail": {"a": 1},
                "time": "2024-05-01T12:00:00Z",
                "resources": ["r"],
            }
        ),
        "arn:bus",
    )
    assert set(entry) == {"Source", "DetailType", "Detail", "Resources", "Time", "EventBusName"}
    assert entry["Detail"] == '{"a":1}'
    assert entry["Time"].isoformat() == "2024-05-01T12:00:00+00:00"
    assert entry["EventBusName"] == "arn:bus"
    assert entry_size_bytes(entry) == 14 + len("s") + len("T") + len('{"a":1}') + len("r")


@given(sizes=st.lists(st.integers(1, PUT_EVENTS_MAX_BYTES - 1), max_size=60))
def test_plan_batches_respects_both_limits_in_order(sizes: list[int]) -> None:
    """Batches keep order, cover every entry once, and stay within 10 entries and 256 KiB."""
    batches = pack_batches(range(len(sizes)), sizes.__getitem__, PUT_EVENTS_LIMIT_BYTES)
    assert [index for batch in batches for index in batch] == list(range(len(sizes)))
    for batch in batches:
        assert 1 <= len(batch) <= PUT_EVENTS_MAX_ENTRIES
        assert len(batch) == 1 or sum(sizes[i] for i in batch) < PUT_EVENTS_MAX_BYTES


# -- Cancellation ------------------------------------------------------------------------


class _HangingClient:
    """A client whose calls never answer, to cancel resubmitters mid-call."""

    async def invoke(self, **_: Any) -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def start_execution(self, **_: Any) -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def put_events(self, **_: Any) -> dict[str, Any]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("resubmitter", "arn"),
    [
        (LambdaFunctionTarget, f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:f"),
        (StateMachineTarget, f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:m"),
        (
            lambda client, _limiter: EventBusTarget(client),
            f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/b",
        ),
    ],
)
def test_cancellation_propagates_instead_of_becoming_an_error(
    resubmitter: Callable[[Any, anyio.CapacityLimiter], Resubmitter], arn: str
) -> None:
    """Cancelling a submit mid-call cancels it; it is never reported as a failed delivery."""
    target = Target.from_arn(arn)
    # Valid for all three targets, so each really reaches its (hanging) client.
    body = json.dumps({"Source": "s", "DetailType": "T", "Detail": {}})
    jobs = [make_job(target, body, key=f"k{n}") for n in range(3)]
    returned: list[Delivery] | None = None

    async def main() -> bool:
        nonlocal returned
        with anyio.move_on_after(0.05) as scope:
            returned = await resubmitter(_HangingClient(), anyio.CapacityLimiter(2)).submit(
                target, jobs
            )
        return scope.cancelled_caught

    assert anyio.run(main)
    assert returned is None


@pytest.mark.parametrize(
    "reply",
    [b'{"Entries": "ok"}', b'{"Entries": [null, null]}', b"<html>502 Bad Gateway</html>"],
    ids=["entries-not-a-list", "null-results", "html-page"],
)
def test_event_bus_malformed_answer_is_one_transient_verdict(
    world: World, make_settings: SettingsFactory, reply: bytes
) -> None:
    """A PutEvents 200 without readable results is transient for each job, with no resends."""
    bus_arn, _ = world.create_bus_with_spy("orders-bus", source=BUS_SOURCE)
    target = Target.from_arn(bus_arn)
    fault = world.faults.add(Fault("events", "PutEvents", code=None, status=200, reply=reply))
    body = json.dumps({"Source": BUS_SOURCE, "DetailType": "T", "Detail": "{}"})

    deliveries = submit(
        make_settings, bus_target, target, [make_job(target, body, key=f"k{n}") for n in range(2)]
    )

    for delivery in deliveries:
        assert delivery.error is not None
        assert delivery.error.error_class is ErrorClass.TRANSIENT
    # The events may have been put: sending them again one by one would only add copies.
    assert fault.hits == 1
