"""The pause guard: a message whose target an operator paused waits, spending nothing.

It is hidden until the pause can end: a pause with an end time hides it until
then, an open-ended one for `recheck_s` (one schedule interval), so a
`retryd resume` is noticed within about a cycle. Like every deferral it is
capped so that the message is still seen before its DLQ's retention drops it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from retryd.admission.verdicts import Defer, DeferReason
from retryd.arns import glob_matches, parse_glob
from retryd.models import Job

# `retryd pause --all`: every target.
ALL_TARGETS = "*"


@dataclass(frozen=True, slots=True)
class Pause:
    """One operator pause on the targets matching `pattern` (an ARN glob, or `*`)."""

    id: str
    pattern: str
    reason: str
    by: str
    created_at_s: float
    # Unix seconds it ends by itself; None: until `retryd resume`.
    until_s: float | None = None

    def active(self, now_s: float) -> bool:
        return self.until_s is None or self.until_s > now_s

    def covers(self, target_arn: str) -> bool:
        return self.pattern == ALL_TARGETS or glob_matches(target_arn, self.pattern)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Pause:
        until = raw.get("until_s")
        return cls(
            id=str(raw["id"]),
            pattern=str(raw["pattern"]),
            reason=str(raw.get("reason", "")),
            by=str(raw.get("by", "")),
            created_at_s=float(raw.get("created_at_s", 0.0)),
            until_s=float(until) if until is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_pattern(pattern: str) -> str:
    """The pattern, or ValueError naming what is wrong with it."""
    if pattern != ALL_TARGETS:
        parse_glob(pattern)
    return pattern


@dataclass(frozen=True, slots=True)
class PauseSet:
    """The pauses in force, as one cycle saw them."""

    pauses: tuple[Pause, ...] = ()

    def covering(self, target_arn: str, now_s: float) -> Pause | None:
        """The pause holding `target_arn` now that ends last (open-ended ones first)."""
        found = [p for p in self.pauses if p.active(now_s) and p.covers(target_arn)]
        if not found:
            return None
        return max(found, key=lambda p: float("inf") if p.until_s is None else p.until_s)

    def active(self, now_s: float) -> list[Pause]:
        return [p for p in self.pauses if p.active(now_s)]


def paused(
    job: Job, pauses: PauseSet, now_s: float, *, recheck_s: float, rescuable_s: float
) -> Defer | None:
    """A `paused` Defer when a pause holds the job's target now; None otherwise."""
    pause = pauses.covering(job.target.arn, now_s)
    if pause is None:
        return None
    wait_s = recheck_s if pause.until_s is None else max(0.0, pause.until_s - now_s)
    wait_s = min(wait_s, rescuable_s)
    detail = f"target paused ({pause.pattern}, {pause.id}): {pause.reason}"
    return Defer(job, DeferReason.PAUSED, wait_s, detail, job.attempt)
