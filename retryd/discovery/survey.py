"""Looking at a DLQ without taking from it: its depth, and its messages under a lease given back.

`retryd plan` and `retryd inspect` read messages this way; the cycle reads depth
and retention with `read_depth`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from retryd import classify
from retryd.models import DeadLetter, QueueRef

# SQS ReceiveMessage returns at most 10 messages per call.
RECEIVE_BATCH_MAX = 10
# Long enough to read a few hundred messages before the first lease runs out,
# short enough that a plan killed before it could hand its leases back hides
# nothing for long.
PEEK_LEASE_S = 30
# SQS ChangeMessageVisibilityBatch takes at most 10 entries.
RELEASE_BATCH_MAX = 10
# How long handing the leases back may hold off a cancellation (Ctrl-C, a deadline).
RELEASE_SHIELD_S = 10.0
# GetQueueAttributes names for a DLQ's depth, in Depth's order.
DEPTH_ATTRIBUTES = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)
RETENTION_ATTRIBUTE = "MessageRetentionPeriod"


@dataclass(frozen=True, slots=True)
class Depth:
    """SQS's approximate message counts for one queue, and how long it keeps a message."""

    visible: int
    in_flight: int
    delayed: int
    # MessageRetentionPeriod; None when SQS did not say.
    retention_s: int | None = None

    def to_json(self) -> dict[str, int]:
        return {"visible": self.visible, "in_flight": self.in_flight, "delayed": self.delayed}

    def describe(self) -> str:
        return f"{self.visible} visible, {self.in_flight} in flight, {self.delayed} delayed"


async def read_depth(sqs: Any, queue: QueueRef) -> Depth:
    """The queue's depth and retention; AWS errors propagate."""
    response = await sqs.get_queue_attributes(
        QueueUrl=queue.url, AttributeNames=[*DEPTH_ATTRIBUTES, RETENTION_ATTRIBUTE]
    )
    attributes = response.get("Attributes", {})
    visible, in_flight, delayed = (int(attributes.get(name, 0)) for name in DEPTH_ATTRIBUTES)
    retention = str(attributes.get(RETENTION_ATTRIBUTE, ""))
    return Depth(visible, in_flight, delayed, int(retention) if retention.isdigit() else None)


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
    sqs: Any,
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
            response = await sqs.receive_message(
                QueueUrl=found.queue.url,
                MaxNumberOfMessages=want,
                WaitTimeSeconds=wait_s,
                VisibilityTimeout=lease_s,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
            )
        except Exception as exc:  # noqa: BLE001 - reported per queue; the other queues go on
            found.errors.append(f"receive failed: {classify.from_exception(exc)}")
            return
        messages = response.get("Messages", [])
        if not messages:
            return
        repeated = False
        fresh = 0
        for raw in messages:
            letter = DeadLetter.from_wire(found.queue, raw)
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


async def release(
    sqs: Any, queue: QueueRef, handles: Mapping[str, str], lease_s: int = PEEK_LEASE_S
) -> list[str]:
    """Make every leased message visible again at once; the problems, if any, as text.

    `lease_s` is only for the text: how long a message not released stays hidden.
    """
    problems: list[str] = []
    items = list(handles.items())
    for start in range(0, len(items), RELEASE_BATCH_MAX):
        chunk = items[start : start + RELEASE_BATCH_MAX]
        entries = [
            {"Id": str(index), "ReceiptHandle": handle, "VisibilityTimeout": 0}
            for index, (_, handle) in enumerate(chunk)
        ]
        try:
            response = await sqs.change_message_visibility_batch(
                QueueUrl=queue.url, Entries=entries
            )
        except Exception as exc:  # noqa: BLE001 - the rest are still released; this is reported
            problems.append(f"{len(chunk)} message(s) not released: {classify.from_exception(exc)}")
            continue
        for failed in response.get("Failed", []):
            message_id = chunk[int(failed["Id"])][0]
            problems.append(
                f"message {message_id} not released: {classify.from_batch_failure(failed)}"
            )
    return [f"{problem} (it reappears by itself within {lease_s}s)" for problem in problems]


@asynccontextmanager
async def peek(
    sqs: Any,
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
