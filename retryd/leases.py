"""A dead letter's lease: the only module that receives, hides, hands back and deletes SQS messages.

A receive gives retryd a lease on each message (its visibility timeout) and a
receipt handle for it; everything else retryd does to a message in a queue is
done through that handle while the lease holds: hand it back now (`release`,
visibility 0), hide it until it is due (`hide`), keep it longer while work is
in flight (`extend`), or delete it once its copy is safe (`delete`). Once a
lease has run out SQS may give the message to someone else under a new handle,
and a delete with the old one is then a no-op: so every step on a batch is
bounded by `act_by`, the one deadline formula.

The cycle (settle.dlq), a redrive job, `plan`, `inspect` (discovery.survey's
peek) and the sandbox all come here, so there is one place that knows SQS's
batch limits and how a partial batch failure is read. Nothing here raises for
what SQS answers to a hide, release or delete: the failures come back as values.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from retryd import classify
from retryd.models import DeadLetter, QueueRef

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        DeleteMessageBatchRequestEntryTypeDef,
    )

# SQS ReceiveMessage returns at most 10 messages per call.
RECEIVE_BATCH_MAX = 10
# SQS DeleteMessageBatch and ChangeMessageVisibilityBatch take at most 10 entries.
DELETE_BATCH_MAX = 10
VISIBILITY_BATCH_MAX = 10
# SQS hides a message for at most 12 hours from when it was received; a minute is
# kept back for the time since this batch was received.
MAX_HIDE_S = 43_200 - 60
# Time kept back from each lease for the delete that settles the batch.
LEASE_MARGIN_S = 5.0
# With a short lease the margin is at most this share of it, so work still gets most of it.
LEASE_MARGIN_SHARE = 0.2


def lease_margin_s(lease_s: float) -> float:
    """The time kept back from a lease of `lease_s` for the delete that settles the batch."""
    return min(LEASE_MARGIN_S, lease_s * LEASE_MARGIN_SHARE)


def act_by(lease_s: float) -> float:
    """The anyio-clock time by which work on a batch leased for `lease_s` must be done.

    Taken *before* the receive (the lease starts when SQS hands the messages out),
    less a margin for the delete that settles the batch. A batch's heartbeat
    (retryd.heartbeat) moves it on while work is in flight, up to drain.max_lease_s.
    """
    return anyio.current_time() + lease_s - lease_margin_s(lease_s)


@dataclass(frozen=True, slots=True)
class Held:
    """One leased message as a visibility change names it: its id and its newest handle."""

    message_id: str
    receipt_handle: str

    @classmethod
    def of(cls, letter: DeadLetter) -> Held:
        return cls(letter.message_id, letter.receipt_handle)


@dataclass(frozen=True, slots=True)
class LeaseFailure:
    """A message SQS did not delete or change: it keeps its lease, and reappears when it ends."""

    message_id: str
    error: str
    # The whole call failed (not this entry alone): its error is the call's.
    call_failed: bool = False


async def receive(
    sqs: SQSClient, queue: QueueRef, *, max_messages: int, wait_s: int, lease_s: int
) -> list[DeadLetter]:
    """One ReceiveMessage: up to `max_messages` (at most 10) with every attribute, leased for
    `lease_s`; none when the queue is empty. AWS errors propagate."""
    response = await sqs.receive_message(
        QueueUrl=queue.url,
        MaxNumberOfMessages=min(max_messages, RECEIVE_BATCH_MAX),
        WaitTimeSeconds=wait_s,
        VisibilityTimeout=lease_s,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )
    return [DeadLetter.from_wire(queue, raw) for raw in response.get("Messages", [])]


async def delete(sqs: SQSClient, queue: QueueRef, held: Sequence[Held]) -> list[LeaseFailure]:
    """Delete every message in `held` (their copies are safe); those SQS did not delete."""
    failures: list[LeaseFailure] = []
    for start in range(0, len(held), DELETE_BATCH_MAX):
        chunk = held[start : start + DELETE_BATCH_MAX]
        entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
            {"Id": str(i), "ReceiptHandle": item.receipt_handle} for i, item in enumerate(chunk)
        ]
        try:
            response = await sqs.delete_message_batch(QueueUrl=queue.url, Entries=entries)
        except Exception as exc:  # noqa: BLE001 - any failure means the original will reappear
            error = str(classify.from_exception(exc))
            failures.extend(LeaseFailure(item.message_id, error, True) for item in chunk)
            continue
        failures.extend(
            LeaseFailure(chunk[int(f["Id"])].message_id, str(classify.from_batch_failure(f)))
            for f in response.get("Failed", [])
        )
    return failures


async def change_visibility(
    sqs: SQSClient, queue: QueueRef, leases: Sequence[tuple[Held, int]]
) -> list[LeaseFailure]:
    """Set each message's visibility to its seconds (0: now; at most MAX_HIDE_S); the failures."""
    failures: list[LeaseFailure] = []
    for start in range(0, len(leases), VISIBILITY_BATCH_MAX):
        chunk = leases[start : start + VISIBILITY_BATCH_MAX]
        entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
            {
                "Id": str(i),
                "ReceiptHandle": item.receipt_handle,
                "VisibilityTimeout": max(0, min(seconds, MAX_HIDE_S)),
            }
            for i, (item, seconds) in enumerate(chunk)
        ]
        try:
            response = await sqs.change_message_visibility_batch(
                QueueUrl=queue.url, Entries=entries
            )
        except Exception as exc:  # noqa: BLE001 - a message not changed keeps its lease
            error = str(classify.from_exception(exc))
            failures.extend(LeaseFailure(item.message_id, error, True) for item, _ in chunk)
            continue
        failures.extend(
            LeaseFailure(chunk[int(f["Id"])][0].message_id, str(classify.from_batch_failure(f)))
            for f in response.get("Failed", [])
        )
    return failures


async def hide(
    sqs: SQSClient, queue: QueueRef, until_due: Sequence[tuple[Held, float]]
) -> list[LeaseFailure]:
    """Hide each message for its delay (rounded up, capped at SQS's 12 hours): not due yet."""
    return await change_visibility(
        sqs, queue, [(item, math.ceil(delay_s)) for item, delay_s in until_due]
    )


async def extend(
    sqs: SQSClient, queue: QueueRef, undecided: Sequence[Held], lease_s: int
) -> list[LeaseFailure]:
    """Give the messages still undecided a fresh lease of `lease_s` from now (a heartbeat)."""
    return await change_visibility(sqs, queue, [(item, lease_s) for item in undecided])


async def release(
    sqs: SQSClient, queue: QueueRef, handles: Mapping[str, str], lease_s: int
) -> list[str]:
    """Hand every lease in `handles` (message id -> handle) back at once; problems as text.

    `lease_s` is only for the text: how long a message not released stays hidden.
    """
    held = [Held(message_id, handle) for message_id, handle in handles.items()]
    failures = await change_visibility(sqs, queue, [(item, 0) for item in held])
    # A failed call is one problem (as many messages as it carried), not one per message.
    calls: Counter[str] = Counter(f.error for f in failures if f.call_failed)
    problems = [f"{count} message(s) not released: {error}" for error, count in calls.items()]
    problems += [
        f"message {f.message_id} not released: {f.error}" for f in failures if not f.call_failed
    ]
    return [f"{problem} (it reappears by itself within {lease_s}s)" for problem in problems]
