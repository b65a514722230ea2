"""Guards: whether a resolved job may be sent now, in DESIGN.md's order.

Stateless checks (allowlist, attempts) live here today; backoff, the per-target
circuit breaker and the rate limiter join them, in that order, as their own
modules in this package.
"""

from __future__ import annotations

from collections.abc import Iterable

from retryd.guards.allowlist import Allowlist
from retryd.guards.attempts import attempts_exhausted
from retryd.models import Job, ParkReason, Unresolvable
from retryd.settings import GuardSettings

__all__ = ["Allowlist", "Guards", "attempts_exhausted"]


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

    def check(self, job: Job) -> Unresolvable | None:
        """An Unresolvable (park it, and why) when a guard refuses the job; None to go on."""
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
