"""Lambda on-failure destination records: the failed event, and the function that failed it.

When an asynchronous invocation fails all its tries, Lambda sends a JSON record
to the function's on-failure destination: `requestContext` (functionArn,
condition, approximateInvokeCount), `requestPayload` (the event), and the
response. Event source mappings for streams (Kinesis, DynamoDB) send a record of
the same shape that holds only a pointer to the failed batch (`KinesisBatchInfo`,
`DDBStreamBatchInfo`, ...), never the records. When the chain is built with the
allowlist, a Kinesis or DynamoDB Streams pointer whose stream the allowlist
admits becomes a job for the function that carries the batch (`StreamBatch`): the
records are read back from the stream when it is sent (retryd.targets.stream_replay).
Any other pointer (Kafka, a stream outside the allowlist) is parked with what a
human needs to find the data.
Shapes: Lambda developer guide, "Capturing records of Lambda asynchronous
invocations" and "Using Lambda with Kinesis/DynamoDB" (on-failure destinations).

A destination that is an SNS topic reaches an SQS subscriber as the topic's JSON
notification (Type "Notification", `Message` holding the record as text) unless the
subscription has raw message delivery on: the record is taken out of `Message` and
resolved as if it had arrived raw (Amazon SNS developer guide, "Amazon SNS raw
message delivery").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeGuard

from retryd.arns import Arn
from retryd.models import (
    DeadLetter,
    Job,
    ParkReason,
    StreamBatch,
    StreamKind,
    Target,
    TargetType,
    Unresolvable,
)
from retryd.resolve.base import (
    forward_attributes,
    parse_timestamp,
    stamped_attempt,
    stamped_first_failed_at,
    stamped_key,
)
from retryd.resolve.keys import compact_json, idempotency_key, parsed_json

# An SNS notification as a non-raw subscription delivers it (the record is its Message).
SNS_NOTIFICATION_TYPE = "Notification"
# A record written for a successful invocation: nothing failed, nothing to retry.
SUCCESS_CONDITION = "Success"
# Stream pointers end in this (KinesisBatchInfo, DDBStreamBatchInfo, ...).
BATCH_INFO_SUFFIX = "BatchInfo"
_STREAM_NAMES = {"KinesisBatchInfo": "Kinesis", "DDBStreamBatchInfo": "DynamoDB stream"}
# The pointers whose batch retryd can read back, and the stream ARN each must name.
_REPLAYABLE = {"KinesisBatchInfo": StreamKind.KINESIS, "DDBStreamBatchInfo": StreamKind.DYNAMODB}
# Sequence numbers are decimal digits (Kinesis: up to 128; DynamoDB Streams: 21-40).
_SEQUENCE_MAX_DIGITS = 128
# GetRecords returns at most 10,000 records a call; a Lambda batch is at most 10,000.
MAX_BATCH_SIZE = 10_000
# What a stream batch job says resolved it (plan shows it): it is replayed, not resubmitted.
STREAM_BATCH_RESOLVER = "lambda-stream-batch"
# Resource names (Kinesis and DynamoDB API references): stream names [a-zA-Z0-9_.-]{1,128};
# table names [a-zA-Z0-9_.-]{3,255} and a stream label (a timestamp).
_KINESIS_STREAM = re.compile(r"stream/[a-zA-Z0-9_.-]{1,128}")
_DYNAMODB_STREAM = re.compile(r"table/[a-zA-Z0-9_.-]{3,255}/stream/[0-9A-Za-z:._-]{1,64}")
_SHARD_ID_MAX_CHARS = 128
# How much of any one value of a record is quoted into a park detail.
_SHOWN_CHARS = 200


class LambdaDestinationResolver:
    """Resolves Lambda on-failure destination records to the function that failed them."""

    name = "lambda-destination"

    def __init__(self, allow_stream: Callable[[str], bool] | None = None) -> None:
        # Whether a stream ARN may be read (the target allowlist); None: no stream is read.
        self._allow_stream = allow_stream

    def resolve(self, letter: DeadLetter) -> Job | Unresolvable | None:
        record = _destination_record(letter.body)
        if record is None:
            return None
        context: dict[str, Any] = record["requestContext"]
        refusal = _refusal(record, context)
        if refusal is not None:
            return self._refused(letter, record, context, refusal)
        target = _function_target(context["functionArn"])
        if target is None:
            return _not_a_function(letter, context)
        try:
            body = compact_json(record["requestPayload"])
        except (ValueError, RecursionError):
            return Unresolvable(
                letter, ParkReason.UNRESOLVABLE, "requestPayload cannot be written back as JSON"
            )
        return Job(
            letter=letter,
            target=target,
            body=body,
            key=idempotency_key(target.arn, body, stamped_key(letter)),
            # Lambda's own invocations are not retryd's resubmissions: shown, not counted.
            attempt=stamped_attempt(letter) or 0,
            source_attempts=_invoke_count(context),
            resolver=self.name,
            first_failed_at=_first_failed_at(letter, record),
            forward_attributes=forward_attributes(letter),
        )

    def _refused(
        self,
        letter: DeadLetter,
        record: Mapping[str, Any],
        context: Mapping[str, Any],
        refusal: tuple[ParkReason, str],
    ) -> Job | Unresolvable:
        """A record with no payload to resubmit: a stream batch to read back, or the refusal."""
        batch = self._replayable(record) if refusal[0] is ParkReason.NOT_REPLAYABLE else None
        if batch is None:
            return Unresolvable(letter, *refusal)
        return self._stream_job(letter, record, context, batch)

    def _replayable(self, record: Mapping[str, Any]) -> StreamBatch | None:
        """The batch to read back; None when this pointer stays not-replayable."""
        if self._allow_stream is None:
            return None
        for key, kind in _REPLAYABLE.items():
            info = record.get(key)
            if isinstance(info, dict):
                return _stream_batch(kind, info)
        return None

    def _stream_job(
        self,
        letter: DeadLetter,
        record: Mapping[str, Any],
        context: Mapping[str, Any],
        batch: StreamBatch,
    ) -> Job | Unresolvable:
        target = _function_target(context["functionArn"])
        if target is None:
            return _not_a_function(letter, context)
        if self._allow_stream is not None and not self._allow_stream(batch.stream_arn):
            # Never read: a forged pointer must not make retryd read a stream it may not.
            return Unresolvable(
                letter,
                ParkReason.TARGET_NOT_ALLOWED,
                f"stream {batch.stream_arn} matches no allow_targets pattern",
            )
        # The pointer is the batch's identity: one key per batch record.
        body = compact_json(
            {
                "streamArn": batch.stream_arn,
                "shardId": batch.shard_id,
                "startSequenceNumber": batch.start_sequence,
                "endSequenceNumber": batch.end_sequence,
                "batchSize": batch.batch_size,
            }
        )
        return Job(
            letter=letter,
            target=target,
            body=body,
            key=idempotency_key(target.arn, body, stamped_key(letter)),
            attempt=stamped_attempt(letter) or 0,
            source_attempts=_invoke_count(context),
            resolver=STREAM_BATCH_RESOLVER,
            first_failed_at=_first_failed_at(letter, record),
            forward_attributes=forward_attributes(letter),
            origin=batch,
        )


def _not_a_function(letter: DeadLetter, context: Mapping[str, Any]) -> Unresolvable:
    return Unresolvable(
        letter,
        ParkReason.UNRESOLVABLE,
        f"requestContext.functionArn {_shown(context['functionArn'])} is not a Lambda function ARN",
    )


def _stream_batch(kind: StreamKind, info: Mapping[str, Any]) -> StreamBatch | None:
    """The pointer as a StreamBatch; None when it is not one retryd can read."""
    stream_arn, shard = info.get("streamArn"), info.get("shardId")
    start, end = info.get("startSequenceNumber"), info.get("endSequenceNumber")
    size = info.get("batchSize")
    if not (
        isinstance(stream_arn, str)
        and _is_stream_arn(kind, stream_arn)
        and isinstance(shard, str)
        and 0 < len(shard) <= _SHARD_ID_MAX_CHARS
        and _is_sequence(start)
        and _is_sequence(end)
        and isinstance(size, int)
        and not isinstance(size, bool)
        and 0 < size <= MAX_BATCH_SIZE
    ):
        return None
    if int(end) < int(start):
        return None
    return StreamBatch(kind, stream_arn, shard, start, end, size)


def _is_sequence(value: object) -> TypeGuard[str]:
    return (
        isinstance(value, str)
        and 0 < len(value) <= _SEQUENCE_MAX_DIGITS
        and value.isascii()
        and value.isdigit()
    )


def _is_stream_arn(kind: StreamKind, text: str) -> bool:
    """A Kinesis `stream/<name>` or a DynamoDB `table/<t>/stream/<label>` ARN."""
    try:
        arn = Arn.parse(text)
    except ValueError:
        return False
    if kind is StreamKind.KINESIS:
        return arn.service == "kinesis" and _KINESIS_STREAM.fullmatch(arn.resource) is not None
    return arn.service == "dynamodb" and _DYNAMODB_STREAM.fullmatch(arn.resource) is not None


def _destination_record(body: str) -> dict[str, Any] | None:
    """The parsed body when it is a Lambda destination record (functionArn and condition),
    as it is or inside the `Message` of an SNS notification."""
    record = _json_object(body)
    if record is None:
        return None
    wrapped = record.get("Message")
    if record.get("Type") == SNS_NOTIFICATION_TYPE and isinstance(wrapped, str):
        record = _json_object(wrapped)
        if record is None:
            return None
    context = record.get("requestContext")
    if not isinstance(context, dict) or "functionArn" not in context or "condition" not in context:
        return None
    return record


def _refusal(
    record: Mapping[str, Any], context: Mapping[str, Any]
) -> tuple[ParkReason, str] | None:
    """Why a record of this shape cannot be resubmitted, or None when it can."""
    if context["condition"] == SUCCESS_CONDITION:
        return (
            ParkReason.UNRESOLVABLE,
            f"a Lambda success record of {_shown(context['functionArn'])}: nothing failed, "
            "so there is nothing to retry (is an on-success destination pointing at a DLQ?)",
        )
    if "requestPayload" not in record:
        return ParkReason.NOT_REPLAYABLE, _pointer_detail(record, context)
    return None


def _json_object(body: str) -> dict[str, Any] | None:
    document = parsed_json(body)
    return document if isinstance(document, dict) else None


def _function_target(function_arn: object) -> Target | None:
    """The function to invoke, qualifier kept (Target drops `$LATEST`); None if not a function."""
    if not isinstance(function_arn, str):
        return None
    try:
        target = Target.from_arn(function_arn)
    except ValueError:
        return None
    return target if target.type is TargetType.LAMBDA else None


def _invoke_count(context: Mapping[str, Any]) -> int:
    """approximateInvokeCount: Lambda's invocations of the event, first included; 0 if unusable."""
    count = context.get("approximateInvokeCount")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return 0
    return count


def _first_failed_at(letter: DeadLetter, record: Mapping[str, Any]) -> datetime | None:
    stamped = stamped_first_failed_at(letter)
    if stamped is not None:
        return stamped
    written = record.get("timestamp")
    recorded = parse_timestamp(written) if isinstance(written, str) else None
    return recorded or letter.sent_at


def _pointer_detail(record: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """Where the failed batch is, so a human can read it from its stream before it expires."""
    function = _shown(context.get("functionArn"))
    condition = _shown(context.get("condition"))
    for key, info in record.items():
        if isinstance(key, str) and key.endswith(BATCH_INFO_SUFFIX) and isinstance(info, dict):
            source = _STREAM_NAMES.get(key, key.removesuffix(BATCH_INFO_SUFFIX) or key)
            return (
                f"{source} batch that {function} failed ({condition}): the record holds only a "
                f"pointer, not the events. Stream {_shown(info.get('streamArn'))}, "
                f"shard {_shown(info.get('shardId'))}, sequence numbers "
                f"{_shown(info.get('startSequenceNumber'))} to "
                f"{_shown(info.get('endSequenceNumber'))} "
                f"({_shown(info.get('batchSize'))} records, arrived "
                f"{_shown(info.get('approximateArrivalOfFirstRecord'))} to "
                f"{_shown(info.get('approximateArrivalOfLastRecord'))}); read them from the "
                "stream before its retention ends"
            )
    return (
        f"Lambda destination record of {function} ({condition}) has no requestPayload: "
        "the failed event is not in the message"
    )


def _shown(value: object) -> str:
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=str)
        except (ValueError, RecursionError):
            text = type(value).__name__
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
