"""Resubmit to an SNS topic with PublishBatch, stamping retryd's attributes."""

from __future__ import annotations

import dataclasses

from retryd.aws import Client
from retryd.models import Attributes, Job, MessageAttribute, SendError, Target
from retryd.stamps import has_forbidden_chars, message_size_bytes, stamp_for_resubmit
from retryd.targets.base import BatchResubmitter, Destination, Entry, Prepared, RefusedError
from retryd.targets.sqs_queue import (
    MAX_PAYLOAD_BYTES,
    dedup_id,
    group_id,
    in_request_order,
    numbered,
    unsendable_body,
)

# "The total aggregate size of all messages that you send in a single PublishBatch API
# request can't exceed 262,144 bytes (256 KiB)" - Amazon SNS Developer Guide, "Amazon SNS
# message batching". A topic may now be given a MaximumMessageSize of up to 1 MiB, but
# 262,144 bytes is every topic's default
# (https://docs.aws.amazon.com/sns/latest/dg/large-message-payloads.html), and retryd
# does not read the attribute yet, so it stays within the default.
MAX_BATCH_BYTES = MAX_PAYLOAD_BYTES


def _has_value(attribute: MessageAttribute) -> bool:
    return bool(attribute.string_value) or bool(attribute.binary_value)


class SnsTopicTarget(BatchResubmitter):
    """Publishes jobs to an SNS topic named by its ARN."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def open(self, target: Target) -> Destination | SendError:
        return Destination(target.arn, MAX_BATCH_BYTES, MAX_BATCH_BYTES)

    def prepare(self, target: Target, job: Job) -> Prepared:
        if has_forbidden_chars(job.body):
            raise RefusedError(unsendable_body())
        # SNS refuses the whole Publish for an attribute with an empty value; leaving
        # such attributes off also frees their slots for retryd's stamps.
        kept = {name: value for name, value in job.forward_attributes.items() if _has_value(value)}
        attributes, dropped = stamp_for_resubmit(dataclasses.replace(job, forward_attributes=kept))
        entry = _entry(job, attributes, fifo=target.is_fifo)
        return Prepared(entry, message_size_bytes(job.body, attributes), dropped)

    async def send(self, destination: Destination, entries: list[Entry]) -> list[SendError | None]:
        response = await self._client.publish_batch(
            TopicArn=destination.address, PublishBatchRequestEntries=numbered(entries)
        )
        return in_request_order(response, len(entries))


def _entry(job: Job, attributes: Attributes, *, fifo: bool) -> Entry:
    entry: Entry = {"Message": job.body}
    if attributes:
        entry["MessageAttributes"] = {name: value.to_wire() for name, value in attributes.items()}
    if fifo:
        entry["MessageGroupId"] = group_id(job)
        entry["MessageDeduplicationId"] = dedup_id(job)
    return entry
