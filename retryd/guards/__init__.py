"""Guards: whether a resolved job may be sent now, in DESIGN.md's order.

`Guards.assess` turns each resolved (or unresolvable) dead letter into a
Verdict: go now, park (and why), or defer (hide it for a while, and why). The
pipeline acts on verdicts; `retryd plan` only prints them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from retryd.guards.allowlist import Allowlist
from retryd.guards.attempts import attempts_exhausted
from retryd.models import DeadLetter, Job, ParkReason, Unresolvable
from retryd.settings import GuardSettings

__all__ = [
    "Allowlist",
    "Defer",
    "DeferReason",
    "Go",
    "Guards",
    "Park",
    "Verdict",
    "attempts_exhausted",
]


class DeferReason(StrEnum):
    """Why a message is left in its DLQ for now; a bounded set, used as a metric label."""

    BACKOFF = "backoff"
    BREAKER_OPEN = "breaker-open"
    RATE_LIMITED = "rate-limited"
    # Another replica has begun resubmitting the same key and has not finished.
    CLAIMED_ELSEWHERE = "claimed-elsewhere"


@dataclass(frozen=True, slots=True)
class Go:
    """Resubmit now, as attempt number `attempt` (1 is the first resubmission)."""

    job: Job
    attempt: int


@dataclass(frozen=True, slots=True)
class Park:
    """Copy to the parking queue with a reason, then delete."""

    letter: DeadLetter
    reason: ParkReason
    detail: str
    attempt: int
    job: Job | None = None


@dataclass(frozen=True, slots=True)
class Defer:
    """Leave it in its DLQ, hidden for `delay_s`; no attempt is consumed."""

    job: Job
    reason: DeferReason
    delay_s: float
    detail: str
    attempt: int


Verdict = Go | Park | Defer


class Guards:
    """Applies the guards in order; the first that refuses decides the reason."""

    def __init__(self, settings: GuardSettings) -> None:
        self._allowlist = Allowlist(settings.allow_targets, settings.allow_any_target)
        self._max_attempts = settings.max_attempts
        self._protected: frozenset[str] = frozenset()

    def protect_queues(self, arns: Iterable[str]) -> None:
        """Queues retryd drains or parks into: never a target, whatever the allowlist says.

        Resubmitting into a DLQ retryd drains would bring the message straight back
        every cycle, and into the parking queue would hide it from people.
        """
        self._protected = frozenset(arns)

    def allows(self, arn: str) -> bool:
        """Whether the allowlist lets retryd call `arn` (protected queues aside)."""
        return self._allowlist.allows(arn)

    def check(self, job: Job) -> Unresolvable | None:
        """The stateless guards: an Unresolvable (park it, and why), or None to go on."""
        if job.target.arn in self._protected:
            return Unresolvable(
                job.letter,
                ParkReason.TARGET_NOT_ALLOWED,
                f"target {job.target.arn} is a queue retryd drains or parks into; "
                "resubmitting there would loop",
            )
        if not self._allowlist.allows(job.target.arn):
            return Unresolvable(
                job.letter,
                ParkReason.TARGET_NOT_ALLOWED,
                f"target {job.target.arn} matches no allow_targets pattern",
            )
        exhausted = attempts_exhausted(job, self._max_attempts)
        if exhausted is not None:
            return Unresolvable(job.letter, ParkReason.ATTEMPTS_EXHAUSTED, exhausted)
        return None

    async def assess(
        self, resolved: Sequence[Job | Unresolvable], *, dry_run: bool = False
    ) -> list[Verdict]:
        """One Verdict per resolved letter, in order.

        With `dry_run` nothing is changed anywhere (no tokens taken, no breaker
        canary slot used, no ledger write): `retryd plan` uses it.
        """
        del dry_run  # the stateful guards (ledger, backoff, breaker, rate) read it
        verdicts: list[Verdict] = []
        for item in resolved:
            if isinstance(item, Unresolvable):
                verdicts.append(Park(item.letter, item.reason, item.detail, 0))
                continue
            refused = self.check(item)
            if refused is not None:
                verdicts.append(
                    Park(item.letter, refused.reason, refused.detail, item.attempt, item)
                )
                continue
            verdicts.append(Go(item, item.next_attempt))
        return verdicts
