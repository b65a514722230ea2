"""Stream batch pointers: jobs that read the batch back, only from streams the allowlist admits."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.models import Job, ParkReason, StreamBatch, StreamKind, TargetType, Unresolvable
from retryd.resolve.lambda_destination import LambdaDestinationResolver
from retryd.targets.stream_replay import SYNC_PAYLOAD_MAX_BYTES, split_events
from tests.native_helpers import fixture, letter

KINESIS = "arn:aws:kinesis:us-east-2:123456789012:stream/mystream"
ALLOW_ALL = LambdaDestinationResolver(allow_stream=lambda arn: True)


def record(
    name: str = "lambda_stream_kinesis", info: dict[str, object] | None = None
) -> dict[str, Any]:
    """The documented on-failure record with pointer fields changed."""
    document: dict[str, Any] = json.loads(fixture(name)["Body"])
    key = "KinesisBatchInfo" if "KinesisBatchInfo" in document else "DDBStreamBatchInfo"
    document[key].update(info or {})
    return document


def test_a_kinesis_pointer_is_a_job_for_the_function_carrying_the_batch() -> None:
    """The function is the target, the pointer the body (its identity) and the origin."""
    job = ALLOW_ALL.resolve(letter(record()))
    assert isinstance(job, Job)
    assert job.target.type is TargetType.LAMBDA
    assert job.target.arn == "arn:aws:lambda:us-east-2:123456789012:function:myfunction"
    assert job.origin == StreamBatch(
        StreamKind.KINESIS,
        KINESIS,
        "shardId-000000000001",
        "49601189658422359378836298521827638475320189012309704722",
        "49601189658422359378836298522902373528957594348623495186",
        500,
    )
    assert json.loads(job.body)["streamArn"] == KINESIS
    # What `plan` shows as the resolver: the batch is read back, not resubmitted as it is.
    assert job.resolver == "lambda-stream-batch"


def test_a_dynamodb_pointer_is_a_job_too() -> None:
    """DDBStreamBatchInfo names a table's stream."""
    job = ALLOW_ALL.resolve(letter(record("lambda_stream_dynamodb")))
    assert isinstance(job, Job)
    assert isinstance(job.origin, StreamBatch)
    assert job.origin.kind is StreamKind.DYNAMODB


def test_the_same_batch_twice_has_one_key_and_another_batch_another() -> None:
    """One key per batch record."""
    first = ALLOW_ALL.resolve(letter(record()))
    again = ALLOW_ALL.resolve(letter(record()))
    other = ALLOW_ALL.resolve(letter(record(info={"shardId": "shardId-000000000002"})))
    assert isinstance(first, Job)
    assert isinstance(again, Job)
    assert isinstance(other, Job)
    assert first.key == again.key != other.key


def test_a_stream_outside_the_allowlist_is_never_read() -> None:
    """Parked target-not-allowed, naming the stream."""
    resolver = LambdaDestinationResolver(allow_stream=lambda arn: arn != KINESIS)
    answer = resolver.resolve(letter(record()))
    assert isinstance(answer, Unresolvable)
    assert answer.reason is ParkReason.TARGET_NOT_ALLOWED
    assert KINESIS in answer.detail


def test_without_an_allowlist_a_pointer_stays_not_replayable() -> None:
    """A resolver built without one reads no stream."""
    answer = LambdaDestinationResolver().resolve(letter(record()))
    assert isinstance(answer, Unresolvable)
    assert answer.reason is ParkReason.NOT_REPLAYABLE


@pytest.mark.parametrize(
    "info",
    [
        {"streamArn": "arn:aws:dynamodb:us-east-2:123456789012:table/t/stream/x"},
        {"streamArn": "arn:aws:kinesis:us-east-2:123456789012:stream/"},
        {"streamArn": "arn:aws:sqs:us-east-2:123456789012:q"},
        {"streamArn": 7},
        {"startSequenceNumber": "12a"},
        {"startSequenceNumber": "5", "endSequenceNumber": "4"},
        {"endSequenceNumber": "1" * 129},
        {"batchSize": 0},
        {"batchSize": 10_001},
        {"batchSize": True},
        {"shardId": ""},
    ],
)
def test_a_pointer_retryd_cannot_read_stays_not_replayable(info: dict[str, object]) -> None:
    """A malformed or mismatched pointer is parked with what a person needs, never read."""
    answer = ALLOW_ALL.resolve(letter(record(info=info)))
    assert isinstance(answer, Unresolvable)
    assert answer.reason is ParkReason.NOT_REPLAYABLE


@given(st.lists(st.integers(min_value=0, max_value=900_000), max_size=30))
def test_split_events_keep_order_and_each_fits_the_sync_limit(sizes: list[int]) -> None:
    """Every record once, in order, in events of at most 6 MB (a lone bigger one alone)."""
    records = [{"n": index, "pad": "x" * size} for index, size in enumerate(sizes)]
    events = [json.loads(event)["Records"] for event in split_events(records)]
    assert [r["n"] for event in events for r in event] == list(range(len(sizes)))
    for text in split_events(records):
        assert len(text.encode()) <= SYNC_PAYLOAD_MAX_BYTES or len(json.loads(text)["Records"]) == 1


def test_a_batch_over_six_megabytes_is_split() -> None:
    """Twelve 1 MB records make more than one event."""
    records = [{"pad": "x" * 1_000_000} for _ in range(12)]
    assert len(split_events(records)) >= 2
