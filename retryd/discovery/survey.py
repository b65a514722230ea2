"""The one survey of the DLQs that the cycle, `retryd plan` and `retryd inspect` share.

Which DLQs there are and which queues must never be resubmitted into
(`survey_queues`), how deep each DLQ is and how long it keeps a message
(`size_up`), and a look at the messages under a lease handed straight back
(`peek`, and `look_at_each` over many DLQs); the receives and hand-backs
themselves are retryd.leases'. The commands
see the queues the way a cycle sees them because they read them with the same code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final, Generic, Protocol, TypeVar

import anyio

from retryd import classify
from retryd.discovery.queues import discover_queues, find_queue
from retryd.leases import RECEIVE_BATCH_MAX, receive, release
from retryd.models import DeadLetter, QueueRef, queue_ref_from_url
from retryd.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.literals import QueueAttributeNameType

T = TypeVar("T")

# Long enough to read a few hundred messages before the first lease runs out,
# short enough that a plan killed before it could hand its leases back hides
# nothing for long.
PEEK_LEASE_S = 30
# How long handing the leases back may hold off a cancellation (Ctrl-C, a deadline).
RELEASE_SHIELD_S = 10.0
# GetQueueAttributes names for a DLQ's depth, in Depth's order.
DEPTH_ATTRIBUTES: tuple[QueueAttributeNameType, ...] = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)
RETENTION_ATTRIBUTE: Final = "MessageRetentionPeriod"
# The SSE-KMS key (key id, key ARN, alias name or alias ARN, as the queue's owner set
# it); absent for unencrypted and SSE-SQS queues. Read in the same call as the depth.
KMS_KEY_ATTRIBUTE: Final = "KmsMasterKeyId"


@dataclass(frozen=True, slots=True)
class Depth:
    """SQS's approximate message counts for one queue, and how long it keeps a message."""

    visible: int
    in_flight: int
    delayed: int
    # MessageRetentionPeriod; None when SQS did not say.
    retention_s: int | None = None
    # KmsMasterKeyId; None when the queue is not encrypted with a KMS key.
    kms_key: str | None = None

    def to_json(self) -> dict[str, int]:
        return {"visible": self.visible, "in_flight": self.in_flight, "delayed": self.delayed}

    def describe(self) -> str:
        return f"{self.visible} visible, {self.in_flight} in flight, {self.delayed} delayed"


async def read_depth(sqs: SQSClient, queue: QueueRef) -> Depth:
    """The queue's depth and retention; AWS errors propagate."""
    response = await sqs.get_queue_attributes(
        QueueUrl=queue.url,
        AttributeNames=[*DEPTH_ATTRIBUTES, RETENTION_ATTRIBUTE, KMS_KEY_ATTRIBUTE],
    )
    attributes = response.get("Attributes", {})
    visible, in_flight, delayed = (int(attributes.get(name, 0)) for name in DEPTH_ATTRIBUTES)
    retention = str(attributes.get(RETENTION_ATTRIBUTE, ""))
    return Depth(
        visible,
        in_flight,
        delayed,
        int(retention) if retention.isdigit() else None,
        str(attributes.get(KMS_KEY_ATTRIBUTE) or "") or None,
    )


@dataclass(frozen=True, slots=True)
class Sizing:
    """One DLQ as a cycle is about to read it: its depth, and its retention carried on the queue."""

    # With `retention_s` set when SQS said, so every letter carries it to the guards'
    # retention check (which rescues messages SQS is about to drop).
    queue: QueueRef
    depth: Depth | None
    # Why the depth is unknown (the classified AWS error); None when it is known.
    problem: str | None = None

    @property
    def empty(self) -> bool:
        """SQS reports no visible message: a cycle skips the DLQ rather than long-poll it.

        SQS's count is approximate, so a message that arrived just now waits for the next look.
        """
        return self.depth is not None and self.depth.visible == 0


async def size_up(sqs: SQSClient, queue: QueueRef) -> Sizing:
    """The queue's depth and retention; an AWS error is kept as the `problem`, never raised.

    No depth is no reason not to read the queue: the caller reads it regardless.
    """
    try:
        depth = await read_depth(sqs, queue)
    except Exception as exc:  # noqa: BLE001 - a cycle drains without a depth; so do the commands
        return Sizing(queue, None, str(classify.from_exception(exc)))
    return Sizing(replace(queue, retention_s=depth.retention_s), depth)


@dataclass(frozen=True, slots=True)
class Survey:
    """The DLQs to read, and the parking queue beside them."""

    dlqs: list[QueueRef]
    parking_arn: str

    @property
    def protected(self) -> list[str]:
        """ARNs no message may be resubmitted into: every DLQ, and the parking queue."""
        return [queue.arn for queue in self.dlqs] + [self.parking_arn]


def queue_arn(sqs: SQSClient, queue_url: str) -> str:
    """The ARN of a queue of `sqs`'s region, from its URL (the parking queue's, found by name)."""
    return queue_ref_from_url(queue_url, sqs.meta.region_name).arn


async def survey_queues(sqs: SQSClient, settings: Settings, parking_arn: str) -> Survey:
    """Every DLQ this cycle drains, beside the parking queue; discovery's AWS errors propagate."""
    dlqs = await discover_queues(sqs, settings.discovery, settings.parking.queue)
    return Survey(dlqs, parking_arn)


async def select_queues(
    sqs: SQSClient, settings: Settings, names: Sequence[str]
) -> tuple[list[QueueRef], list[str]]:
    """The named queues (those found, then the names not found), or every discovered DLQ.

    A name is resolved as an explicit `discovery.queues` entry is; an entry that is
    no queue URL is not found.
    """
    if not names:
        return await discover_queues(sqs, settings.discovery, settings.parking.queue), []
    queues: dict[str, QueueRef] = {}
    missing: list[str] = []
    for entry in names:
        try:
            ref = await find_queue(sqs, entry)
        except ValueError:
            ref = None
        if ref is None:
            missing.append(entry)
        else:
            queues.setdefault(ref.arn, ref)
    return list(queues.values()), missing


@dataclass
class Peek:
    """The messages read from one DLQ under a lease, and what went wrong reading them."""

    queue: QueueRef
    letters: list[DeadLetter] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Message id -> the newest receipt handle: after a repeat, SQS honours only that one.
    handles: dict[str, str] = field(default_factory=dict)
    # The read stopped at `max_messages` rather than at the end of the queue.
    truncated: bool = False


async def _receive_all(
    sqs: SQSClient,
    found: Peek,
    *,
    max_messages: int,
    wait_s: int,
    lease_s: int,
    on_batch: Callable[[int], None],
) -> None:
    while len(found.letters) < max_messages:
        want = min(RECEIVE_BATCH_MAX, max_messages - len(found.letters))
        try:
            letters = await receive(
                sqs, found.queue, max_messages=want, wait_s=wait_s, lease_s=lease_s
            )
        except Exception as exc:  # noqa: BLE001 - reported per queue; the other queues go on
            found.errors.append(f"receive failed: {classify.from_exception(exc)}")
            return
        if not letters:
            return
        repeated = False
        fresh = 0
        for letter in letters:
            repeated = repeated or letter.message_id in found.handles
            if letter.message_id not in found.handles:
                found.letters.append(letter)
                fresh += 1
            found.handles[letter.message_id] = letter.receipt_handle
        on_batch(fresh)
        if repeated:
            # The first leases have run out and the queue has come round again:
            # everything there was to see has been seen.
            return
    found.truncated = True


@asynccontextmanager
async def peek(
    sqs: SQSClient,
    queue: QueueRef,
    *,
    max_messages: int,
    wait_s: int,
    on_batch: Callable[[int], None] = lambda _: None,
    lease_s: int = PEEK_LEASE_S,
) -> AsyncIterator[Peek]:
    """Receive up to `max_messages` under a `lease_s` lease; on leaving, release every lease.

    The leases are held while the caller works so that later receives reach the
    rest of the queue instead of the same messages again. They are handed back
    whatever happens (an error, a cancellation), shielded for a few seconds.
    A receive that fails ends the read and is recorded in `Peek.errors`.
    """
    result = Peek(queue)
    try:
        await _receive_all(
            sqs,
            result,
            max_messages=max_messages,
            wait_s=wait_s,
            lease_s=lease_s,
            on_batch=on_batch,
        )
        yield result
    finally:
        with anyio.move_on_after(RELEASE_SHIELD_S, shield=True):
            result.errors.extend(await release(sqs, queue, result.handles, lease_s))


class ReadProgress(Protocol):
    """Where `look_at_each` reports how far it has read (commands.progress draws it)."""

    def reading(
        self, queue: str, expected: int | None
    ) -> AbstractContextManager[Callable[[int], None]]:
        """The context of reading `queue` (about `expected` messages); given each batch's size."""
        ...


@dataclass
class Look(Generic[T]):
    """One DLQ read under leases handed back: its depth, and what `examine` made of its messages."""

    queue: QueueRef
    depth: Depth | None = None
    # None when the queue was not read (SQS reported it empty).
    finding: T | None = None
    sampled: int = 0
    # The read stopped at `max_messages` rather than at the end of the queue.
    truncated: bool = False
    errors: list[str] = field(default_factory=list)
    # Trouble that did not stop the queue being read (its depth unknown).
    warnings: list[str] = field(default_factory=list)


async def look_at(
    sqs: SQSClient,
    queue: QueueRef,
    examine: Callable[[list[DeadLetter]], Awaitable[T]],
    *,
    max_messages: int,
    wait_s: int,
    progress: ReadProgress,
) -> Look[T]:
    """Size the queue up, skip it when empty, else peek and `examine` while the leases are held."""
    sizing = await size_up(sqs, queue)
    look: Look[T] = Look(queue, sizing.depth)
    if sizing.problem is not None:
        look.warnings.append(f"depth unknown: {sizing.problem}")
    if sizing.empty:
        return look
    expected = min(max_messages, sizing.depth.visible) if sizing.depth else None
    with progress.reading(queue.name, expected) as advance:
        async with peek(
            sqs, sizing.queue, max_messages=max_messages, wait_s=wait_s, on_batch=advance
        ) as seen:
            look.finding = await examine(seen.letters)
    look.sampled = len(seen.letters)
    look.truncated = seen.truncated
    look.errors.extend(seen.errors)
    return look


async def look_at_each(
    sqs: SQSClient,
    queues: Sequence[QueueRef],
    examine: Callable[[list[DeadLetter]], Awaitable[T]],
    *,
    max_messages: int,
    wait_s: int,
    concurrency: int,
    progress: ReadProgress,
) -> list[Look[T]]:
    """`look_at` every queue, `concurrency` at a time; the looks in the order of `queues`."""
    looks: list[Look[T]] = [Look(queue) for queue in queues]
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(index: int) -> None:
        async with limiter:
            looks[index] = await look_at(
                sqs,
                queues[index],
                examine,
                max_messages=max_messages,
                wait_s=wait_s,
                progress=progress,
            )

    async with anyio.create_task_group() as group:
        for index in range(len(queues)):
            group.start_soon(one, index)
    return looks
