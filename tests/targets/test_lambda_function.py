"""The Lambda resubmitter: one asynchronous Invoke per job, against the moto server."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import unquote

import anyio
from hypothesis import given
from hypothesis import strategies as st

from retryd.aws import AwsClients
from retryd.models import ErrorClass, Refusal, SendError, Target
from retryd.targets.base import Resubmitter
from retryd.targets.lambda_function import (
    ASYNC_PAYLOAD_MAX_BYTES,
    CLIENT_CONTEXT_MAX_BYTES,
    LambdaFunctionTarget,
    client_context,
)
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.targets.helpers import (
    DEEP_JSON,
    YEAR_ONE_EVENT,
    codes,
    make_job,
    permanent,
    submit,
)
from tests.world import ACCOUNT, REGION, World


def lambda_target(clients: AwsClients) -> Resubmitter:
    return LambdaFunctionTarget(clients.lambda_, anyio.CapacityLimiter(4))


def lambda_calls(world: World, function: str) -> list[dict[str, Any]]:
    """Invocations of `function`, which retryd addresses by ARN (percent-encoded in the path)."""
    return [
        call
        for call in world.invocations()
        if f"function:{function}/" in unquote(call["url"])
        or f"function:{function}:" in unquote(call["url"])
    ]


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
