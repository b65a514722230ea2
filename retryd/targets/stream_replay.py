"""Reading a failed stream batch back, and rebuilding the event Lambda gave the function.

A Lambda event source mapping for Kinesis or DynamoDB Streams that gives up on a
batch writes only where the batch is (stream, shard, first and last sequence
number); the records stay in the stream until its retention trims them. This
module reads the range back (GetShardIterator AT_SEQUENCE_NUMBER at the first
sequence number, then GetRecords until past the last) and rebuilds the event in
the shape Lambda invokes the function with (Lambda developer guide, "Using AWS
Lambda with Amazon Kinesis" and "Using AWS Lambda with Amazon DynamoDB", example
events): `Records`, each with `eventSource`, `eventSourceARN`, `eventID`, and
`kinesis` (base64 `data`, `partitionKey`, `sequenceNumber`,
`approximateArrivalTimestamp` in epoch seconds) or `dynamodb` (Keys, NewImage,
OldImage, SequenceNumber, ... as the stream gives them).

A range that is no longer whole in the stream (its first record trimmed, a
TrimmedDataAccessException, the shard or stream gone, the end never reached) is
`source-expired`: reading again later cannot bring it back.

Only a stream the allowlist admits is ever read: the resolver refuses any other
(retryd.resolve.lambda_destination), so a forged pointer reads nothing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from retryd.arns import Arn
from retryd.aws import Client
from retryd.classify import from_exception
from retryd.models import Refusal, SendError, StreamBatch, StreamKind

# Lambda API reference, Invoke: a synchronous invocation's payload is at most 6 MB.
SYNC_PAYLOAD_MAX_BYTES = 6 * 1024 * 1024
# GetRecords returns at most 10,000 records per call (both APIs); bounded so that a range
# the stream keeps answering empty for cannot loop for ever.
RECORDS_PER_CALL = 1000
MAX_CALLS = 50
# Errors after which the range cannot be read again, whatever the wait: trimmed by
# retention, or the stream or shard no longer there.
_GONE = frozenset(
    {"TrimmedDataAccessException", "ResourceNotFoundException", "ExpiredIteratorException"}
)
_KINESIS_EVENT = {"eventSource": "aws:kinesis", "eventVersion": "1.0"}


@dataclass(frozen=True, slots=True)
class Replayed:
    """The batch as the events to invoke the function with, in order (one unless split)."""

    events: list[str]
    records: int


class StreamReader:
    """Reads a batch's records back from its Kinesis stream or DynamoDB stream."""

    def __init__(self, kinesis: Client, dynamodbstreams: Client) -> None:
        self._kinesis = kinesis
        self._dynamodbstreams = dynamodbstreams

    async def replay(self, batch: StreamBatch) -> Replayed | SendError:
        """The batch's events, or why not: source-expired (refused), or a transient error."""
        try:
            records = await self._read(batch)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _GONE:
                return expired(batch, f"the stream answered {code}")
            return from_exception(exc)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a classified value
            return from_exception(exc)
        if isinstance(records, str):
            return expired(batch, records)
        shaped = [shape(batch, record) for record in records]
        return Replayed(split_events(shaped), len(shaped))

    async def _read(self, batch: StreamBatch) -> list[dict[str, Any]] | str:
        """The records from start to end sequence number, or why the range is not whole."""
        client = self._kinesis if batch.kind is StreamKind.KINESIS else self._dynamodbstreams
        iterator = await self._iterator(client, batch)
        start, end = int(batch.start_sequence), int(batch.end_sequence)
        records: list[dict[str, Any]] = []
        for _ in range(MAX_CALLS):
            if iterator is None:
                return "the shard ended before the batch's last record"
            page = await self._records(client, batch, iterator)
            if not page.get("Records") and page.get("MillisBehindLatest") == 0:
                return "the shard holds no record up to the batch's last one"
            for record in page.get("Records", []):
                number = int(sequence_number(batch.kind, record))
                if not records and number != start:
                    # AT_SEQUENCE_NUMBER lands on the first record still kept: the batch's
                    # first one is gone.
                    return f"its first record ({start}) is no longer in the stream"
                if number > end:
                    return records
                records.append(record)
            if records and int(sequence_number(batch.kind, records[-1])) == end:
                return records
            iterator = page.get("NextShardIterator")
        return f"the stream gave no record past {len(records)} in {MAX_CALLS} reads"

    async def _iterator(self, client: Client, batch: StreamBatch) -> str | None:
        if batch.kind is StreamKind.KINESIS:
            answer = await client.get_shard_iterator(
                StreamARN=batch.stream_arn,
                ShardId=batch.shard_id,
                ShardIteratorType="AT_SEQUENCE_NUMBER",
                StartingSequenceNumber=batch.start_sequence,
            )
        else:
            answer = await client.get_shard_iterator(
                StreamArn=batch.stream_arn,
                ShardId=batch.shard_id,
                ShardIteratorType="AT_SEQUENCE_NUMBER",
                SequenceNumber=batch.start_sequence,
            )
        iterator = answer.get("ShardIterator")
        return iterator if isinstance(iterator, str) else None

    async def _records(self, client: Client, batch: StreamBatch, iterator: str) -> dict[str, Any]:
        if batch.kind is StreamKind.KINESIS:
            page: dict[str, Any] = await client.get_records(
                ShardIterator=iterator, Limit=RECORDS_PER_CALL, StreamARN=batch.stream_arn
            )
        else:
            page = await client.get_records(ShardIterator=iterator, Limit=RECORDS_PER_CALL)
        return page


def expired(batch: StreamBatch, why: str) -> SendError:
    """The batch's refusal as source-expired, naming the range a person would look for."""
    return SendError.refused(
        Refusal.SOURCE_EXPIRED,
        f"{batch.kind.value} batch no longer in its stream ({why}): stream {batch.stream_arn}, "
        f"shard {batch.shard_id}, sequence numbers {batch.start_sequence} to "
        f"{batch.end_sequence} ({batch.batch_size} records)",
    )


def sequence_number(kind: StreamKind, record: dict[str, Any]) -> str:
    if kind is StreamKind.KINESIS:
        return str(record["SequenceNumber"])
    return str(record["dynamodb"]["SequenceNumber"])


def shape(batch: StreamBatch, record: dict[str, Any]) -> dict[str, Any]:
    """One record as Lambda puts it in the function's event."""
    region = Arn.parse(batch.stream_arn).region
    if batch.kind is StreamKind.KINESIS:
        return {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": record["PartitionKey"],
                "sequenceNumber": record["SequenceNumber"],
                "data": base64.b64encode(bytes(record["Data"])).decode("ascii"),
                "approximateArrivalTimestamp": _epoch_s(record.get("ApproximateArrivalTimestamp")),
            },
            **_KINESIS_EVENT,
            "eventID": f"{batch.shard_id}:{record['SequenceNumber']}",
            "eventName": "aws:kinesis:record",
            "awsRegion": region,
            "eventSourceARN": batch.stream_arn,
        }
    shaped: dict[str, Any] = _plain(record)
    shaped["eventSourceARN"] = batch.stream_arn
    return shaped


def split_events(records: Sequence[dict[str, Any]]) -> list[str]:
    """`{"Records": [...]}` events in order, each within Lambda's synchronous payload limit.

    A single record over the limit still gets an event of its own: Lambda refuses it,
    and that refusal parks the message with Lambda's own words.
    """
    events: list[str] = []
    current: list[str] = []
    size = len('{"Records":[]}')
    for record in records:
        text = json.dumps(record, separators=(",", ":"))
        added = len(text.encode()) + (1 if current else 0)
        if current and size + added > SYNC_PAYLOAD_MAX_BYTES:
            events.append('{"Records":[' + ",".join(current) + "]}")
            current, size = [], len('{"Records":[]}')
            added = len(text.encode())
        current.append(text)
        size += added
    if current or not events:
        events.append('{"Records":[' + ",".join(current) + "]}")
    return events


def _epoch_s(value: object) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def _plain(value: Any) -> Any:
    """A DynamoDB Streams record as JSON: bytes as base64, times as epoch seconds, sets as lists
    (how Lambda's event spells them)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime):
        return value.timestamp()
    return value
