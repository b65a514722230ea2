"""A redrive step's pipeline: the cycle's (drain/batch.py) with the operator's overrides.

Each override is one step of the base's skeleton, handing the rest back to it
(STYLE.md 17-18): the base owns what happens to a message (settle.outcome) and
the delete that follows; this variant only changes when a message may go, what
a guard's park verdict means to an operator, and that nothing is left hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from retryd import leases
from retryd.admission.verdicts import Defer, DeferReason, Park, Verdict
from retryd.control.jobs import JobStore, MessageResult, RedriveJob, latest_results, tally
from retryd.drain.batch import Batch, Pipeline
from retryd.drain.redrive_spec import PARKING_SOURCE, Picked
from retryd.models import Decision, Job, Outcome, QueueRef, SourceKind, Unresolvable
from retryd.settle import outcome
from retryd.targets import Delivery

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = structlog.get_logger("retryd.redrive")

# Longest detail written to a log line.
LOG_DETAIL_MAX_CHARS = 1024


@dataclass
class Step:
    """One step's account: its results, the keys it sent, its canary failures."""

    results: list[MessageResult] = field(default_factory=list)
    # Every decision the pipeline settled, as it settled them: a batch cut short (a
    # signal) still deleted what was safe, and the job must account for those too.
    decided: list[Decision] = field(default_factory=list)
    # Keys sent, to recognise canaries that come back.
    sent_keys: set[str] = field(default_factory=set)
    refails: int = 0

    def account(self, picked: Sequence[Picked]) -> None:
        """The step's results from what was decided, in the order picked.

        A message the rate limit turned away was not tried: it has no result, and a
        later step takes it again.
        """
        decided = {decision.letter.message_id: decision for decision in self.decided}
        self.results = [
            result_of(decided[item.letter.message_id], item)
            for item in picked
            if item.letter.message_id in decided
            and not _rate_limited(decided[item.letter.message_id])
        ]

    async def store(
        self,
        job: RedriveJob,
        jobs: JobStore,
        latest: dict[str, MessageResult],
        settled: set[str],
    ) -> None:
        """Store the step's results and count them into the job's `latest` (not saved here)."""
        await jobs.add_results(job, self.results)
        latest.update(latest_results(self.results))
        tally(job, latest)
        settled |= {result.message_id for result in self.results}


class OperatorPipeline(Pipeline):
    """The cycle's pipeline with the operator's overrides; everything else is the base's.

    - now: admission without backoff, age or retention (`operator_now`);
    - a guard's park verdict is refused (handed back), never parked on its word;
    - a parked copy its target refuses again stays parked, as it was;
    - what is not deleted is handed back at once (visibility 0), not hidden;
    - canary accounting: every target error is a refail, every acceptance a key.
    """

    def __init__(self, *, kind: str, lease_s: int, sqs: SQSClient, **parts: Any) -> None:
        super().__init__(sqs=sqs, **parts)
        self._sqs = sqs
        self._kind = kind
        self._lease_s = lease_s
        self.step = Step()

    async def _assess(self, resolved: Sequence[Job | Unresolvable]) -> list[Verdict]:
        return await self._guards.assess(resolved, operator_now=True)

    async def _refuse(self, batch: Batch, parks: Sequence[Park]) -> None:
        for park in parks:
            batch.decide(outcome.refused(park))

    def _delivered(self, delivery: Delivery) -> Decision | Park:
        if delivery.error is None:
            self.step.sent_keys.add(delivery.job.key)
        else:
            self.step.refails += 1
        decided = super()._delivered(delivery)
        if isinstance(decided, Park) and self._kind == PARKING_SOURCE:
            return outcome.kept_parked(decided)
        return decided

    async def _hide(self, defers: Sequence[Defer]) -> None:
        """Nothing is hidden: whatever is not deleted is handed back in `_settled`."""

    async def _settled(self, queue: QueueRef, batch: Batch) -> None:
        if queue.kind is SourceKind.S3:
            # An object has no visibility to hand back: its lease (a ledger claim) is
            # released by the step that took it (Sources.holding).
            return
        deleted = {letter.message_id for letter in batch.deletable}
        back = {
            x.message_id: x.receipt_handle for x in batch.letters if x.message_id not in deleted
        }
        for problem in await leases.release(self._sqs, queue, back, self._lease_s):
            log.warning("redrive-hand-back-failed", queue=queue.name, problem=problem)

    def _record(self, decisions: Sequence[Decision]) -> None:
        self.step.decided.extend(decisions)
        for decision in decisions:
            fields = {
                "kind": self._kind,
                "queue": decision.letter.queue.name,
                "message_id": decision.letter.message_id,
                "target": decision.target.arn if decision.target else None,
                "outcome": decision.outcome.value,
                "reason": decision.reason or None,
                "detail": decision.detail[:LOG_DETAIL_MAX_CHARS] or None,
            }
            if decision.outcome is Outcome.RESUBMITTED:
                log.info("redrive-" + decision.outcome.value, **fields)
            else:
                log.warning("redrive-" + decision.outcome.value, **fields)


def _rate_limited(decision: Decision) -> bool:
    return decision.outcome is Outcome.DEFERRED and decision.reason == DeferReason.RATE_LIMITED


def result_of(decision: Decision, picked: Picked) -> MessageResult:
    """A redrive's result for one message: a view of its Decision, with the job's key."""
    key = picked.resolved.key if isinstance(picked.resolved, Job) else ""
    target = decision.target.arn if decision.target else ""
    return MessageResult(
        decision.letter.message_id, decision.outcome, decision.reason, target, key, decision.detail
    )
