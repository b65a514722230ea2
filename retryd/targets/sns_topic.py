"""Resubmit to an SNS topic with PublishBatch, stamping retryd's attributes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from retryd.aws import Client
from retryd.models import Attributes, Job, MessageAttribute, SendError, Target
from retryd.stamps import has_forbidden_chars, message_size_bytes, stamp_for_resubmit
from retryd.targets.base import Delivery, call_batch, pack_batches, unpreparable
from retryd.targets.sqs_queue import (
    MAX_PAYLOAD_BYTES,
    dedup_id,
    group_id,
    in_request_order,
    too_large,
    unsendable_body,
)

# "The total aggregate size of all messages that you send in a single PublishBatch API
# request can't exceed 262,144 bytes (256 KiB)" - Amazon SNS Developer Guide, "Amazon SNS
# message batching". The same number as SQS's, so the SQS constant is reused.
MAX_BATCH_BYTES = MAX_PAYLOAD_BYTES


def _has_value(attribute: MessageAttribute) -> bool:
    return bool(attribute.string_value) or bool(attribute.binary_value)


class SnsTopicTarget:
    """Publishes jobs to an SNS topic named by its ARN."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def submit(self, target: Target, jobs: Sequence[Job]) -> list[Delivery]:
        if not jobs:
            return []
        deliveries: list[Delivery | None] = [None] * len(jobs)
        to_send: list[tuple[int, dict[str, Any], int, int]] = []
        for index, job in enumerate(jobs):
            if has_forbidden_chars(job.body):
                deliveries[index] = Delivery(job, unsendable_body())
                continue
            try:
                # SNS refuses the whole Publish for an attribute with an empty value; leaving
                # such attributes off also frees their slots for retryd's stamps.
                kept = {
                    name: value
                    for name, value in job.forward_attributes.items()
                    if _has_value(value)
                }
                attributes, dropped = stamp_for_resubmit(
                    dataclasses.replace(job, forward_attributes=kept)
                )
                size_bytes = message_size_bytes(job.body, attributes)
                entry = _entry(str(index), job, attributes, fifo=target.is_fifo)
            except Exception as exc:  # noqa: BLE001 - one unreadable job must not fail the others
                # e.g. UnicodeEncodeError from a lone surrogate in a key or attribute.
                deliveries[index] = Delivery(job, unpreparable(exc))
                continue
            if size_bytes > MAX_BATCH_BYTES:
                deliveries[index] = Delivery(job, too_large(size_bytes, MAX_BATCH_BYTES), dropped)
                continue
            to_send.append((index, entry, size_bytes, dropped))
        for batch in pack_batches(to_send, lambda item: item[2], MAX_BATCH_BYTES):
            results = await call_batch(
                lambda entries: self._publish(target.arn, entries), [item[1] for item in batch]
            )
            for (index, _, _, dropped), error in zip(batch, results, strict=True):
                deliveries[index] = Delivery(jobs[index], error, dropped)
        return [delivery for delivery in deliveries if delivery is not None]

    async def _publish(
        self, topic_arn: str, entries: list[dict[str, Any]]
    ) -> list[SendError | None]:
        response = await self._client.publish_batch(
            TopicArn=topic_arn, PublishBatchRequestEntries=entries
        )
        return in_request_order(response, entries)


def _entry(entry_id: str, job: Job, attributes: Attributes, *, fifo: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"Id": entry_id, "Message": job.body}
    if attributes:
        entry["MessageAttributes"] = {name: value.to_wire() for name, value in attributes.items()}
    if fifo:
        entry["MessageGroupId"] = group_id(job)
        entry["MessageDeduplicationId"] = dedup_id(job)
    return entry
