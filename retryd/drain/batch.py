"""One received batch from one DLQ: resolve -> admit -> act -> settle. It only orchestrates.

Resolution is resolve/'s, admission admission/'s, sending targets/'s, and the
settling itself settle/'s (the parking queue, and the DLQ's delete and hide).

The rule this module exists to keep: a message is deleted from its DLQ only after
its copy is safe (accepted by the target, or written to the parking queue).
Every other path leaves it where it is, to reappear after its lease.

A batch has to be settled while its lease (the visibility timeout) still holds:
once the lease runs out another worker may receive the same message under a new
receipt handle, and SQS then treats a delete with the old handle as a no-op. So
acting on a batch is bounded by the lease, and only the final delete is shielded
from cancellation (briefly, so that a second SIGTERM still means "now").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from retryd.admission import Defer, Done, Go, Guards, Hold, Park, Verdict
from retryd.control.deferrals import HiddenBook
from retryd.metrics import Metrics
from retryd.models import (
    DeadLetter,
    Decision,
    FailReason,
    Job,
    Outcome,
    QueueRef,
    SendError,
    Unresolvable,
)
from retryd.resolve import ResolverChain
from retryd.settle import outcome
from retryd.settle.dlq import DeadLetterQueues
from retryd.settle.parking import Parking, ParkRequest
from retryd.targets import Delivery
from retryd.targets.sender import Sender, Sent

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = structlog.get_logger("retryd.pipeline")

# How long a started delete may hold off cancellation (a stop, a second signal).
DELETE_SHIELD_S = 10.0
# Longest detail written to a log line (parked copies have their own limit).
LOG_DETAIL_MAX_CHARS = 1024


def _metric_labels(decision: Decision) -> tuple[QueueRef, str, str, str]:
    """The labels retryd_messages_total counts a decision under (the queue gives three)."""
    target_type = decision.target.type.value if decision.target else ""
    return decision.letter.queue, decision.outcome.value, decision.reason, target_type


@dataclass
class Batch:
    """Decisions so far, so that whatever goes wrong, no letter is left without one."""

    letters: Sequence[DeadLetter]
    decided: dict[str, Decision] = field(default_factory=dict)
    deletable: list[DeadLetter] = field(default_factory=list)
    # Message id -> what its source tried before the DLQ: shown on whatever is decided.
    source_attempts: dict[str, int] = field(default_factory=dict)

    def decide(self, decision: Decision, *, delete: bool = False) -> None:
        source = self.source_attempts.get(decision.letter.message_id, 0)
        if source and not decision.source_attempts:
            decision = replace(decision, source_attempts=source)
        self.decided[decision.letter.message_id] = decision
        if delete:
            self.deletable.append(decision.letter)

    def undecided(self) -> list[DeadLetter]:
        return [letter for letter in self.letters if letter.message_id not in self.decided]

    def fail_rest(self, reason: str, detail: str) -> None:
        for letter in self.undecided():
            self.decide(Decision(letter, Outcome.FAILED, None, reason, detail))


class Pipeline:
    """Decides and settles batches; shared by every worker of a cycle."""

    def __init__(
        self,
        *,
        sqs: SQSClient,
        chain: ResolverChain,
        guards: Guards,
        sender: Sender,
        parking: Parking,
        metrics: Metrics,
        log_payloads: bool = False,
        hidden: HiddenBook | None = None,
    ) -> None:
        # The hidden messages are noted where they are hidden, so a redrive can hand them back.
        self._dlqs = DeadLetterQueues(sqs, metrics, hidden)
        self._chain = chain
        self._guards = guards
        self._sender = sender
        self._parking = parking
        self._metrics = metrics
        self._log_payloads = log_payloads

    async def handle(
        self,
        queue: QueueRef,
        letters: Sequence[DeadLetter],
        act_by: float,
        resolved: Sequence[Job | Unresolvable] | None = None,
    ) -> list[Decision]:
        """Settle one batch; targets and parking must have answered by `act_by` (anyio clock).

        `act_by` is the lease's end less a margin for the delete (retryd.leases.act_by).
        `resolved`: the letters already resolved, in their order (a redrive resolves
        to select). One Decision per letter.
        """
        batch = Batch(letters)
        try:
            await self._act(batch, act_by, resolved)
        except Exception as exc:  # one batch's bug must not stop the queue
            # Nothing undecided has been deleted: it stays in the DLQ.
            log.exception("batch-failed", queue=queue.name, messages=len(letters))
            batch.fail_rest(
                FailReason.INTERNAL_ERROR, f"{type(exc).__name__} while settling the batch"
            )
        finally:
            # A letter whose copy is safe is deleted even when a later step broke or
            # the batch is being cancelled: otherwise it would be sent twice.
            with anyio.move_on_after(DELETE_SHIELD_S, shield=True):
                await self._dlqs.delete(queue, batch.deletable)
                await self._settled(queue, batch)
            self._record(list(batch.decided.values()))
            if len(batch.decided) < len(letters):
                log.warning(
                    "batch-cancelled",
                    queue=queue.name,
                    left_in_dlq=len(letters) - len(batch.decided),
                )
        return [batch.decided[letter.message_id] for letter in letters]

    # -- the steps a variant (a redrive job) may override ------------------------------

    async def _assess(self, resolved: Sequence[Job | Unresolvable]) -> list[Verdict]:
        """Admission's verdicts (the daemon's: every guard, backoff and age included)."""
        return await self._guards.assess(resolved)

    async def _refuse(self, parks: Sequence[Park]) -> list[Decision]:
        """What becomes of the messages a guard would park: the daemon parks them."""
        results = await self._park(parks)
        return [outcome.parked(park, error) for park, error in zip(parks, results, strict=True)]

    def _delivered(self, delivery: Delivery) -> Decision | Park:
        """A target's answer: its Decision, or the Park a permanent refusal calls for."""
        return outcome.after_delivery(delivery)

    async def _hide(self, defers: Sequence[Defer]) -> None:
        """Deferred messages: hidden in their DLQ until due (a variant may hand them back)."""
        await self._dlqs.hide(defers)

    async def _settled(self, queue: QueueRef, batch: Batch) -> None:
        """After the delete, shielded: the daemon leaves the rest to reappear with their lease."""

    def _record(self, decisions: Sequence[Decision]) -> None:
        """Count and log the batch's decisions (retryd_messages_total, one line each)."""
        kinds: Counter[tuple[QueueRef, str, str, str]] = Counter()
        for decision in decisions:
            kinds[_metric_labels(decision)] += 1
            self._log(decision)
        # One update per kind of decision, not per message.
        for (queue_ref, outcome_value, reason, target_type), count in kinds.items():
            self._metrics.record_decision(queue_ref, outcome_value, reason, target_type, count)

    # -- the skeleton -----------------------------------------------------------------------

    async def _act(
        self, batch: Batch, act_by: float, given: Sequence[Job | Unresolvable] | None
    ) -> None:
        resolved = []
        items = given if given is not None else await self._chain.resolve_all(batch.letters)
        for item in items:
            if isinstance(item, Unresolvable) and item.retry_later:
                batch.decide(outcome.not_yet_resolvable(item))
            else:
                resolved.append(item)
        batch.source_attempts = {
            job.letter.message_id: job.source_attempts
            for job in resolved
            if isinstance(job, Job) and job.source_attempts
        }
        verdicts = await self._assess(resolved)
        for verdict in verdicts:
            if isinstance(verdict, Hold):
                batch.decide(outcome.held(verdict))
            elif isinstance(verdict, Done):
                batch.decide(outcome.done(verdict), delete=True)
        after = await self._first_pass(batch, verdicts, act_by)
        if after is None:
            batch.fail_rest(
                FailReason.LEASE_EXPIRED, "the batch was not settled before its lease ran out"
            )
            return
        rejected, deferred = after
        with anyio.move_on_after(max(0.0, act_by - anyio.current_time())) as lease:
            await self._hide(deferred)
            if rejected:
                self._decide_all(batch, await self._park_rejected(rejected))
        if lease.cancelled_caught:
            batch.fail_rest(
                FailReason.LEASE_EXPIRED, "the copy was not parked before its lease ran out"
            )

    async def _first_pass(
        self, batch: Batch, verdicts: Sequence[Verdict], act_by: float
    ) -> tuple[list[Park], list[Defer]] | None:
        """Send, park and defer side by side within the lease; None when the lease ran out.

        What is left for afterwards: copies a target refused for good (to park) and
        messages the sender deferred (to hide).
        """
        gos = [verdict for verdict in verdicts if isinstance(verdict, Go)]
        parks = [verdict for verdict in verdicts if isinstance(verdict, Park)]
        defers = [verdict for verdict in verdicts if isinstance(verdict, Defer)]
        rejected: list[Park] = []
        deferred: list[Defer] = []

        def on_group(sent: Sent) -> None:
            # Decided the moment a target's answers are in: whatever cancels the rest
            # of the batch later (its lease, a stop), what a target took is deleted.
            rejected.extend(self._decide_sent(batch, sent))
            deferred.extend(sent.deferred)

        async def submit() -> None:
            await self._sender.send(gos, act_by, on_group)

        async def park_refused() -> None:
            # Settled as soon as written, for the same reason.
            self._decide_all(batch, await self._refuse(parks))

        async def defer() -> None:
            self._decide_deferred(batch, defers)
            await self._hide(defers)

        with anyio.move_on_after(max(0.0, act_by - anyio.current_time())) as lease:
            # None of these depends on another: run them side by side.
            async with anyio.create_task_group() as group:
                if gos:
                    group.start_soon(submit)
                if parks:
                    group.start_soon(park_refused)
                if defers:
                    group.start_soon(defer)
        return None if lease.cancelled_caught else (rejected, deferred)

    def _decide_sent(self, batch: Batch, sent: Sent) -> list[Park]:
        """Decide one target group's results; the permanent refusals come back to be parked."""
        for hold in sent.held:
            batch.decide(outcome.held(hold))
        for job in sent.already_done:
            batch.decide(outcome.already_resubmitted(job), delete=True)
        self._decide_deferred(batch, sent.deferred)
        rejected: list[Park] = []
        for delivery in sent.deliveries:
            self._note_delivery(delivery)
            decided = self._delivered(delivery)
            if isinstance(decided, Park):
                rejected.append(decided)
            else:
                batch.decide(decided, delete=decided.deletes)
        return rejected

    @staticmethod
    def _decide_all(batch: Batch, decisions: Sequence[Decision]) -> None:
        for decision in decisions:
            batch.decide(decision, delete=decision.deletes)

    @staticmethod
    def _decide_deferred(batch: Batch, defers: Sequence[Defer]) -> None:
        # Decided before hiding: if hiding fails the message is still deferred, only back sooner.
        for defer in defers:
            batch.decide(outcome.deferred(defer))

    async def _park(self, parks: Sequence[Park]) -> list[SendError | None]:
        return await self._parking.park(
            [
                ParkRequest(
                    p.letter, p.reason, p.detail, p.attempt, p.job.source_attempts if p.job else 0
                )
                for p in parks
            ]
        )

    async def _park_rejected(self, parks: Sequence[Park]) -> list[Decision]:
        """Park the copies a target refused for good (parked, or failed parking-failed)."""
        results = await self._park(parks)
        return [outcome.parked(park, error) for park, error in zip(parks, results, strict=True)]

    def _note_delivery(self, delivery: Delivery) -> None:
        """The metrics of one target answer: stamps dropped, an error against the target."""
        job = delivery.job
        if delivery.stamps_dropped:
            self._metrics.record_stamps_dropped(job.letter.queue, delivery.stamps_dropped)
            log.info(
                "stamps-dropped",
                queue=job.letter.queue.name,
                message_id=job.letter.message_id,
                dropped=delivery.stamps_dropped,
                why="the original message leaves no room for retryd's attributes",
            )
        error = delivery.error
        if error is not None:
            self._metrics.record_resubmit_error(
                job.target.type, job.target.arn, error.error_class, error.code
            )

    def _log(self, decision: Decision) -> None:
        fields: dict[str, Any] = {
            "queue": decision.letter.queue.name,
            "message_id": decision.letter.message_id,
            "target": decision.target.arn if decision.target else None,
            "outcome": decision.outcome.value,
            "reason": decision.reason or None,
            "detail": decision.detail[:LOG_DETAIL_MAX_CHARS] or None,
            "attempt": decision.attempt,
            # Tries the source made before the DLQ: not counted against guards.max_attempts.
            "source_attempts": decision.source_attempts or None,
        }
        if self._log_payloads:
            fields["body"] = decision.letter.body
        if decision.outcome is Outcome.RESUBMITTED:
            log.info(decision.outcome.value, **fields)
        else:
            log.warning(decision.outcome.value, **fields)
