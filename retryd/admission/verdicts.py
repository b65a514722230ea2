"""What admission answers for each resolved message: go, park, defer, done or hold."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from retryd.admission.permit import Permit
from retryd.models import DeadLetter, FailReason, Job, ParkReason


class DeferReason(StrEnum):
    """Why a message is left in its DLQ for now; a bounded set, used as a metric label."""

    BACKOFF = "backoff"
    BREAKER_OPEN = "breaker-open"
    # Its target's rate limit gave no token within the time the lease allows for waiting.
    RATE_LIMITED = "rate-limited"
    # Another replica has begun resubmitting the same key and has not finished.
    CLAIMED_ELSEWHERE = "claimed-elsewhere"
    # An operator paused the target (`retryd pause`).
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class Go:
    """Resubmit now, as attempt number `attempt` (1 is the first resubmission).

    Its `permit` holds one permit of its target's breaker; whoever sends the job
    settles it (succeeded, failed or released), and nothing else touches the breaker.
    """

    job: Job
    attempt: int
    permit: Permit = field(default_factory=Permit, compare=False)


@dataclass(frozen=True, slots=True)
class Park:
    """Copy to the parking queue with a reason, then delete."""

    letter: DeadLetter
    reason: ParkReason
    detail: str
    attempt: int
    job: Job | None = None
    # For a letter that never became a job: the key the resolver chain gave it
    # (Unresolvable.key).
    letter_key: str = ""

    @property
    def key(self) -> str:
        """The ledger key its park is claimed and recorded under.

        Its job's key; for a letter that never became a job, the one the resolver
        chain gave it, or (none given) its DLQ and message id.
        """
        if self.job is not None:
            return self.job.key
        return self.letter_key or f"{self.letter.queue.arn}#{self.letter.message_id}"


@dataclass(frozen=True, slots=True)
class Defer:
    """Leave it in its DLQ, hidden for `delay_s`; no attempt is consumed."""

    job: Job
    reason: DeferReason
    delay_s: float
    detail: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Done:
    """Resubmitted or parked already (the ledger recorded it) but not deleted: only delete it now.

    Judging it again would be wrong twice over: its last allowed attempt would park a
    copy the target already has, and a backoff or an open breaker would hide it.
    """

    job: Job
    attempt: int
    # Its copy is in the parking queue (not at the target): reported as already parked.
    parked: bool = False


@dataclass(frozen=True, slots=True)
class Hold:
    """Leave it in its DLQ untouched (outcome `failed`): it reappears when its lease ends."""

    job: Job
    reason: FailReason
    detail: str


Verdict = Go | Park | Defer | Done | Hold
