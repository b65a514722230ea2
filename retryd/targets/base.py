"""The interface every resubmitter implements, and the loop every batch-API target shares.

Targets with a batch API (SQS, SNS, EventBridge) subclass `BatchResubmitter`
and supply only what differs between them: where the calls go and what they
may carry (`open`), one job as one entry (`prepare`) and one call (`send`).
Targets without one (Lambda, Step Functions) run `deliver_each`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import anyio
from botocore.exceptions import BotoCoreError, ClientError

from retryd.classify import from_exception, is_malformed_response
from retryd.models import ErrorClass, Job, Refusal, SendError, Target

# SendMessageBatch, PublishBatch and PutEvents each take up to ten entries per call.
MAX_BATCH_ENTRIES = 10

T = TypeVar("T")

Entry = dict[str, Any]


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


class RefusedError(Exception):
    """Raised by `BatchResubmitter.prepare` for a job the target cannot take."""

    def __init__(self, error: SendError) -> None:
        self.error = error
        super().__init__(str(error))


@dataclass(frozen=True, slots=True)
class Prepared:
    """One job (or parked copy) as an entry of a batch call, and its size as the service counts it.

    The entry has no batch-local `Id`: `send` numbers the entries of each call.
    """

    entry: Entry
    size_bytes: int
    stamps_dropped: int = 0


@dataclass(frozen=True, slots=True)
class Destination:
    """Where one target's batch calls go, and the most each entry and each call may carry."""

    # The queue URL, topic ARN or bus ARN that `send` addresses.
    address: str
    max_entry_bytes: int
    max_call_bytes: int
    # Why the limits are an assumption rather than the target's own (it could not be read).
    limit_error: SendError | None = None


def unpreparable(exc: Exception, what: str = "message") -> SendError:
    """A job whose request could not even be built: permanent, and for that job alone.

    Only the exception's type is kept: its text could quote the payload into logs.
    """
    return SendError.refused(
        Refusal.INVALID_PAYLOAD, f"the {what} could not be prepared ({type(exc).__name__})"
    )


def refuse_unless_json(
    job: Job, *, max_bytes: int, subject: str, call: str, needs: str
) -> SendError | None:
    """Refuse, without calling AWS, a body a JSON-only target (Lambda, Step Functions) would
    refuse anyway: over `max_bytes`, or not JSON. None when it may be sent."""
    size_bytes = len(job.body.encode())
    if size_bytes > max_bytes:
        return SendError.refused(
            Refusal.PAYLOAD_TOO_LARGE,
            f"{subject} is {size_bytes} bytes; {call} takes at most {max_bytes}",
        )
    try:
        json.loads(job.body)
    except ValueError as exc:
        return SendError.refused(Refusal.INVALID_PAYLOAD, f"{needs}: {exc}")
    return None


def too_large(size_bytes: int, limit_bytes: int, what: str = "message") -> SendError:
    """A job over the target's limit: refused before any call, and parked payload-too-large."""
    return SendError.refused(
        Refusal.PAYLOAD_TOO_LARGE,
        f"the {what} is {size_bytes} bytes; the limit is {limit_bytes}",
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


BatchCall = Callable[[list[Entry]], Awaitable[list[SendError | None]]]


async def call_batch(call: BatchCall, entries: list[Entry]) -> list[SendError | None]:
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


def over_limit(size_bytes: int, destination: Destination, what: str) -> SendError:
    """The verdict on an entry over the destination's limit.

    Over the target's own limit, it is refused for good. Over a limit assumed
    because the real one could not be read, it is refused for good only when that
    read failed for good (no permission, say); after a transient failure it waits,
    as a guess must never park a message the target might take.
    """
    refused = too_large(size_bytes, destination.max_entry_bytes, what)
    unread = destination.limit_error
    if unread is None:
        return refused
    because = f"{refused.message} (assumed: the target's own limit could not be read: {unread})"
    if unread.error_class is ErrorClass.TRANSIENT:
        return SendError(ErrorClass.TRANSIENT, unread.code, because)
    return SendError.refused(Refusal.PAYLOAD_TOO_LARGE, because)


async def send_packed(
    prepared: Sequence[Prepared], max_call_bytes: int, call: BatchCall
) -> list[SendError | None]:
    """Send every entry with as few calls as the limits allow: one result per entry, in order.

    Calls go out one after another, so a FIFO queue or topic sees the entries in
    the order given. Never raises for an AWS or network error.
    """
    results: list[SendError | None] = [None] * len(prepared)
    indexed = list(enumerate(prepared))
    for batch in pack_batches(indexed, lambda pair: pair[1].size_bytes, max_call_bytes):
        errors = await call_batch(call, [item.entry for _, item in batch])
        for (index, _), error in zip(batch, errors, strict=True):
            results[index] = error
    return results


class BatchResubmitter(ABC):
    """The resubmit loop of every target with a batch API, one call per batch of jobs.

    For the jobs of one target: `open` once (a failure there is every job's
    verdict), `prepare` each job (a refusal, an exception or an entry over the
    limit fails that job alone), pack the rest into as few calls as the limits
    allow, `send` each call and give every job its own result, in order.
    """

    # What one entry is called in refusals ("the event is 300000 bytes; ...").
    entry_name: ClassVar[str] = "message"

    async def submit(self, target: Target, jobs: Sequence[Job]) -> list[Delivery]:
        if not jobs:
            return []
        destination = await self.open(target)
        if isinstance(destination, SendError):
            return [Delivery(job, destination) for job in jobs]
        deliveries: list[Delivery | None] = [None] * len(jobs)
        ready: list[int] = []
        prepared: list[Prepared] = []
        for index, job in enumerate(jobs):
            try:
                item = self.prepare(target, job)
            except RefusedError as refusal:
                deliveries[index] = Delivery(job, refusal.error)
                continue
            except Exception as exc:  # noqa: BLE001 - one unreadable job must not fail the others
                # RecursionError from deeply nested JSON, UnicodeEncodeError from a lone
                # surrogate, ...: only the type is named, as the text could quote the payload.
                deliveries[index] = Delivery(job, unpreparable(exc, self.entry_name))
                continue
            if item.size_bytes > destination.max_entry_bytes:
                oversized = over_limit(item.size_bytes, destination, self.entry_name)
                deliveries[index] = Delivery(job, oversized, item.stamps_dropped)
                continue
            ready.append(index)
            prepared.append(item)

        async def call(entries: list[Entry]) -> list[SendError | None]:
            return await self.send(destination, entries)

        errors = await send_packed(prepared, destination.max_call_bytes, call)
        for index, item, error in zip(ready, prepared, errors, strict=True):
            deliveries[index] = Delivery(jobs[index], error, item.stamps_dropped)
        return [delivery for delivery in deliveries if delivery is not None]

    @abstractmethod
    async def open(self, target: Target) -> Destination | SendError:
        """Where this target's calls go and what they may carry; a SendError fails every job."""

    @abstractmethod
    def prepare(self, target: Target, job: Job) -> Prepared:
        """One job as an entry; RefusedError for a job the target cannot take.

        Any other exception is taken as the job's fault: it fails that job alone.
        """

    @abstractmethod
    async def send(self, destination: Destination, entries: list[Entry]) -> list[SendError | None]:
        """One batch call: the error (or None) of each entry, in order.

        Raising means no entry is known to have arrived, unless what was raised says
        the answer was unreadable (see `call_batch` and classify.MalformedResponseError).
        """
