"""Replaying a stream batch to its function, against Kinesis on the moto server."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import anyio

from retryd.aws import AwsClients
from retryd.models import ErrorClass, Job, Refusal, StreamBatch, StreamKind, Target
from retryd.targets.base import Resubmitter
from retryd.targets.lambda_function import LambdaFunctionTarget
from retryd.targets.stream_replay import StreamReader
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.targets.helpers import make_job, submit
from tests.world import World


def replayer(clients: AwsClients) -> Resubmitter:
    return LambdaFunctionTarget(
        clients.lambda_,
        anyio.CapacityLimiter(4),
        StreamReader(clients.kinesis, clients.dynamodbstreams),
    )


def stream_job(world: World, records: list[bytes]) -> tuple[Target, Job]:
    """A function, a stream holding `records`, and the job pointing at all of them."""
    target = Target.from_arn(world.create_function("consumer"))
    kinesis = world.client("kinesis")
    kinesis.create_stream(StreamName="clicks", ShardCount=1)
    described = kinesis.describe_stream(StreamName="clicks")["StreamDescription"]
    sequences = [
        kinesis.put_record(StreamName="clicks", Data=data, PartitionKey="p")["SequenceNumber"]
        for data in records
    ]
    batch = StreamBatch(
        StreamKind.KINESIS,
        described["StreamARN"],
        described["Shards"][0]["ShardId"],
        sequences[0],
        sequences[-1],
        len(records),
    )
    return target, replace(make_job(target, "{}"), origin=batch)


def sync_payloads(world: World) -> list[dict[str, Any]]:
    return [
        json.loads(call["payload"])
        for call in world.invocations("consumer")
        if call["headers"].get("X-Amz-Invocation-Type") == "RequestResponse"
    ]


def test_a_batch_over_six_megabytes_goes_as_parts_in_order_each_stamped(
    world: World, make_settings: SettingsFactory
) -> None:
    """Seven 1 MB records do not fit one synchronous event: several, in order, `retryd.part`."""
    records = [bytes([65 + n]) * 1_000_000 for n in range(7)]
    target, job = stream_job(world, records)
    world.record()

    (delivery,) = submit(make_settings, replayer, target, [job])

    assert delivery.accepted
    events = sync_payloads(world)
    assert len(events) >= 2
    data = [base64.b64decode(r["kinesis"]["data"]) for e in events for r in e["Records"]]
    assert data == records
    contexts = [
        json.loads(base64.b64decode(call["headers"]["X-Amz-Client-Context"]))["custom"]
        for call in world.invocations("consumer")
    ]
    assert [c["retryd.part"] for c in contexts] == [
        f"{n}/{len(events)}" for n in range(1, len(events) + 1)
    ]


def test_a_trimmed_range_is_refused_source_expired(
    world: World, make_settings: SettingsFactory
) -> None:
    """TrimmedDataAccessException: the range is gone for good, and the function is not called."""
    target, job = stream_job(world, [b"1", b"2"])
    world.faults.add(Fault("kinesis", "GetRecords", code="TrimmedDataAccessException"))
    world.record()

    (delivery,) = submit(make_settings, replayer, target, [job])

    assert delivery.error is not None
    assert delivery.error.refusal is Refusal.SOURCE_EXPIRED
    assert "TrimmedDataAccessException" in delivery.error.message
    assert sync_payloads(world) == []


def test_a_throttled_read_is_a_transient_failure_not_an_expiry(
    world: World, make_settings: SettingsFactory
) -> None:
    """Throttling while reading leaves the message for another try."""
    target, job = stream_job(world, [b"1"])
    world.faults.add(
        Fault("kinesis", "GetShardIterator", code="ProvisionedThroughputExceededException")
    )

    (delivery,) = submit(make_settings, replayer, target, [job])

    assert delivery.error is not None
    assert delivery.error.error_class is ErrorClass.TRANSIENT
    assert delivery.error.refusal is None


class _FailingFunction:
    """A Lambda client whose function throws: moto's functions without Docker never do."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def invoke(self, **request: Any) -> dict[str, Any]:
        self.calls.append(request)

        class _Body:
            async def read(self) -> bytes:
                return b'{"errorMessage": "boom"}'

        return {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": _Body()}


def test_a_function_error_fails_the_attempt(world: World, make_settings: SettingsFactory) -> None:
    """A function that throws on the replayed batch is a transient failure, tried again later."""
    target, job = stream_job(world, [b"1"])
    failing = _FailingFunction()

    def build(clients: AwsClients) -> Resubmitter:
        return LambdaFunctionTarget(
            failing,
            anyio.CapacityLimiter(1),
            StreamReader(clients.kinesis, clients.dynamodbstreams),
        )

    (delivery,) = submit(make_settings, build, target, [job])

    assert delivery.error is not None
    assert delivery.error.error_class is ErrorClass.TRANSIENT
    assert delivery.error.code == "retryd.FunctionError"
    assert [call["InvocationType"] for call in failing.calls] == ["RequestResponse"]
