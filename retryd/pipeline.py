"""One received batch from one DLQ: resolve -> guard -> act -> settle.

The rule this module exists to keep: a message is deleted from its DLQ only after
its copy is safe (accepted by the target, or written to the parking queue).
Every other path leaves it where it is, to reappear after its lease.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from retryd import classify
from retryd.guards import Guards
from retryd.metrics import Metrics
from retryd.models import (
    DeadLetter,
    Decision,
    ErrorClass,
    Job,
    Outcome,
    ParkReason,
    QueueRef,
    Unresolvable,
)
from retryd.parking import Parking, ParkRequest
from retryd.resolve import ResolverChain
from retryd.targets import Delivery, TargetRouter
from retryd.targets.base import PAYLOAD_TOO_LARGE

log = structlog.get_logger("retryd.pipeline")

# SQS DeleteMessageBatch takes at most 10 entries.
DELETE_BATCH_MAX = 10
PARKING_FAILED = "parking-failed"
TRANSIENT_ERROR = "transient-error"


@dataclass(frozen=True, slots=True)
class _Park:
    letter: DeadLetter
    reason: str
    detail: str
    attempt: int
    job: Job | None = None


class Pipeline:
    """Decides and settles batches; shared by every worker of a cycle."""

    def __init__(
        self,
        *,
        sqs: Any,
        chain: ResolverChain,
        guards: Guards,
        targets: TargetRouter,
        parking: Parking,
        metrics: Metrics,
    ) -> None:
        self._sqs = sqs
        self._chain = chain
        self._guards = guards
        self._targets = targets
        self._parking = parking
        self._metrics = metrics

    async def handle(self, queue: QueueRef, letters: Sequence[DeadLetter]) -> list[Decision]:
        """Settle one batch; returns one Decision per letter."""
        jobs, parks = self._triage(letters)
        decisions: list[Decision] = []
        deletable: list[DeadLetter] = []

        for delivery in await self._targets.submit(jobs) if jobs else []:
            decision, park = self._after_delivery(delivery)
            if park is not None:
                parks.append(park)
                continue
            assert decision is not None
            decisions.append(decision)
            if decision.outcome is Outcome.RESUBMITTED:
                deletable.append(delivery.job.letter)

        park_results = (
            await self._parking.park(
                [ParkRequest(p.letter, p.reason, p.detail, p.attempt) for p in parks]
            )
            if parks
            else []
        )
        for park, error in zip(parks, park_results, strict=True):
            target = park.job.target if park.job else None
            if error is None:
                decisions.append(
                    Decision(
                        park.letter, Outcome.PARKED, target, park.reason, park.detail, park.attempt
                    )
                )
                deletable.append(park.letter)
            else:
                decisions.append(
                    Decision(
                        park.letter,
                        Outcome.FAILED,
                        target,
                        PARKING_FAILED,
                        f"could not park ({park.reason}): {error}",
                        park.attempt,
                    )
                )

        # A cancel arriving now would leave copies made but originals in place:
        # duplicates on the next cycle. Finishing the delete is cheaper than that.
        with anyio.CancelScope(shield=True):
            await self._delete(queue, deletable)
        for decision in decisions:
            self._report(decision)
        return decisions

    def _triage(self, letters: Sequence[DeadLetter]) -> tuple[list[Job], list[_Park]]:
        jobs: list[Job] = []
        parks: list[_Park] = []
        for letter in letters:
            resolved = self._chain.resolve(letter)
            if isinstance(resolved, Unresolvable):
                parks.append(_Park(letter, resolved.reason, resolved.detail, 0))
                continue
            refused = self._guards.check(resolved)
            if refused is not None:
                parks.append(
                    _Park(letter, refused.reason, refused.detail, resolved.attempt, resolved)
                )
                continue
            jobs.append(resolved)
        return jobs, parks

    def _after_delivery(self, delivery: Delivery) -> tuple[Decision | None, _Park | None]:
        job = delivery.job
        if delivery.stamps_dropped:
            self._metrics.record_stamps_dropped(job.letter.queue.name, delivery.stamps_dropped)
            log.info(
                "stamps-dropped",
                queue=job.letter.queue.name,
                message_id=job.letter.message_id,
                dropped=delivery.stamps_dropped,
                why="the original message already uses all 10 SQS message attributes",
            )
        if delivery.error is None:
            return Decision(
                job.letter, Outcome.RESUBMITTED, job.target, "", "", job.next_attempt
            ), None
        error = delivery.error
        self._metrics.record_resubmit_error(job.target.type, error.error_class, error.code)
        if error.error_class is ErrorClass.PERMANENT:
            reason = (
                ParkReason.PAYLOAD_TOO_LARGE
                if error.code == PAYLOAD_TOO_LARGE
                else ParkReason.TARGET_REJECTED
            )
            return None, _Park(job.letter, reason, str(error), job.attempt, job)
        # Left in the DLQ: it reappears after its lease. The code goes in the detail,
        # not the reason, so the reason stays a bounded metric label.
        return (
            Decision(
                job.letter, Outcome.FAILED, job.target, TRANSIENT_ERROR, str(error), job.attempt
            ),
            None,
        )

    async def _delete(self, queue: QueueRef, letters: Sequence[DeadLetter]) -> None:
        for start in range(0, len(letters), DELETE_BATCH_MAX):
            chunk = letters[start : start + DELETE_BATCH_MAX]
            entries = [
                {"Id": str(i), "ReceiptHandle": letter.receipt_handle}
                for i, letter in enumerate(chunk)
            ]
            try:
                response = await self._sqs.delete_message_batch(QueueUrl=queue.url, Entries=entries)
            except Exception as exc:  # noqa: BLE001 - any failure means the original will reappear
                error = classify.from_exception(exc)
                for letter in chunk:
                    self._delete_failed(queue, letter, str(error))
                continue
            for failed in response.get("Failed", []):
                letter = chunk[int(failed["Id"])]
                self._delete_failed(queue, letter, str(classify.from_batch_failure(failed)))

    def _delete_failed(self, queue: QueueRef, letter: DeadLetter, error: str) -> None:
        # The copy is safe; the original will reappear after its lease and be
        # handled again. Worth a metric: it is where duplicates come from.
        self._metrics.record_delete_failure(queue.name)
        log.warning("delete-failed", queue=queue.name, message_id=letter.message_id, error=error)

    def _report(self, decision: Decision) -> None:
        target_type = decision.target.type.value if decision.target else ""
        self._metrics.record_decision(
            decision.letter.queue.name, decision.outcome.value, decision.reason, target_type
        )
        emit = log.info if decision.outcome is Outcome.RESUBMITTED else log.warning
        emit(
            decision.outcome.value,
            queue=decision.letter.queue.name,
            message_id=decision.letter.message_id,
            target=decision.target.arn if decision.target else None,
            outcome=decision.outcome.value,
            reason=decision.reason or None,
            detail=decision.detail or None,
            attempt=decision.attempt,
        )
