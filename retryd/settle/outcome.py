"""What happens to a message: the one owner that turns an answer into its `Decision`.

Admission answers with a verdict (Go, Park, Defer, Done, Hold), a target with a
Delivery, the parking queue with an error or None; each function here turns one
of those into the message's Decision, and nothing else in retryd builds one.
The cycle's pipeline, a redrive job (the same pipeline, with its overrides) and
`plan` ("what would be decided", `predict`) all decide through this module, so
the three cannot drift apart: the outcome, the reason, the target and the
attempt of a message are decided here and only here.

`Decision.deletes` says whether the message then leaves its queue: only when its
copy is safe (resubmitted, or parked).
"""

from __future__ import annotations

from dataclasses import replace

from retryd.admission.claims import BUSY_PARK_DETAIL
from retryd.admission.verdicts import Defer, DeferReason, Done, Go, Hold, Park, Verdict
from retryd.models import (
    DeadLetter,
    Decision,
    ErrorClass,
    FailReason,
    Job,
    Outcome,
    ParkReason,
    Refusal,
    SendError,
    Target,
    Unresolvable,
)
from retryd.targets import Delivery
from retryd.targets.sender import ALREADY_RESUBMITTED

# Reason of the PARKED outcome for a message whose parked copy the ledger recorded
# (its delete was lost, or its process died before it): it is only deleted now.
ALREADY_PARKED = "already-parked"
ALREADY_PARKED_DETAIL = "the ledger shows this message was parked already; only deleted now"

__all__ = [
    "ALREADY_PARKED",
    "ALREADY_RESUBMITTED",
    "after_delivery",
    "already_parked",
    "already_resubmitted",
    "deferred",
    "done",
    "held",
    "kept_parked",
    "not_yet_resolvable",
    "park_claimed_elsewhere",
    "park_held",
    "parked",
    "predict",
    "refused",
    "rejected",
    "resubmitted",
    "settled_park",
]

ALREADY_RESUBMITTED_DETAIL = (
    "the ledger shows this message was resubmitted already; only deleted now"
)


def resubmitted(job: Job) -> Decision:
    """The target took the copy: this was attempt `job.next_attempt`."""
    return Decision(job.letter, Outcome.RESUBMITTED, job.target, "", "", job.next_attempt)


def already_resubmitted(job: Job) -> Decision:
    """The ledger committed this copy before (its delete was lost): only delete it now.

    `job.attempt` is the attempt before the committed one (as the sender hands it back).
    """
    return Decision(
        job.letter,
        Outcome.RESUBMITTED,
        job.target,
        ALREADY_RESUBMITTED,
        ALREADY_RESUBMITTED_DETAIL,
        job.next_attempt,
    )


def already_parked(letter: DeadLetter, target: Target | None, attempt: int) -> Decision:
    """The ledger recorded this message's parked copy before: only delete it now."""
    return Decision(letter, Outcome.PARKED, target, ALREADY_PARKED, ALREADY_PARKED_DETAIL, attempt)


def done(verdict: Done) -> Decision:
    """Admission found the ledger's record: `verdict.attempt` is the attempt recorded."""
    if verdict.parked:
        return already_parked(verdict.job.letter, verdict.job.target, verdict.attempt)
    return already_resubmitted(replace(verdict.job, attempt=verdict.attempt - 1))


def settled_park(park: Park, attempt: int, *, parked: bool) -> Decision:
    """The ledger shows a message about to be parked as parked, or resubmitted, already."""
    target = park.job.target if park.job else None
    if parked:
        return already_parked(park.letter, target, attempt)
    return Decision(
        park.letter,
        Outcome.RESUBMITTED,
        target,
        ALREADY_RESUBMITTED,
        ALREADY_RESUBMITTED_DETAIL,
        attempt,
    )


def park_claimed_elsewhere(park: Park) -> Decision:
    """Another live claim holds the key of a message about to be parked: left for later."""
    target = park.job.target if park.job else None
    return Decision(
        park.letter,
        Outcome.DEFERRED,
        target,
        DeferReason.CLAIMED_ELSEWHERE.value,
        BUSY_PARK_DETAIL,
        park.attempt,
    )


def park_held(park: Park, reason: FailReason, detail: str) -> Decision:
    """The ledger could not take the park's claim: left in its queue untouched."""
    target = park.job.target if park.job else None
    return Decision(park.letter, Outcome.FAILED, target, reason, detail, park.attempt)


def held(hold: Hold) -> Decision:
    """Left in its queue untouched: it reappears when its lease ends."""
    job = hold.job
    return Decision(job.letter, Outcome.FAILED, job.target, hold.reason, hold.detail, job.attempt)


def judged_again(decision: Decision) -> bool:
    """Whether a message so decided, coming back to its DLQ's drain in the same cycle, is
    judged again (rather than taken for one already handled).

    Deferred, it is hidden until due (its backoff, its target's token or breaker) or until
    its lease ends (another replica's claim): judged again then. Paused, no: the pauses are
    read once a cycle, so it could only be paused again. Failed or refused, no: that would
    hammer what just failed.
    """
    return decision.outcome is Outcome.DEFERRED and decision.reason != DeferReason.PAUSED


def deferred(defer: Defer) -> Decision:
    """Left in its queue for later (hidden until due, or handed back): no attempt spent."""
    job = defer.job
    return Decision(
        job.letter, Outcome.DEFERRED, job.target, defer.reason.value, defer.detail, defer.attempt
    )


def not_yet_resolvable(item: Unresolvable) -> Decision:
    """Unresolvable only for now (a look-up failed): left in its queue, to be looked at again."""
    return Decision(item.letter, Outcome.FAILED, None, FailReason.TRANSIENT_ERROR, item.detail)


def parked(park: Park, error: SendError | None) -> Decision:
    """The parking queue's answer to `park`: parked (deleted next), or failed and left."""
    target = park.job.target if park.job else None
    if error is None:
        return Decision(park.letter, Outcome.PARKED, target, park.reason, park.detail, park.attempt)
    detail = f"could not park ({park.reason}: {park.detail}): {error}"
    return Decision(
        park.letter, Outcome.FAILED, target, FailReason.PARKING_FAILED, detail, park.attempt
    )


def refused(park: Park) -> Decision:
    """An operator path's answer to a guard's park verdict: handed back, never parked."""
    target = park.job.target if park.job else None
    return Decision(
        park.letter, Outcome.REFUSED, target, park.reason.value, park.detail, park.attempt
    )


# retryd's own refusals that have a park reason of their own; any other permanent
# answer is the target's rejection.
_REFUSAL_PARKS: dict[Refusal | None, ParkReason] = {
    Refusal.PAYLOAD_TOO_LARGE: ParkReason.PAYLOAD_TOO_LARGE,
    Refusal.NOT_REDRIVABLE: ParkReason.NOT_REDRIVABLE,
    Refusal.SOURCE_EXPIRED: ParkReason.SOURCE_EXPIRED,
}


def rejected(delivery: Delivery) -> Park | None:
    """A target's permanent refusal, as the Park it calls for; None when it was not one."""
    error = delivery.error
    if error is None or error.error_class is not ErrorClass.PERMANENT:
        return None
    job = delivery.job
    reason = _REFUSAL_PARKS.get(error.refusal, ParkReason.TARGET_REJECTED)
    return Park(job.letter, reason, str(error), job.attempt, job)


def after_delivery(delivery: Delivery) -> Decision | Park:
    """A target's answer: resubmitted, failed for now (transient), or a Park (permanent)."""
    job = delivery.job
    error = delivery.error
    if error is None:
        return resubmitted(job)
    park = rejected(delivery)
    if park is not None:
        return park
    # Left in its queue: it reappears after its lease. The code goes in the detail,
    # not the reason, so the reason stays a bounded metric label.
    return Decision(
        job.letter, Outcome.FAILED, job.target, FailReason.TRANSIENT_ERROR, str(error), job.attempt
    )


def kept_parked(park: Park) -> Decision:
    """A parked copy its target refused again: it stays parked as it was (failed, not re-parked)."""
    target = park.job.target if park.job else None
    return Decision(
        park.letter, Outcome.FAILED, target, park.reason.value, park.detail, park.attempt
    )


def predict(verdict: Verdict, *, operator: bool = False) -> Decision:
    """What would be decided for `verdict` if the target and the parking queue said yes.

    A plan's row: no side effect. `operator` (a redrive's plan): a guard's park
    verdict is refused, as the job will refuse it.
    """
    if isinstance(verdict, Go):
        job = verdict.job
        return Decision(job.letter, Outcome.RESUBMITTED, job.target, "", "", verdict.attempt)
    if isinstance(verdict, Park):
        return refused(verdict) if operator else parked(verdict, None)
    if isinstance(verdict, Done):
        return done(verdict)
    if isinstance(verdict, Defer):
        return deferred(verdict)
    return held(verdict)
