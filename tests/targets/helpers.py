"""Helpers shared by the resubmitter tests: jobs as the pipeline hands them over, call records."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio

from retryd.aws import AwsClients, open_clients
from retryd.models import (
    DeadLetter,
    ErrorClass,
    Job,
    MessageAttribute,
    QueueRef,
    SendError,
    Target,
)
from retryd.targets.base import Delivery, Resubmitter
from tests.conftest import SettingsFactory
from tests.world import ACCOUNT, REGION, World

# -- Lambda, Step Functions, EventBridge ------------------------------------------------


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


def submit(
    make_settings: SettingsFactory, build: Build, target: Target, jobs: Sequence[Job]
) -> list[Delivery]:
    """Run one `submit` with fresh clients pointed at the moto server."""

    async def main() -> list[Delivery]:
        async with open_clients(make_settings().aws) as clients:
            return await build(clients).submit(target, jobs)

    return anyio.run(main)


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


# -- SQS, SNS ---------------------------------------------------------------------------


FIRST_FAILED = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def make_message_job(
    target_arn: str,
    *,
    body: str = '{"orderId": "42"}',
    key: str = "order-42",
    attempt: int = 0,
    attributes: dict[str, MessageAttribute] | None = None,
    group_id: str | None = None,
    message_id: str = "m-1",
) -> Job:
    """A resolved job whose dead letter came from DLQ `retry-orders`."""
    system = {"MessageGroupId": group_id} if group_id is not None else {}
    letter = DeadLetter(
        queue=QueueRef(
            "retry-orders",
            f"http://localhost/{ACCOUNT}/retry-orders",
            f"arn:aws:sqs:{REGION}:{ACCOUNT}:retry-orders",
        ),
        message_id=message_id,
        receipt_handle=f"receipt-{message_id}",
        body=body,
        system_attributes=system,
        message_attributes=attributes or {},
    )
    return Job(
        letter=letter,
        target=Target.from_arn(target_arn),
        body=body,
        key=key,
        attempt=attempt,
        first_failed_at=FIRST_FAILED,
        forward_attributes=attributes or {},
    )


def calls(world: World, operation: str) -> int:
    """How many requests for `operation` moto recorded since world.record()."""
    count = 0
    for entry in world.server.recording():
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode("utf-8", "replace")
        json_target = entry.get("headers", {}).get("X-Amz-Target", "")
        if json_target.endswith(f".{operation}") or f"Action={operation}&" in body:
            count += 1
    return count


def expected_dedup_id(key: str, message_id: str, attempt: int) -> str:
    """The deduplication id retryd must send, written out independently of the code."""
    return hashlib.sha256(f"{key}\n{message_id}\n{attempt}".encode()).hexdigest()


# A derived key: a hash of the payload, the same for every dead letter with that body.
DERIVED_KEY = "sha256:" + hashlib.sha256(b'{"cmd": "increment"}').hexdigest()


# SQS and SNS refuse it, and Python cannot even encode it as UTF-8.
LONE_SURROGATE = "\ud800"


def strings(message: dict[str, Any]) -> dict[str, str]:
    """A received message's attributes as name -> string value."""
    return {
        name: value.get("StringValue", "")
        for name, value in message.get("MessageAttributes", {}).items()
    }


# What a proxy, a cut connection or a broken emulator can put in a 200 answer.
MALFORMED_REPLIES = {
    "empty-object": "{}",
    "truncated": '{"QueueUrl": "http://localh',
    "html-page": "<html><body><h1>502 Bad Gateway</h1></body></html>",
}
