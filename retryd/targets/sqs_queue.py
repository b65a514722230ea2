"""Resubmit to an SQS queue with SendMessageBatch, and the batched sending parking shares."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from retryd import classify
from retryd.arns import Arn
from retryd.aws import Client
from retryd.models import Attributes, ErrorClass, Job, Refusal, SendError, Target
from retryd.stamps import has_forbidden_chars, message_size_bytes, stamp_for_resubmit
from retryd.targets.base import (
    BatchResubmitter,
    Destination,
    Entry,
    Prepared,
    RefusedError,
    send_packed,
    too_large,
)

# Each queue has its own limit, its MaximumMessageSize attribute: 1,024 bytes to 1 MiB
# (SetQueueAttributes API reference). SendMessageBatch takes up to 1 MiB in all
# ("The maximum allowed individual message size and the maximum total payload size
# ... are both 1 MiB", https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessageBatch.html);
# retryd keeps every call within the queue's own limit too, which older queues and
# emulators that still count 256 KiB per call also accept.
# What retryd assumes when a queue's own limit cannot be read: the long-standing
# default, which every queue takes.
MAX_PAYLOAD_BYTES = 262_144
# How long a queue's MaximumMessageSize is trusted before it is read again: the feed
# map's default refresh (discovery.feeds_refresh_cycles 10 x schedule.interval_s 60).
LIMIT_TTL_S = 600.0
# After a failed read, how soon it is tried again: a throttled read is not held for
# the full TTL.
LIMIT_RETRY_S = 60.0

# Set when a queue ARN names a region other than the one retryd's client sends to.
WRONG_REGION = "retryd.WrongRegion"

# MessageGroupId: up to 128 characters, alphanumerics and ASCII punctuation (SQS API reference).
_GROUP_ID = re.compile(r"[!-~]{1,128}")

log = structlog.get_logger(__name__)


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
    client: Client,
    queue_url: str,
    messages: Sequence[OutgoingMessage],
    max_message_bytes: int = MAX_PAYLOAD_BYTES,
    what: str = "message",
) -> list[SendError | None]:
    """Send every message with as few SendMessageBatch calls as the limits allow.

    One result per message, in order: None means SQS accepted it. A message over
    `max_message_bytes` (the queue's MaximumMessageSize) is refused without a
    call. Never raises for an AWS or network error.
    """
    sent = await send_message_batches_with_ids(client, queue_url, messages, max_message_bytes, what)
    return [None if isinstance(result, str) else result for result in sent]


async def send_message_batches_with_ids(
    client: Client,
    queue_url: str,
    messages: Sequence[OutgoingMessage],
    max_message_bytes: int = MAX_PAYLOAD_BYTES,
    what: str = "message",
) -> list[SendError | str]:
    """`send_message_batches`, with the MessageId SQS gave each accepted message ("" if none)."""
    results: list[SendError | str] = [""] * len(messages)
    fits: list[int] = []
    for index, message in enumerate(messages):
        if message.size_bytes > max_message_bytes:
            results[index] = too_large(message.size_bytes, max_message_bytes, what)
        else:
            fits.append(index)
    prepared = [messages[i].prepared() for i in fits]
    # The id SQS gave each accepted entry, by the entry (one dict per message, sent as is).
    ids: dict[int, str] = {}

    async def call(entries: list[Entry]) -> list[SendError | None]:
        response = await client.send_message_batch(QueueUrl=queue_url, Entries=numbered(entries))
        for accepted in response.get("Successful", []) or []:
            position = str(accepted.get("Id", ""))
            if position.isdigit() and int(position) < len(entries):
                ids[id(entries[int(position)])] = str(accepted.get("MessageId", ""))
        return in_request_order(response, len(entries))

    sent = await send_packed(prepared, max_message_bytes, call)
    for index, item, error in zip(fits, prepared, sent, strict=True):
        results[index] = error if error is not None else ids.get(id(item.entry), "")
    return results


async def read_max_message_bytes(client: Client, queue_url: str) -> int:
    """The queue's MaximumMessageSize; raises when it cannot be read (see classify.py)."""
    response = await client.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["MaximumMessageSize"]
    )
    attributes = response.get("Attributes") if isinstance(response, dict) else None
    value = attributes.get("MaximumMessageSize") if isinstance(attributes, dict) else None
    if not isinstance(value, str) or not value.isdigit():
        raise classify.MalformedResponseError(
            "GetQueueAttributes", "the answer has no MaximumMessageSize"
        )
    return int(value)


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


@dataclass(frozen=True, slots=True)
class _Limit:
    """A queue's MaximumMessageSize as last read, or why it could not be."""

    max_bytes: int
    read_at_s: float
    error: SendError | None = None


def _destination(url: str, limit: _Limit) -> Destination:
    return Destination(url, limit.max_bytes, limit.max_bytes, limit.error)


@dataclass(eq=False)
class _Lookup:
    """One target's URL and size-limit look-up, for the batches that arrive while it runs."""

    done: anyio.Event = field(default_factory=anyio.Event)
    answer: Destination | SendError | None = None


class SqsQueueTarget(BatchResubmitter):
    """Resubmits jobs to an SQS queue named by its ARN, stamping retryd's attributes.

    Each queue's own MaximumMessageSize is the limit, read once and cached for
    `limit_ttl_s`, never per message; when it cannot be read, 256 KiB is assumed.
    """

    def __init__(
        self,
        client: Client,
        *,
        limit_ttl_s: float = LIMIT_TTL_S,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        # Queue URLs never change for a queue's life; one GetQueueUrl per ARN is enough.
        self._urls: dict[str, str] = {}
        self._limits: dict[str, _Limit] = {}
        self._limit_ttl_s = limit_ttl_s
        self._clock_s = clock_s
        # Per target ARN, the look-up in flight: the batches that find nothing cached share
        # its answer, a failure included, rather than each making its own (every DLQ's first
        # batches for a target arrive together). A failed URL is not cached, so the next
        # batch to come after it asks again.
        self._lookups: dict[str, _Lookup] = {}

    async def open(self, target: Target) -> Destination | SendError:
        cached = self._cached(target)
        if cached is not None:
            return cached
        lookup = self._lookups.get(target.arn)
        if lookup is not None:
            await lookup.done.wait()
            if lookup.answer is not None:
                return lookup.answer
            # Its caller was cancelled before an answer: look again (one of the waiters leads).
            return await self.open(target)
        lookup = self._lookups[target.arn] = _Lookup()
        try:
            lookup.answer = await self._look_up(target)
        finally:
            del self._lookups[target.arn]
            lookup.done.set()
        return lookup.answer

    def _cached(self, target: Target) -> Destination | None:
        """The destination from the cache, while its size limit is not yet due to be read again."""
        url = self._urls.get(target.arn)
        limit = self._limits.get(target.arn)
        if url is None or limit is None:
            return None
        ttl_s = self._limit_ttl_s if limit.error is None else LIMIT_RETRY_S
        if self._clock_s() - limit.read_at_s >= min(ttl_s, self._limit_ttl_s):
            return None
        return _destination(url, limit)

    async def _look_up(self, target: Target) -> Destination | SendError:
        url = await self._queue_url(target)
        if isinstance(url, SendError):
            return url
        return _destination(url, await self._read_limit(target, url))

    async def _read_limit(self, target: Target, url: str) -> _Limit:
        now_s = self._clock_s()
        try:
            limit = _Limit(await read_max_message_bytes(self._client, url), now_s)
        except Exception as exc:  # noqa: BLE001 - an unread limit falls back, it fails nothing
            error = classify.from_exception(exc)
            log.warning(
                "target-limit-unread",
                target=target.arn,
                error=str(error),
                assumed_bytes=MAX_PAYLOAD_BYTES,
            )
            limit = _Limit(MAX_PAYLOAD_BYTES, now_s, error)
        self._limits[target.arn] = limit
        return limit

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
