"""Sending the jobs admission let through, and saying how each went.

Per target:
1. admission's last steps (`Guards.admit`): the ledger claim on each key, then the
   rate limit, which hands the jobs out a few at a time as the target's tokens come,
   each part sent at once; jobs turned away are deferred, held or only deleted;
2. the resubmitter, which passes the key on where the target can deduplicate;
3. each answer, the moment it is in (one job's, or one batch call's), is handed
   to the caller to decide, and then its permit is settled (succeeded, failed,
   released) and handed back to admission (`Guards.settle`), which tells the
   ledger. A slow call holds back its own job only.

The delete comes later, in the pipeline, and only for what is safe.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace

import anyio
import structlog

from retryd.admission.guards import Guards
from retryd.admission.verdicts import Defer, Done, Go, Hold
from retryd.heartbeat import brief_shield
from retryd.models import ErrorClass, FailReason, Job, Target
from retryd.targets import Delivery, TargetRouter

log = structlog.get_logger("retryd.sending")

# Reason of the RESUBMITTED outcome for a message whose resubmission the ledger
# had already committed (its delete was lost): it is only deleted now.
ALREADY_RESUBMITTED = "already-resubmitted"
# How long writing the ledger after a send may hold off a cancellation.
ACCOUNT_SHIELD_S = 10.0


@dataclass
class Sent:
    """What happened to a group of Go verdicts."""

    deliveries: list[Delivery] = field(default_factory=list)
    already_done: list[Job] = field(default_factory=list)
    # Parked already (the ledger recorded the copy since admission read it): only deleted.
    already_parked: list[Done] = field(default_factory=list)
    deferred: list[Defer] = field(default_factory=list)
    held: list[Hold] = field(default_factory=list)

    def extend(self, other: Sent) -> None:
        self.deliveries.extend(other.deliveries)
        self.already_done.extend(other.already_done)
        self.already_parked.extend(other.already_parked)
        self.deferred.extend(other.deferred)
        self.held.extend(other.held)


class Sender:
    """Sends Go verdicts, target by target, within a deadline."""

    def __init__(self, *, targets: TargetRouter, guards: Guards) -> None:
        self._targets = targets
        self._guards = guards

    async def send(
        self,
        gos: Sequence[Go],
        act_by: float,
        on_group: Callable[[Sent], None] | None = None,
        *,
        shielded: Callable[[float], anyio.CancelScope] = brief_shield,
    ) -> Sent:
        """Every Go ends up in exactly one of the result's lists.

        `on_group` hears each part of the result the moment it is known (the jobs
        admission turned away at the last moment, then each target answer), before
        the ledger is told: a caller that decides there keeps what a target accepted
        even if the rest of the batch is then cancelled (a lease running out, a stop).
        `shielded` makes the scope the ledger write after an answer runs in: the
        batch's heartbeat keeps it going while the batch is leased, so that an
        acceptance that arrives is always committed; by default it is brief.
        """
        groups: dict[Target, list[Go]] = defaultdict(list)
        for go in gos:
            groups[go.job.target].append(go)
        sent = Sent()

        def heard(result: Sent) -> None:
            sent.extend(result)
            if on_group is not None:
                on_group(result)

        if len(groups) == 1:
            # One target, a DLQ's usual batch: sent in this task, as a task of its own
            # (and its group) costs more CPU than the rest of the step.
            [(target, group)] = groups.items()
            await self._send_group(target, group, act_by, heard, shielded)
            return sent
        async with anyio.create_task_group() as tasks:
            for target, group in groups.items():
                tasks.start_soon(self._send_group, target, group, act_by, heard, shielded)
        return sent

    async def _send_group(
        self,
        target: Target,
        group: list[Go],
        act_by: float,
        heard: Callable[[Sent], None],
        shielded: Callable[[float], anyio.CancelScope],
    ) -> None:
        # Admitted and not answered yet, by DLQ message id.
        unanswered: dict[str, Go] = {}

        async def on_answer(deliveries: Sequence[Delivery]) -> None:
            answered = [
                (delivery, go)
                for delivery in deliveries
                if (go := unanswered.pop(delivery.job.letter.message_id, None)) is not None
            ]
            if not answered:
                return
            # Decided first, so that nothing after this (a lease running out, a stop)
            # can undo what the target took.
            heard(Sent(deliveries=[delivery for delivery, _ in answered]))
            for delivery, go in answered:
                _settle(go, delivery)
            # The copies are out: telling the ledger must not be cut short, or a
            # committed resubmission would look begun and be sent again.
            with shielded(ACCOUNT_SHIELD_S):
                await self._guards.settle(target, [go.permit for _, go in answered])

        try:
            # Each part is sent the moment admission hands it out (as the target's tokens
            # come), before the next is asked for: never tokens saved up and spent at once.
            async with aclosing(self._guards.admit(target, group, act_by)) as parts:
                async for admitted in parts:
                    heard(
                        Sent(
                            already_done=[
                                replace(d.job, attempt=d.attempt - 1)
                                for d in admitted.done
                                if not d.parked
                            ],
                            already_parked=[d for d in admitted.done if d.parked],
                            deferred=admitted.deferred,
                            held=admitted.held,
                        )
                    )
                    if admitted.go:
                        unanswered.update((go.job.letter.message_id, go) for go in admitted.go)
                        jobs = [go.job for go in admitted.go]
                        deliveries = await self._targets.submit(jobs, on_answer)
                        # A router that answers only at the end is heard here.
                        await on_answer(deliveries)
        except Exception:
            # A resubmitter turns whatever the wire returns into a Delivery, so this is
            # a bug in retryd. It stays with this target: its unanswered jobs fail and
            # hand their claims back (or every replica would defer them for claim_s),
            # and the batch's other targets go on.
            log.exception("target-group-failed", target=target.arn, unanswered=len(unanswered))
            failed = list(unanswered.values())
            unanswered.clear()
            detail = "retryd failed while sending to this target (a bug; see the traceback)"
            heard(Sent(held=[Hold(go.job, FailReason.INTERNAL_ERROR, detail) for go in failed]))
            for go in failed:
                go.permit.released()
            with anyio.move_on_after(ACCOUNT_SHIELD_S, shield=True):
                await self._guards.settle(target, [go.permit for go in failed])
        finally:
            # Whatever happens here (a cancelled group included), a permit no answer
            # settled goes back: a leaked half-open permit would wedge its breaker. The
            # ledger is not told, so a claim whose call was in flight stays begun and
            # this message is resumed as the same attempt.
            for go in group:
                go.permit.released()


def _settle(go: Go, delivery: Delivery) -> None:
    """Settle a Go's permit by its target's answer."""
    error = delivery.error
    if error is None:
        go.permit.succeeded()
    elif error.error_class is ErrorClass.TRANSIENT:
        go.permit.failed()
    else:
        # A permanent error is about this message (it is parked), not the target's
        # health: its permit goes back unjudged.
        go.permit.released()
