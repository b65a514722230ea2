"""One received batch from one DLQ: resolve -> admit -> act -> settle. It only orchestrates.

Resolution is resolve/'s, admission admission/'s, sending targets/'s, and the
settling itself settle/'s (the parking queue, and the DLQ's delete and hide).

The rule this module exists to keep: a message is deleted from its DLQ only after
its copy is safe (accepted by the target, or written to the parking queue).
Every other path leaves it where it is, to reappear after its lease.

A batch has to be settled while its lease (the visibility timeout) still holds:
once the lease runs out another worker may receive the same message under a new
receipt handle, and SQS then treats a delete with the old handle as a no-op. So
acting on a batch is bounded by the lease, which the batch's heartbeat
(retryd.heartbeat) extends while work is in flight, up to drain.max_lease_s; the
ledger writes after an answer or a parked copy, and the final delete, are
shielded from cancellation while the lease holds (briefly once the batch is being
cancelled, so that a second SIGTERM still means "now").

Parking goes through the ledger like a resubmission: the key is claimed before
the copy is written and the copy recorded after, so a message parked once and
seen again (its delete lost, its process killed) is only deleted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from retryd import leases
from retryd.admission.claims import park_claim
from retryd.admission.guards import Guards
from retryd.admission.verdicts import Defer, Done, Go, Hold, Park, Verdict
from retryd.control.deferrals import HiddenBook
from retryd.heartbeat import Heartbeat, Leasing, brief_shield
from retryd.ledger.base import Claim
from retryd.metrics import Metrics
from retryd.models import (
    DeadLetter,
    Decision,
    FailReason,
    Job,
    Outcome,
    QueueRef,
    Unresolvable,
)
from retryd.resolve import ResolverChain
from retryd.settle import outcome
from retryd.settle.dlq import DeadLetterQueues
from retryd.settle.objects import Objects
from retryd.settle.parking import Parking, ParkRequest
from retryd.targets import Delivery
from retryd.targets.sender import Sender, Sent

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = structlog.get_logger("retryd.pipeline")

# How long a started delete may hold off cancellation (a stop, a second signal).
DELETE_SHIELD_S = 10.0
# How long the ledger record of parked copies may hold off cancellation, likewise.
PARK_RECORD_SHIELD_S = 10.0
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
    # What keeps it leased while it works, and what it holds in the ledger meanwhile.
    heartbeat: Heartbeat | None = None
    gos: list[Go] = field(default_factory=list)
    parking: list[Park] = field(default_factory=list)
    deleted: bool = False

    def decide(self, decision: Decision, *, delete: bool = False) -> None:
        source = self.source_attempts.get(decision.letter.message_id, 0)
        if source and not decision.source_attempts:
            decision = replace(decision, source_attempts=source)
        self.decided[decision.letter.message_id] = decision
        if delete:
            self.deletable.append(decision.letter)

    def undecided(self) -> list[DeadLetter]:
        return [letter for letter in self.letters if letter.message_id not in self.decided]

    def held(self) -> list[DeadLetter]:
        """The letters whose fate is still being carried out: undecided, or not yet deleted.

        A message decided to stay (deferred and hidden, failed) is not among them: its
        lease is left as it is.
        """
        return self.undecided() + ([] if self.deleted else list(self.deletable))

    def claims(self) -> list[Claim]:
        """The ledger claims of work in flight: begun and not yet written, parks not recorded."""
        begun = [
            go.permit.claim
            for go in self.gos
            if go.permit.claim is not None and not go.permit.written
        ]
        return begun + [park_claim(park) for park in self.parking]

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
        leasing: Leasing | None = None,
        objects: Objects | None = None,
    ) -> None:
        # The hidden messages are noted where they are hidden, so a redrive can hand them back;
        # `objects` settles the letters of S3 sources.
        self._dlqs = DeadLetterQueues(sqs, metrics, hidden, objects)
        # None: no heartbeat (a batch ends at its first lease, as before heartbeats).
        self._leasing = leasing
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
        heartbeat = batch.heartbeat = self._heartbeat(queue, batch, act_by)
        async with anyio.create_task_group() as beats:
            if self._leasing is not None:
                beats.start_soon(heartbeat.run)
            try:
                await self._settle_batch(queue, batch, heartbeat, resolved)
            finally:
                beats.cancel_scope.cancel()
        return [batch.decided[letter.message_id] for letter in letters]

    def _heartbeat(self, queue: QueueRef, batch: Batch, act_by: float) -> Heartbeat:
        """The batch's heartbeat; without leasing it never beats and `act_by` stays put."""
        leasing = self._leasing or Leasing(0, 0, 0.0)
        margin_s = leases.lease_margin_s(leasing.lease_s)
        return Heartbeat(
            queue=queue,
            # act_by was taken before the receive, as the lease's end less the margin.
            received_at=act_by + margin_s - leasing.lease_s,
            lease_s=leasing.lease_s,
            cap_s=leasing.cap_s,
            claim_renew_s=leasing.claim_renew_s,
            margin_s=margin_s,
            extend=lambda letters, lease_s: self._dlqs.extend(queue, letters, lease_s),
            renew=self._guards.renew,
            held=batch.held,
            claims=batch.claims,
            metrics=self._metrics,
            beating=self._leasing is not None,
        )

    async def _settle_batch(
        self,
        queue: QueueRef,
        batch: Batch,
        heartbeat: Heartbeat,
        resolved: Sequence[Job | Unresolvable] | None,
    ) -> None:
        letters = batch.letters
        try:
            await self._act(batch, heartbeat, resolved)
        except Exception as exc:  # one batch's bug must not stop the queue
            # Nothing undecided has been deleted: it stays in the DLQ.
            log.exception("batch-failed", queue=queue.name, messages=len(letters))
            batch.fail_rest(
                FailReason.INTERNAL_ERROR, f"{type(exc).__name__} while settling the batch"
            )
        finally:
            # A letter whose copy is safe is deleted even when a later step broke or
            # the batch is being cancelled: otherwise it would be sent twice.
            with heartbeat.shielded(DELETE_SHIELD_S):
                await self._dlqs.delete(queue, batch.deletable)
                batch.deleted = True
                await self._settled(queue, batch)
            decided = list(batch.decided.values())
            # Counted here, whoever drives the pipeline (the daemon, a redrive job): no
            # variant can leave a decision out of retryd_messages_total.
            self._count(decided)
            self._record(decided)
            if heartbeat.extensions:
                log.info(
                    "batch-lease-extended",
                    queue=queue.name,
                    messages=len(letters),
                    extensions=heartbeat.extensions,
                    stopped=heartbeat.stopped,
                )
            if len(batch.decided) < len(letters):
                log.warning(
                    "batch-cancelled",
                    queue=queue.name,
                    left_in_dlq=len(letters) - len(batch.decided),
                )

    # -- the steps a variant (a redrive job) may override ------------------------------

    async def _assess(self, resolved: Sequence[Job | Unresolvable]) -> list[Verdict]:
        """Admission's verdicts (the daemon's: every guard, backoff and age included)."""
        return await self._guards.assess(resolved)

    async def _refuse(self, batch: Batch, parks: Sequence[Park]) -> None:
        """What becomes of the messages a guard would park: the daemon parks them."""
        await self._park(batch, parks)

    def _delivered(self, delivery: Delivery) -> Decision | Park:
        """A target's answer: its Decision, or the Park a permanent refusal calls for."""
        return outcome.after_delivery(delivery)

    async def _hide(self, defers: Sequence[Defer]) -> None:
        """Deferred messages: hidden in their DLQ until due (a variant may hand them back)."""
        await self._dlqs.hide(defers)

    async def _settled(self, queue: QueueRef, batch: Batch) -> None:
        """After the delete, shielded: the daemon leaves the rest to reappear with their lease."""

    def _record(self, decisions: Sequence[Decision]) -> None:
        """Log the batch's decisions, one line each (a variant words them its own way)."""
        for decision in decisions:
            self._log(decision)

    def _count(self, decisions: Sequence[Decision]) -> None:
        """Count the batch's decisions in retryd_messages_total: the base's, never a variant's."""
        kinds: Counter[tuple[QueueRef, str, str, str]] = Counter()
        for decision in decisions:
            kinds[_metric_labels(decision)] += 1
        # One update per kind of decision, not per message.
        for (queue_ref, outcome_value, reason, target_type), count in kinds.items():
            self._metrics.record_decision(queue_ref, outcome_value, reason, target_type, count)

    # -- the skeleton -----------------------------------------------------------------------

    async def _act(
        self, batch: Batch, heartbeat: Heartbeat, given: Sequence[Job | Unresolvable] | None
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
        after = await self._first_pass(batch, verdicts, heartbeat)
        if after is None:
            batch.fail_rest(
                FailReason.LEASE_EXPIRED,
                "the batch was not settled before its lease ran out" + _why_not_kept(heartbeat),
            )
            return
        rejected, deferred = after
        with heartbeat.scope() as lease:
            await self._hide(deferred)
            if rejected:
                await self._park_rejected(batch, rejected)
        if lease.cancelled_caught:
            batch.fail_rest(
                FailReason.LEASE_EXPIRED,
                "the copy was not parked before its lease ran out" + _why_not_kept(heartbeat),
            )

    async def _first_pass(
        self, batch: Batch, verdicts: Sequence[Verdict], heartbeat: Heartbeat
    ) -> tuple[list[Park], list[Defer]] | None:
        """Send, park and defer side by side within the lease; None when the lease ran out.

        What is left for afterwards: copies a target refused for good (to park) and
        messages the sender deferred (to hide).
        """
        gos = batch.gos = [verdict for verdict in verdicts if isinstance(verdict, Go)]
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
            await self._sender.send(gos, heartbeat.act_by, on_group, shielded=heartbeat.shielded)

        async def park_refused() -> None:
            # Settled as soon as written, for the same reason.
            await self._refuse(batch, parks)

        async def defer() -> None:
            self._decide_deferred(batch, defers)
            await self._hide(defers)

        wanted = (submit, gos), (park_refused, parks), (defer, defers)
        steps = [step for step, verdicts_of_step in wanted if verdicts_of_step]
        with heartbeat.scope() as lease:
            if len(steps) == 1:
                # One step (a batch that only goes out, the usual one): run in this task,
                # as a task of its own (and its group) costs more CPU than the step.
                await steps[0]()
            else:
                # None of these depends on another: run them side by side.
                async with anyio.create_task_group() as group:
                    for step in steps:
                        group.start_soon(step)
        return None if lease.cancelled_caught else (rejected, deferred)

    def _decide_sent(self, batch: Batch, sent: Sent) -> list[Park]:
        """Decide one target group's results; the permanent refusals come back to be parked."""
        for hold in sent.held:
            batch.decide(outcome.held(hold))
        for job in sent.already_done:
            batch.decide(outcome.already_resubmitted(job), delete=True)
        for done in sent.already_parked:
            batch.decide(outcome.done(done), delete=True)
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

    async def _park(self, batch: Batch, parks: Sequence[Park]) -> None:
        """Park through the ledger, deciding each as soon as its answer is in.

        Claim each key (a message parked or resubmitted already is only deleted, one
        claimed elsewhere left for later), write the copies, then record them with
        their parking message ids, or hand back the claims of copies not written.
        """
        if not parks:
            return
        parkable = await self._guards.begin_parks(parks)
        for park, reason, detail in parkable.held:
            batch.decide(outcome.park_held(park, reason, detail))
        for park in parkable.busy:
            batch.decide(outcome.park_claimed_elsewhere(park))
        for park, attempt, was_parked in parkable.done:
            batch.decide(outcome.settled_park(park, attempt, parked=was_parked), delete=True)
        if not parkable.park:
            return
        batch.parking.extend(parkable.park)
        copies = await self._parking.park_copies([_request(p) for p in parkable.park])
        written: list[tuple[Park, str]] = []
        failed: list[Park] = []
        for park, copy in zip(parkable.park, copies, strict=True):
            if isinstance(copy, str):
                batch.decide(outcome.parked(park, None), delete=True)
                written.append((park, copy))
            else:
                batch.decide(outcome.parked(park, copy))
                failed.append(park)
        # The copies are safe: recording them must not be cut short, or a message whose
        # delete is then lost would be parked again.
        shield = (
            batch.heartbeat.shielded(PARK_RECORD_SHIELD_S)
            if batch.heartbeat is not None
            else brief_shield(PARK_RECORD_SHIELD_S)
        )
        with shield:
            await self._guards.commit_parks(written)
            await self._guards.release_parks(failed)
        batch.parking = [park for park in batch.parking if park not in parkable.park]

    async def _park_rejected(self, batch: Batch, parks: Sequence[Park]) -> None:
        """Park the copies a target refused for good (parked, or failed parking-failed)."""
        await self._park(batch, parks)

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


def _request(park: Park) -> ParkRequest:
    source_attempts = park.job.source_attempts if park.job else 0
    return ParkRequest(park.letter, park.reason, park.detail, park.attempt, source_attempts)


def _why_not_kept(heartbeat: Heartbeat) -> str:
    """Why the lease was not kept longer, for a lease-expired detail."""
    if heartbeat.stopped == "lease-cap-reached":
        return f" (extended {heartbeat.extensions} times, up to drain.max_lease_s)"
    if heartbeat.stopped is not None:
        return f" (its heartbeat failed: {heartbeat.stopped})"
    return ""
