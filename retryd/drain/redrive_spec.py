"""What a redrive job was asked to do, and what its plan found: stored with the job, shown by it.

The spec (`Spec`) is written into the job's record, so `--resume` needs nothing
else; `PlanCounts` is what `Redrive.plan()` found, grouped by (target, outcome,
reason) in the same Outcome vocabulary the job's results use.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from retryd.arns import Arn, queue_name
from retryd.drain.redrive_select import Selector
from retryd.errors import ExitCode, RetrydError
from retryd.models import DeadLetter, Job, Outcome, QueueRef, Unresolvable
from retryd.s3_objects import S3_URL_SCHEME

PARKING_SOURCE = "parking"
DEFAULT_RAMP = (1, 5, 25, 100)
BATCH_AFTER_RAMP = 100
# Messages read per source queue when planning, and per step when executing.
DEFAULT_MAX_MESSAGES = 1000
# What a redrive plan calls the outcome the execution will report (`redrive` without
# --execute prints these words).
PLAN_ACTION = {
    Outcome.RESUBMITTED: "resubmit",
    Outcome.PARKED: "park",
    Outcome.DEFERRED: "defer",
    Outcome.REFUSED: "refuse",
    Outcome.FAILED: "fail",
}
# Outcomes a resumed job does not try again: done (resubmitted, parked), or refused
# by a guard that would refuse it again. A deferral or a failure is tried again.
FINAL = frozenset({Outcome.RESUBMITTED, Outcome.PARKED, Outcome.REFUSED})


class RedriveInputError(RetrydError):
    """A redrive that cannot start as asked (an unknown queue, a refused --to): exit 2."""

    exit_code = ExitCode.CONFIG


class SourceNotDrainedError(RedriveInputError):
    """`--from` names a queue that is not a DLQ retryd drains: exit 1, as plan, once and
    inspect do for a queue they cannot find."""

    exit_code = ExitCode.CYCLE_FAILED


@dataclass(frozen=True, slots=True)
class Spec:
    """What a redrive job was asked to do; stored with the job, so `--resume` needs nothing."""

    sources: tuple[str, ...]
    selector: Selector = field(default_factory=Selector)
    to: str | None = None
    # A transform for this job alone (`--transform`): it takes the place of the
    # [[hooks]] rules for every message the job selects.
    transform: str | None = None
    ramp: tuple[int, ...] = DEFAULT_RAMP
    canary_wait_s: float = 30.0
    max_refail: int = 0
    max_messages: int = DEFAULT_MAX_MESSAGES

    @property
    def kind(self) -> str:
        return PARKING_SOURCE if self.sources == (PARKING_SOURCE,) else "dlq"

    def to_json(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources),
            "selector": self.selector.to_json(),
            "to": self.to,
            "transform": self.transform,
            "ramp": list(self.ramp),
            "canary_wait_s": self.canary_wait_s,
            "max_refail": self.max_refail,
            "max_messages": self.max_messages,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Spec:
        return cls(
            sources=tuple(raw["sources"]),
            selector=Selector.from_json(raw.get("selector", {})),
            to=raw.get("to"),
            transform=raw.get("transform"),
            ramp=tuple(int(n) for n in raw.get("ramp", DEFAULT_RAMP)),
            canary_wait_s=float(raw.get("canary_wait_s", 30.0)),
            max_refail=int(raw.get("max_refail", 0)),
            max_messages=int(raw.get("max_messages", DEFAULT_MAX_MESSAGES)),
        )

    def step_size(self, step: int) -> int:
        return self.ramp[step] if step < len(self.ramp) else BATCH_AFTER_RAMP


@dataclass(frozen=True, slots=True)
class Picked:
    """A selected message: where it physically is, and how it is judged."""

    queue: QueueRef
    letter: DeadLetter
    resolved: Job | Unresolvable
    # When it must be settled by (anyio clock): its lease started at the receive that read it.
    act_by: float


@dataclass
class PlanCounts:
    """What a plan found: selected messages by (target, action, reason), and the rest."""

    groups: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    examined: int = 0
    unselected: int = 0
    # Messages SQS reports in flight in the sources: hidden (a deferral, a lease),
    # so a redrive cannot receive them now.
    hidden: int = 0
    truncated: bool = False
    errors: list[str] = field(default_factory=list)
    # Of those, the ones retryd itself deferred (noted with their receipt handles):
    # `--execute` hands them back first. When they would reappear by themselves.
    deferred: int = 0
    reappear_s: tuple[float, float] | None = None

    @property
    def selected(self) -> int:
        return sum(self.groups.values())


def outcome_of(action: str) -> Outcome:
    """The execution outcome a plan's action stands for."""
    return {word: outcome for outcome, word in PLAN_ACTION.items()}[action]


def source_name(source: str) -> str:
    """A source's name, whether given as a name, a URL or an ARN: a queue's, or an S3
    source's `bucket/prefix` (given as it is, as `s3://bucket/prefix` or as its ARN)."""
    if source.startswith(S3_URL_SCHEME):
        return source.removeprefix(S3_URL_SCHEME)
    if source.startswith("arn:"):
        try:
            return Arn.parse(source).resource
        except ValueError:
            return source
    return queue_name(source)
