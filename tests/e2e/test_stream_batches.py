"""Stream batches Lambda gave up on, read back from Kinesis and DynamoDB Streams and replayed."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from retryd.models import Outcome
from tests.conftest import SettingsFactory
from tests.e2e.helpers import cycle
from tests.native_helpers import PARKING, detail_of, fixture, parked_by_reason
from tests.world import ACCOUNT, REGION, World

DLQ = "retry-streams"


def kinesis_stream(world: World, name: str, records: int) -> tuple[str, str, list[str]]:
    """A one-shard stream with `records` records; (stream ARN, shard id, sequence numbers)."""
    kinesis = world.client("kinesis")
    kinesis.create_stream(StreamName=name, ShardCount=1)
    described = kinesis.describe_stream(StreamName=name)["StreamDescription"]
    sequences = [
        kinesis.put_record(StreamName=name, Data=f"{name}-{n}".encode(), PartitionKey=f"p{n}")[
            "SequenceNumber"
        ]
        for n in range(records)
    ]
    return described["StreamARN"], described["Shards"][0]["ShardId"], sequences


def dynamodb_stream(world: World, table: str, items: int) -> tuple[str, str, list[str]]:
    """A table with a stream and `items` items written; (stream ARN, shard id, sequences)."""
    created = world.client("dynamodb").create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    stream = created["TableDescription"]["LatestStreamArn"]
    for n in range(items):
        world.client("dynamodb").put_item(
            TableName=table, Item={"id": {"S": str(n)}, "blob": {"B": b"\x00\x01"}}
        )
    streams = world.client("dynamodbstreams")
    shard = streams.describe_stream(StreamArn=stream)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(
        StreamArn=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = streams.get_records(ShardIterator=iterator)["Records"]
    return stream, shard, [r["dynamodb"]["SequenceNumber"] for r in records]


def pointer(
    kind: str,
    function: str,
    *,
    stream: str,
    shard: str,
    first: str,
    last: str,
    size: int,
) -> dict[str, Any]:
    """The on-failure record the event source mapping writes for one batch."""
    name = "lambda_stream_kinesis" if kind == "KinesisBatchInfo" else "lambda_stream_dynamodb"
    document: dict[str, Any] = json.loads(fixture(name)["Body"])
    document["requestContext"]["functionArn"] = function
    document["timestamp"] = datetime.now(UTC).isoformat()
    document[kind].update(
        streamArn=stream,
        shardId=shard,
        startSequenceNumber=first,
        endSequenceNumber=last,
        batchSize=size,
    )
    return document


def replayed_events(world: World, function: str) -> list[dict[str, Any]]:
    """The synchronous Invoke payloads the function got."""
    return [
        json.loads(call["payload"])
        for call in world.invocations(function)
        if call["headers"].get("X-Amz-Invocation-Type") == "RequestResponse"
    ]


def test_kinesis_and_dynamodb_batches_are_read_back_and_replayed_once(
    world: World, make_settings: SettingsFactory
) -> None:
    """Each batch becomes one synchronous invoke with the records in Lambda's event shape,
    beside an ordinary destination record; the queue ends empty."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    consumer = world.create_function("consumer")
    stream, shard, sequences = kinesis_stream(world, "orders", 5)
    table_stream, table_shard, table_sequences = dynamodb_stream(world, "carts", 3)
    world.send(
        DLQ,
        pointer(
            "KinesisBatchInfo",
            consumer,
            stream=stream,
            shard=shard,
            first=sequences[1],
            last=sequences[3],
            size=3,
        ),
    )
    world.send(
        DLQ,
        pointer(
            "DDBStreamBatchInfo",
            consumer,
            stream=table_stream,
            shard=table_shard,
            first=table_sequences[0],
            last=table_sequences[1],
            size=2,
        ),
    )
    plain = json.loads(fixture("lambda_destination_record")["Body"])
    plain["requestContext"]["functionArn"] = consumer
    plain["timestamp"] = datetime.now(UTC).isoformat()
    world.send(DLQ, plain)
    world.record()

    report = cycle(make_settings())

    assert report.outcomes == {"resubmitted": 3}
    events = replayed_events(world, "consumer")
    assert len(events) == 2
    by_source = {event["Records"][0]["eventSource"]: event["Records"] for event in events}
    kinesis = by_source["aws:kinesis"]
    assert [base64.b64decode(r["kinesis"]["data"]).decode() for r in kinesis] == [
        "orders-1",
        "orders-2",
        "orders-3",
    ]
    assert [r["kinesis"]["sequenceNumber"] for r in kinesis] == sequences[1:4]
    assert {r["eventSourceARN"] for r in kinesis} == {stream}
    assert kinesis[0]["eventID"] == f"{shard}:{sequences[1]}"
    assert kinesis[0]["kinesis"]["partitionKey"] == "p1"
    assert isinstance(kinesis[0]["kinesis"]["approximateArrivalTimestamp"], float)
    dynamodb = by_source["aws:dynamodb"]
    assert [r["dynamodb"]["Keys"] for r in dynamodb] == [{"id": {"S": "0"}}, {"id": {"S": "1"}}]
    assert dynamodb[0]["dynamodb"]["NewImage"]["blob"] == {"B": "AAE="}
    assert dynamodb[0]["eventName"] == "INSERT"
    assert {r["eventSourceARN"] for r in dynamodb} == {table_stream}
    assert world.depth(DLQ) == 0


def test_a_batch_no_longer_in_its_stream_is_parked_source_expired_at_once(
    world: World, make_settings: SettingsFactory
) -> None:
    """A range whose first record is gone is parked source-expired, the range named."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    consumer = world.create_function("consumer")
    stream, shard, sequences = kinesis_stream(world, "orders", 3)
    world.send(
        DLQ,
        pointer(
            "KinesisBatchInfo",
            consumer,
            stream=stream,
            shard=shard,
            first="0",
            last=sequences[1],
            size=2,
        ),
    )
    world.record()

    report = cycle(make_settings())

    assert report.decisions is not None
    assert [(d.outcome, d.reason) for d in report.decisions] == [(Outcome.PARKED, "source-expired")]
    (parked,) = parked_by_reason(world.drain(PARKING))["source-expired"]
    assert f"sequence numbers 0 to {sequences[1]}" in detail_of(parked)
    assert stream in detail_of(parked)
    assert replayed_events(world, "consumer") == []


def test_a_forged_stream_outside_the_allowlist_is_never_read(
    world: World, make_settings: SettingsFactory
) -> None:
    """A pointer at another account's stream parks target-not-allowed; no stream is read."""
    world.create_queue(PARKING)
    world.create_queue(DLQ)
    consumer = world.create_function("consumer")
    foreign = f"arn:aws:kinesis:{REGION}:210987654321:stream/orders"
    world.send(
        DLQ,
        pointer(
            "KinesisBatchInfo",
            consumer,
            stream=foreign,
            shard="shardId-0",
            first="1",
            last="2",
            size=2,
        ),
    )
    world.record()

    report = cycle(make_settings(guards={"allow_targets": [f"arn:aws:*:*:{ACCOUNT}:*"]}))

    assert report.decisions is not None
    assert [(d.outcome, d.reason) for d in report.decisions] == [
        (Outcome.PARKED, "target-not-allowed")
    ]
    reads = [
        entry
        for entry in world.server.recording()
        if "Kinesis" in entry.get("headers", {}).get("X-Amz-Target", "")
    ]
    assert reads == []
    assert world.invocations("consumer") == []
