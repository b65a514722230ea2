"""Resubmit to an SQS queue with SendMessageBatch, and the size-aware batching parking shares."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from retryd import classify
from retryd.aws import Client
from retryd.models import Arn, Attributes, ErrorClass, Job, SendError, Target
from retryd.stamps import has_forbidden_chars, message_size_bytes, stamp_for_resubmit
from retryd.targets.base import (
    INVALID_PAYLOAD,
    PAYLOAD_TOO_LARGE,
    Delivery,
    call_batch,
    pack_batches,
    unpreparable,
)

# SendMessageBatch: "The maximum allowed individual message size and the maximum total
# payload size (the sum of the individual lengths of all of the batched messages) are
# both 256 KiB (262,144 bytes)" (SQS API reference). Queues created since SQS raised
# its limit to 1 MiB may take more, and moto 5.2 accepts 1 MiB, but 256 KiB is what
# every queue and every emulator takes, so it is the limit retryd sends within.
MAX_PAYLOAD_BYTES = 262_144

# Set when a queue ARN names a region other than the one retryd's client sends to.
WRONG_REGION = "retryd.WrongRegion"

# MessageGroupId: up to 128 characters, alphanumerics and ASCII punctuation (SQS API reference).
_GROUP_ID = re.compile(r"[!-~]{1,128}")


def dedup_id(job: Job) -> str:
    """A FIFO deduplication id (64 hex characters) for this dead letter's attempt.

    The DLQ message id is in it because keys can collide on purpose: a derived key
    hashes the payload, so two distinct dead letters with one body share a key and
    would otherwise share an id, and the FIFO queue would drop the second while
    retryd deletes it from the DLQ. SQS gives the same id when it hands the same
    dead letter out again, so a resend after a crash is still deduplicated.
    """
    identity = f"{job.key}\n{job.letter.message_id}\n{job.next_attempt}"
    return hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()


def group_id(job: Job) -> str:
    """The dead letter's own FIFO group, else the job key (hashed if SQS would refuse it)."""
    group = job.letter.group_id or job.key
    if _GROUP_ID.fullmatch(group):
        return group
    return hashlib.sha256(group.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One SendMessageBatch entry before it is given a batch-local Id."""

    body: str
    attributes: Attributes = field(default_factory=dict)
    group_id: str | None = None
    deduplication_id: str | None = None

    @property
    def size_bytes(self) -> int:
        return message_size_bytes(self.body, self.attributes)

    def to_entry(self, entry_id: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"Id": entry_id, "MessageBody": self.body}
        if self.attributes:
            entry["MessageAttributes"] = {
                name: value.to_wire() for name, value in self.attributes.items()
            }
        if self.group_id is not None:
            entry["MessageGroupId"] = self.group_id
        if self.deduplication_id is not None:
            entry["MessageDeduplicationId"] = self.deduplication_id
        return entry


async def send_message_batches(
    client: Client, queue_url: str, messages: Sequence[OutgoingMessage]
) -> list[SendError | None]:
    """Send every message with as few SendMessageBatch calls as the limits allow.

    One result per message, in order: None means SQS accepted it. Batches go out
    one after another so that a FIFO queue sees the messages in the order given.
    Never raises for an AWS or network error.
    """

    async def call(entries: list[dict[str, Any]]) -> list[SendError | None]:
        response = await client.send_message_batch(QueueUrl=queue_url, Entries=entries)
        return in_request_order(response, entries)

    results: list[SendError | None] = [None] * len(messages)
    indexed = list(enumerate(messages))
    for batch in pack_batches(indexed, lambda pair: pair[1].size_bytes, MAX_PAYLOAD_BYTES):
        entries = [message.to_entry(str(index)) for index, message in batch]
        for (index, _), error in zip(batch, await call_batch(call, entries), strict=True):
            results[index] = error
    return results


def in_request_order(
    response: dict[str, Any], entries: Sequence[dict[str, Any]]
) -> list[SendError | None]:
    """An SQS/SNS batch response as one result per entry sent, in the order sent."""
    outcome = map_batch_response(response, [int(entry["Id"]) for entry in entries])
    return [outcome[int(entry["Id"])] for entry in entries]


def map_batch_response(
    response: dict[str, Any], indexes: Sequence[int]
) -> dict[int, SendError | None]:
    """A batch response's Successful/Failed entries, by the integer Id each entry was sent with.

    MalformedResponseError when the answer names an entry that was not sent, or
    an entry without an Id: such an answer proves nothing about any entry.
    """
    # An entry the service reported neither way was not confirmed: it stays in its DLQ.
    unreported = SendError(ErrorClass.TRANSIENT, "retryd.Unreported", "entry missing from response")
    outcome: dict[int, SendError | None] = dict.fromkeys(indexes, unreported)
    sent = {str(index): index for index in indexes}
    for name in ("Successful", "Failed"):
        reported = response.get(name, [])
        if not isinstance(reported, list):
            raise classify.MalformedResponseError("batch call", f"{name} is not a list")
        for entry in reported:
            index = sent.get(str(entry.get("Id"))) if isinstance(entry, dict) else None
            if index is None:
                raise classify.MalformedResponseError(
                    "batch call", f"a {name} entry names no entry that was sent"
                )
            outcome[index] = None if name == "Successful" else classify.from_batch_failure(entry)
    return outcome


class SqsQueueTarget:
    """Resubmits jobs to an SQS queue named by its ARN, stamping retryd's attributes."""

    def __init__(self, client: Client) -> None:
        self._client = client
        # Queue URLs never change for a queue's life; one GetQueueUrl per ARN is enough.
        self._urls: dict[str, str] = {}

    async def submit(self, target: Target, jobs: Sequence[Job]) -> list[Delivery]:
        if not jobs:
            return []
        url = await self._queue_url(target)
        if isinstance(url, SendError):
            return [Delivery(job, url) for job in jobs]
        deliveries: list[Delivery | None] = [None] * len(jobs)
        to_send: list[tuple[int, OutgoingMessage, int]] = []
        for index, job in enumerate(jobs):
            if has_forbidden_chars(job.body):
                deliveries[index] = Delivery(job, unsendable_body())
                continue
            try:
                attributes, dropped = stamp_for_resubmit(job)
                message = OutgoingMessage(job.body, attributes)
                if target.is_fifo:
                    message = OutgoingMessage(job.body, attributes, group_id(job), dedup_id(job))
                size_bytes = message.size_bytes
            except Exception as exc:  # noqa: BLE001 - one unreadable job must not fail the others
                # e.g. UnicodeEncodeError from a lone surrogate in a key or attribute.
                deliveries[index] = Delivery(job, unpreparable(exc))
                continue
            if size_bytes > MAX_PAYLOAD_BYTES:
                deliveries[index] = Delivery(job, too_large(size_bytes), dropped)
            else:
                to_send.append((index, message, dropped))
        errors = await send_message_batches(self._client, url, [item[1] for item in to_send])
        for (index, _, dropped), error in zip(to_send, errors, strict=True):
            deliveries[index] = Delivery(jobs[index], error, dropped)
        return [delivery for delivery in deliveries if delivery is not None]

    async def _queue_url(self, target: Target) -> str | SendError:
        cached = self._urls.get(target.arn)
        if cached is not None:
            return cached
        try:
            arn = Arn.parse(target.arn)
            region = str(self._client.meta.region_name)
            if arn.region != region:
                # GetQueueUrl looks a name up in the client's region only: another
                # region's ARN would reach a different queue that shares the name.
                return SendError(
                    ErrorClass.PERMANENT,
                    WRONG_REGION,
                    f"queue {target.arn} is not in {region}, the region retryd sends to",
                )
            response = await self._client.get_queue_url(
                QueueName=arn.resource, QueueOwnerAWSAccountId=arn.account
            )
            url = classify.required(response, "QueueUrl", "GetQueueUrl")
        except Exception as exc:  # noqa: BLE001 - every failure becomes a classified Delivery
            return classify.from_exception(exc)
        self._urls[target.arn] = url
        return url


def unsendable_body() -> SendError:
    """A body SQS and SNS refuse (or would silently alter): not a character of XML 1.0."""
    return SendError(
        ErrorClass.PERMANENT,
        INVALID_PAYLOAD,
        "the body holds characters SQS and SNS do not carry (an unpaired surrogate or a "
        "control character)",
    )


def too_large(size_bytes: int, limit_bytes: int = MAX_PAYLOAD_BYTES) -> SendError:
    return SendError(
        ErrorClass.PERMANENT,
        PAYLOAD_TOO_LARGE,
        f"message with attributes is {size_bytes} bytes; the limit is {limit_bytes}",
    )
