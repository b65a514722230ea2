"""Resubmit to an SQS queue with SendMessageBatch, and the batched sending parking shares."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from retryd import classify
from retryd.aws import Client
from retryd.models import Arn, Attributes, ErrorClass, Job, Refusal, SendError, Target
from retryd.stamps import has_forbidden_chars, message_size_bytes, stamp_for_resubmit
from retryd.targets.base import (
    BatchResubmitter,
    Destination,
    Entry,
    Prepared,
    RefusedError,
    send_packed,
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

    def prepared(self, stamps_dropped: int = 0) -> Prepared:
        """This message as a SendMessageBatch entry (without its batch-local Id)."""
        entry: Entry = {"MessageBody": self.body}
        if self.attributes:
            entry["MessageAttributes"] = {
                name: value.to_wire() for name, value in self.attributes.items()
            }
        if self.group_id is not None:
            entry["MessageGroupId"] = self.group_id
        if self.deduplication_id is not None:
            entry["MessageDeduplicationId"] = self.deduplication_id
        return Prepared(entry, self.size_bytes, stamps_dropped)


async def send_message_batches(
    client: Client, queue_url: str, messages: Sequence[OutgoingMessage]
) -> list[SendError | None]:
    """Send every message with as few SendMessageBatch calls as the limits allow.

    One result per message, in order: None means SQS accepted it. A message over
    the limit on its own is sent alone, for SQS to judge. Never raises for an
    AWS or network error.
    """

    async def call(entries: list[Entry]) -> list[SendError | None]:
        return await send_message_batch(client, queue_url, entries)

    return await send_packed([message.prepared() for message in messages], MAX_PAYLOAD_BYTES, call)


async def send_message_batch(
    client: Client, queue_url: str, entries: Sequence[Entry]
) -> list[SendError | None]:
    """One SendMessageBatch call: each entry's result, in order."""
    response = await client.send_message_batch(QueueUrl=queue_url, Entries=numbered(entries))
    return in_request_order(response, len(entries))


def numbered(entries: Sequence[Entry]) -> list[Entry]:
    """SQS/SNS batch entries with the batch-local Ids 0, 1, ... that their answers refer to."""
    return [{"Id": str(number), **entry} for number, entry in enumerate(entries)]


def in_request_order(response: dict[str, Any], count: int) -> list[SendError | None]:
    """An SQS/SNS batch response to `count` entries numbered 0.., one result each, in order."""
    outcome = map_batch_response(response, range(count))
    return [outcome[number] for number in range(count)]


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


class SqsQueueTarget(BatchResubmitter):
    """Resubmits jobs to an SQS queue named by its ARN, stamping retryd's attributes."""

    def __init__(self, client: Client) -> None:
        self._client = client
        # Queue URLs never change for a queue's life; one GetQueueUrl per ARN is enough.
        self._urls: dict[str, str] = {}

    async def open(self, target: Target) -> Destination | SendError:
        url = await self._queue_url(target)
        if isinstance(url, SendError):
            return url
        return Destination(url, MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES)

    def prepare(self, target: Target, job: Job) -> Prepared:
        if has_forbidden_chars(job.body):
            raise RefusedError(unsendable_body())
        attributes, dropped = stamp_for_resubmit(job)
        message = OutgoingMessage(job.body, attributes)
        if target.is_fifo:
            message = OutgoingMessage(job.body, attributes, group_id(job), dedup_id(job))
        return message.prepared(dropped)

    async def send(self, destination: Destination, entries: list[Entry]) -> list[SendError | None]:
        return await send_message_batch(self._client, destination.address, entries)

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
    return SendError.refused(
        Refusal.INVALID_PAYLOAD,
        "the body holds characters SQS and SNS do not carry (an unpaired surrogate or a "
        "control character)",
    )
