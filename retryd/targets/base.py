"""The interface every resubmitter implements, one module per target type beside it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio
from botocore.exceptions import BotoCoreError, ClientError

from retryd.classify import from_exception, is_malformed_response
from retryd.models import ErrorClass, Job, SendError, Target

# SendMessageBatch, PublishBatch and PutEvents each take up to ten entries per call.
MAX_BATCH_ENTRIES = 10

T = TypeVar("T")

# Set on a Delivery when retryd refuses to send a payload over the target's limit.
PAYLOAD_TOO_LARGE = "retryd.PayloadTooLarge"
# Set when the body cannot be what the target needs (e.g. not JSON for Step Functions).
INVALID_PAYLOAD = "retryd.InvalidPayload"


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a target did with one job: accepted (error is None) or refused, and why."""

    job: Job
    error: SendError | None = None
    # retryd.* stamps left off because the original already used SQS's 10 attributes.
    stamps_dropped: int = 0

    @property
    def accepted(self) -> bool:
        return self.error is None


class Resubmitter(Protocol):
    """Sends jobs back to one kind of target.

    `submit` gets jobs that all share `target`, returns one Delivery per job in the
    same order, uses the service's batch API where it has one, and never raises
    for an AWS or network error: those become `Delivery.error` (see classify.py).
    """

    async def submit(self, target: Target, jobs: Sequence[Job]) -> list[Delivery]: ...


def unpreparable(exc: Exception, what: str = "message") -> SendError:
    """A job whose request could not even be built: permanent, and for that job alone.

    Only the exception's type is kept: its text could quote the payload into logs.
    """
    return SendError(
        ErrorClass.PERMANENT,
        INVALID_PAYLOAD,
        f"the {what} could not be prepared ({type(exc).__name__})",
    )


def resend_singly(exc: Exception, error: SendError) -> bool:
    """Whether a failed multi-entry batch call should be tried again one entry per call.

    A call refused as a whole for a permanent reason, or broken by something that
    is not AWS or the network, may be the fault of a single entry: sent alone,
    that entry gets its own verdict and the others still go. Throttling, 5xx and
    network trouble are about the service, not an entry, and more calls would
    only add load, so those stay one verdict for every entry. So does an answer
    that could not be read: the call was made and may have delivered every entry,
    and sending them again one by one would only add copies.
    """
    if is_malformed_response(exc):
        return False
    from_aws_or_network = isinstance(exc, ClientError | BotoCoreError | OSError | TimeoutError)
    return error.error_class is ErrorClass.PERMANENT or not from_aws_or_network


BatchCall = Callable[[list[dict[str, Any]]], Awaitable[list[SendError | None]]]


async def call_batch(call: BatchCall, entries: list[dict[str, Any]]) -> list[SendError | None]:
    """One batch API call: per-entry results in request order, never an exception.

    `call` sends the entries and reads the per-entry answers; when it raises, no
    entry is known to have arrived. A failure that may be one entry's fault (see
    `resend_singly`) is narrowed by sending each entry on its own, one after
    another so a FIFO queue or topic still sees them in order; any other failure
    is every entry's verdict.
    """
    try:
        return await call(entries)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a classified result
        error = from_exception(exc)
        if len(entries) > 1 and resend_singly(exc, error):
            return [(await call_batch(call, [entry]))[0] for entry in entries]
        return [error] * len(entries)


async def deliver_each(
    jobs: Sequence[Job], deliver: Callable[[Job], Awaitable[Delivery]]
) -> list[Delivery]:
    """Run `deliver` for every job at once (for targets with no batch API), results in order.

    The caller's `deliver` bounds itself (a shared CapacityLimiter) and never raises
    for AWS trouble, so every slot is filled when the task group exits.
    """
    deliveries: list[Delivery | None] = [None] * len(jobs)

    async def run(index: int, job: Job) -> None:
        deliveries[index] = await deliver(job)

    async with anyio.create_task_group() as group:
        for index, job in enumerate(jobs):
            group.start_soon(run, index, job)
    done = [delivery for delivery in deliveries if delivery is not None]
    if len(done) != len(jobs):
        raise RuntimeError("a delivery task ended without a result")
    return done


def pack_batches(
    items: Sequence[T], size_bytes: Callable[[T], int], max_bytes: int
) -> list[list[T]]:
    """Split items, in order, into batches of at most 10 entries and max_bytes in total.

    An item bigger than max_bytes on its own gets a batch to itself: the caller
    decides whether to refuse it or let the service judge it.
    """
    batches: list[list[T]] = []
    current: list[T] = []
    current_bytes = 0
    for item in items:
        item_bytes = size_bytes(item)
        if current and (
            len(current) >= MAX_BATCH_ENTRIES or current_bytes + item_bytes > max_bytes
        ):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += item_bytes
    if current:
        batches.append(current)
    return batches
