"""Lambda on-failure destination records: the failed event, and the function that failed it.

When an asynchronous invocation fails all its tries, Lambda sends a JSON record
to the function's on-failure destination: `requestContext` (functionArn,
condition, approximateInvokeCount), `requestPayload` (the event), and the
response. Event source mappings for streams (Kinesis, DynamoDB) send a record of
the same shape that holds only a pointer to the failed batch (`KinesisBatchInfo`,
`DDBStreamBatchInfo`, ...), never the records: those cannot be resubmitted from
the message, so they are parked with what a human needs to find the data.
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
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from retryd.models import DeadLetter, Job, ParkReason, Target, TargetType, Unresolvable
from retryd.resolve.base import (
    forward_attributes,
    parse_timestamp,
    stamped_attempt,
    stamped_first_failed_at,
    stamped_key,
)
from retryd.resolve.keys import compact_json, idempotency_key

# An SNS notification as a non-raw subscription delivers it (the record is its Message).
SNS_NOTIFICATION_TYPE = "Notification"
# A record written for a successful invocation: nothing failed, nothing to retry.
SUCCESS_CONDITION = "Success"
# Stream pointers end in this (KinesisBatchInfo, DDBStreamBatchInfo, ...).
BATCH_INFO_SUFFIX = "BatchInfo"
_STREAM_NAMES = {"KinesisBatchInfo": "Kinesis", "DDBStreamBatchInfo": "DynamoDB stream"}
# How much of any one value of a record is quoted into a park detail.
_SHOWN_CHARS = 200


class LambdaDestinationResolver:
    """Resolves Lambda on-failure destination records to the function that failed them."""

    name = "lambda-destination"

    def resolve(self, letter: DeadLetter) -> Job | Unresolvable | None:
        record = _destination_record(letter.body)
        if record is None:
            return None
        context: dict[str, Any] = record["requestContext"]
        refusal = _refusal(record, context)
        if refusal is not None:
            return Unresolvable(letter, *refusal)
        target = _function_target(context["functionArn"])
        if target is None:
            return Unresolvable(
                letter,
                ParkReason.UNRESOLVABLE,
                f"requestContext.functionArn {_shown(context['functionArn'])} is not a "
                "Lambda function ARN",
            )
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
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
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
