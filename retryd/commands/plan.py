"""`retryd plan`: what `retryd once` would do with every message, with nothing changed.

Each DLQ is read the way a cycle reads it, but under a short lease; every
message is resolved by the same chain and judged by the same guards (in dry-run
mode: no tokens taken, no canary slot used, no ledger write), and then every
lease is handed back (visibility 0) so the messages are where they were,
visible at once. Nothing is resubmitted, parked or deleted.

The queues are found and read by the survey a cycle uses (retryd.discovery.survey),
shared with `retryd inspect`; the text is laid out by retryd.commands.render.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from retryd import classify
from retryd.admission.paused import Pause
from retryd.admission.verdicts import Defer, Go, Hold, Verdict
from retryd.aws import AwsClients
from retryd.cluster.view import ClusterView
from retryd.commands import progress, render
from retryd.control.pauses import describe as describe_pauses
from retryd.discovery.survey import (
    Depth,
    Look,
    ReadProgress,
    look_at_each,
    look_at_objects,
)
from retryd.drain.setup import PlaceBuilder, Purpose, open_dry_run
from retryd.errors import ExitCode
from retryd.models import (
    CYCLE_OUTCOMES,
    DeadLetter,
    Decision,
    FailedExecution,
    FailReason,
    Outcome,
    QueueRef,
    StreamBatch,
    Target,
    Unresolvable,
)
from retryd.places import PlaceError, Places, Visit, open_places
from retryd.settings import Settings
from retryd.settle import outcome
from retryd.targets.router import place_unavailable
from retryd.targets.sender import ALREADY_RESUBMITTED

JSON_FORMAT_VERSION = 1

log = structlog.get_logger("retryd.plan")


# -- What `once` would decide ------------------------------------------------------------


class Action(StrEnum):
    """What `once` would do with a message: the plan's word for a (predicted) Outcome."""

    RESUBMIT = "resubmit"
    PARK = "park"
    DEFER = "defer"
    # Left untouched to reappear after its lease (retryd cannot tell yet, e.g. no ledger).
    HOLD = "hold"
    # A redrive's plan: a guard would park it, and the job hands it back instead.
    REFUSE = "refuse"


# The plan's words for the outcomes (`--output json` keeps its `action` values).
ACTION_OF = {
    Outcome.RESUBMITTED: Action.RESUBMIT,
    Outcome.PARKED: Action.PARK,
    Outcome.DEFERRED: Action.DEFER,
    Outcome.FAILED: Action.HOLD,
    Outcome.REFUSED: Action.REFUSE,
}
# What a cycle can do (`plan` plans a cycle; `refuse` is a redrive's).
CYCLE_ACTIONS = tuple(ACTION_OF[outcome] for outcome in CYCLE_OUTCOMES)


@dataclass(frozen=True, slots=True)
class PlannedMessage:
    """One message and its verdict, in the terms the output uses."""

    message_id: str
    action: Action
    attempt: int
    resolver: str | None = None
    target: Target | None = None
    reason: str | None = None
    delay_s: float | None = None
    detail: str = ""
    # What the source tried before the DLQ (Job.source_attempts): shown, never counted.
    source_attempts: int = 0
    # What the job resumes in place (Job.origin): the execution a redrive resumes, the
    # stream batch replayed to the target function; None when the body is sent anew.
    resumes: FailedExecution | StreamBatch | None = None

    @classmethod
    def from_verdict(cls, verdict: Verdict) -> PlannedMessage:
        """The row for what a cycle would decide (settle.outcome.predict), with no side effect."""
        return cls.from_decision(outcome.predict(verdict), verdict)

    @classmethod
    def from_decision(cls, decision: Decision, verdict: Verdict | None = None) -> PlannedMessage:
        """A view of a (predicted) Decision: the words a plan shows for it."""
        job = verdict.job if verdict is not None else None
        return cls(
            decision.letter.message_id,
            ACTION_OF[decision.outcome],
            decision.attempt,
            (job.resolver or None) if job else None,
            decision.target,
            decision.reason or None,
            delay_s=verdict.delay_s if isinstance(verdict, Defer) else None,
            detail=decision.detail,
            source_attempts=job.source_attempts if job else 0,
            resumes=job.origin if job else None,
        )

    @classmethod
    def held_for_later(cls, item: Unresolvable) -> PlannedMessage:
        """Left in its DLQ as a transient failure, as a cycle leaves it."""
        return cls.from_decision(outcome.not_yet_resolvable(item))

    def decision(self) -> str:
        """The verdict in a few words, and the source's own tries when it reported any."""
        words = self._verdict_words()
        return f"{words} (source tried {self.source_attempts})" if self.source_attempts else words

    def _verdict_words(self) -> str:
        """The verdict alone: `resubmit as attempt 2`, `park too-old`, ..."""
        if self.action is Action.RESUBMIT and self.reason == ALREADY_RESUBMITTED:
            return f"delete (attempt {self.attempt} already resubmitted)"
        if self.action is Action.RESUBMIT:
            return f"resubmit as attempt {self.attempt}"
        if self.action is Action.PARK:
            return f"park {self.reason}"
        if self.action is Action.HOLD:
            return f"hold {self.reason}"
        if self.action is Action.REFUSE:
            return f"refuse {self.reason}"
        return f"defer {self.reason} for {self.delay_s or 0:.0f}s"

    def to_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "action": self.action.value,
            "reason": self.reason,
            "attempt": self.attempt,
            "source_attempts": self.source_attempts,
            "delay_s": self.delay_s,
            "resolver": self.resolver,
            "target": (
                {"type": self.target.type.value, "arn": self.target.arn} if self.target else None
            ),
            "detail": self.detail,
            "resumes": self._resumes_json(),
        }

    def _resumes_json(self) -> dict[str, Any] | None:
        if self.resumes is None:
            return None
        kind = "execution" if isinstance(self.resumes, FailedExecution) else self.resumes.kind
        return {"kind": kind, **self.resumes.to_json()}

    def shown_detail(self) -> str:
        """The detail a person reads: what goes wrong, else what is resumed in place."""
        if self.detail or self.resumes is None:
            return self.detail
        return self.resumes.describe()


@dataclass
class QueuePlan:
    """The plan for one DLQ."""

    queue: QueueRef
    depth: Depth | None = None
    messages: list[PlannedMessage] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Trouble that did not stop the queue being read (its depth unknown).
    warnings: list[str] = field(default_factory=list)
    truncated: bool = False

    @classmethod
    def from_look(cls, look: Look[list[PlannedMessage]]) -> QueuePlan:
        return cls(
            look.queue,
            depth=look.depth,
            messages=look.finding or [],
            errors=look.errors,
            warnings=look.warnings,
            truncated=look.truncated,
        )

    def counts(self) -> Counter[tuple[str, str]]:
        """Messages by (action, reason); reason is "" for a resubmission."""
        return Counter((m.action.value, m.reason or "") for m in self.messages)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.queue.name,
            "url": self.queue.url,
            "arn": self.queue.arn,
            "depth": self.depth.to_json() if self.depth else None,
            "examined": len(self.messages),
            "truncated": self.truncated,
            "errors": self.errors,
            "warnings": self.warnings,
            "messages": [message.to_json() for message in self.messages],
        }


@dataclass
class PlanReport:
    """Every DLQ's plan, in discovery order."""

    queues: list[QueuePlan]
    max_messages: int
    # The operator pauses the plan was judged under.
    pauses: list[Pause] = field(default_factory=list)
    # The replicas' cluster item the breakers were set from (DynamoDB ledger only).
    cluster: ClusterView | None = None

    @property
    def failed(self) -> list[QueuePlan]:
        return [plan for plan in self.queues if plan.errors]

    def summary(self) -> dict[str, Any]:
        actions: Counter[str] = Counter()
        groups = []
        for plan in self.queues:
            for (action, reason), count in sorted(plan.counts().items()):
                actions[action] += count
                groups.append(
                    {
                        "queue": plan.queue.name,
                        "action": action,
                        "reason": reason or None,
                        "count": count,
                    }
                )
        return {
            "queues": len(self.queues),
            "messages": sum(len(plan.messages) for plan in self.queues),
            "actions": {action.value: actions.get(action.value, 0) for action in CYCLE_ACTIONS},
            "groups": groups,
            "failed_queues": [plan.queue.name for plan in self.failed],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "version": JSON_FORMAT_VERSION,
            "max_messages": self.max_messages,
            "queues": [plan.to_json() for plan in self.queues],
            "pauses": [pause.to_json() for pause in self.pauses],
            "cluster": self.cluster.to_json() if self.cluster is not None else None,
            "summary": self.summary(),
        }


async def _hold_unsendable(
    places: Places, verdicts: Iterable[Verdict], planned: dict[str, PlannedMessage]
) -> None:
    """A message to resubmit whose target cannot be sent to from here (`sending_place`: a
    region retryd makes no clients in, a role that cannot be assumed) is held, with the
    error `once` would record for it. Asks STS at most (a role's credentials), once per
    target and DLQ; opens no clients: a plan sends nothing."""
    unsendable: dict[tuple[str, str], str | None] = {}
    for verdict in verdicts:
        if not isinstance(verdict, Go):
            continue
        job = verdict.job
        key = (job.target.arn, job.letter.queue.arn)
        if key not in unsendable:
            try:
                await places.ready(places.sending_place(*key))
                unsendable[key] = None
            except PlaceError as exc:
                unsendable[key] = str(place_unavailable(exc))
        error = unsendable[key]
        if error is not None:
            hold = Hold(job, FailReason.TRANSIENT_ERROR, error)
            planned[job.letter.message_id] = PlannedMessage.from_verdict(hold)


async def make_plan(
    settings: Settings,
    clients: AwsClients,
    *,
    max_messages: int,
    bars: ReadProgress,
    home: AwsClients | None = None,
    places: Places | None = None,
) -> PlanReport:
    """Read, resolve and assess every DLQ's messages; nothing changes but brief leases.

    `clients` are those of the place whose DLQs are planned; `home` (default: the
    same) those of the place keeping the ledger and the pauses; `places` (with
    [[accounts]]) where each target would be sent from, so that a message `once`
    could not send is held here too. Discovery errors and a missing parking queue
    propagate, as they stop a cycle.
    """
    # The ledger and pauses are the home place's; a dry run opens and writes nothing else.
    async with open_dry_run(settings, home or clients) as judged:
        guards = judged.guards
        place = await PlaceBuilder(settings, Purpose.DRY_RUN, guards).set_up(clients)
        chain = place.chain

        async def decide(letters: list[DeadLetter]) -> list[PlannedMessage]:
            if not letters:
                return []
            # Resolved and put through the [[hooks]] rules as a cycle does: a transform or
            # a schema that would park a message is what `once` then decides.
            resolved = await chain.resolve_all(letters)
            # Unresolvable only while the feed map is incomplete: `once` leaves these in
            # their DLQ for a later cycle (drain/batch.py), so the plan must not say park.
            later = {
                item.letter.message_id: PlannedMessage.held_for_later(item)
                for item in resolved
                if isinstance(item, Unresolvable) and item.retry_later
            }
            assessed = [item for item in resolved if item.letter.message_id not in later]
            verdicts = await guards.assess(assessed, dry_run=True) if assessed else []
            planned = {m.message_id: m for m in map(PlannedMessage.from_verdict, verdicts)}
            if places is not None and places.configured:
                await _hold_unsendable(places, verdicts, planned)
            return [
                later.get(letter.message_id) or planned[letter.message_id] for letter in letters
            ]

        looks = await look_at_each(
            clients.sqs,
            place.dlqs,
            decide,
            max_messages=max_messages,
            wait_s=settings.drain.receive_wait_s,
            concurrency=settings.drain.queue_concurrency,
            progress=bars,
        )
        if clients.s3 is not None:
            # S3 sources: each object is a message to the plan, as to the cycle.
            for source in place.buckets:
                looks.append(
                    await look_at_objects(clients.s3, source, decide, max_messages=max_messages)
                )
        pauses = guards.pauses.active(time.time())
    return PlanReport(
        [QueuePlan.from_look(look) for look in looks], max_messages, pauses, judged.cluster
    )


async def plan_everywhere(
    settings: Settings, places: Places, *, max_messages: int, bars: ReadProgress
) -> tuple[PlanReport, list[str]]:
    """Every place's plan, one after the other, as one report; and the places that failed.

    With no [[accounts]], the one place's errors propagate, as they always did. With
    accounts, a place that cannot be planned (its role, its discovery, its parking
    queue) is named in the problems and the others are planned.
    """
    home = await places.home_clients()

    async def plan_in(visit: Visit) -> PlanReport:
        return await make_plan(
            visit.settings,
            visit.clients,
            max_messages=max_messages,
            bars=bars,
            home=home,
            places=places,
        )

    planned, failures = await places.each(settings, plan_in, only=places.to_survey(settings))
    if not places.configured:
        return planned[0][1], []
    plans = [plan for _, plan in planned]
    problems = [str(failure) for failure in failures]
    queues = [queue for plan in plans for queue in plan.queues]
    pauses = plans[0].pauses if plans else []
    cluster = plans[0].cluster if plans else None
    return PlanReport(queues, max_messages, pauses, cluster), problems


async def run_plan(settings: Settings, *, output: str, max_messages: int) -> int:
    """The `plan` command: 0, or 1 when some queue could not be read (named on stderr)."""
    if max_messages < 1:
        print("retryd plan: --max-messages must be at least 1", file=sys.stderr)
        return ExitCode.CONFIG
    async with open_places(settings) as places:
        try:
            with progress.QueueProgress(enabled=progress.wanted(output)) as bars:
                report, problems = await plan_everywhere(
                    settings, places, max_messages=max_messages, bars=bars
                )
        except (ClientError, BotoCoreError) as exc:
            print(
                f"retryd plan: cannot list the DLQs: {classify.from_exception(exc)}",
                file=sys.stderr,
            )
            return ExitCode.AWS
    if output == "json":
        print(json.dumps(report.to_json(), indent=2))
    else:
        render.show(plan_document(report))
    for problem in problems:
        print(f"retryd plan: {problem}", file=sys.stderr)
    for plan in report.failed:
        for error in plan.errors:
            print(f"retryd plan: {plan.queue.name}: {error}", file=sys.stderr)
    return ExitCode.CYCLE_FAILED if report.failed or problems else ExitCode.OK


# -- The text of `retryd plan` (retryd.commands.render lays it out) ---------------------

PLAN_COLUMNS = (
    render.Column("QUEUE", min_width=8),
    render.Column("MESSAGE ID", min_width=render.MESSAGE_ID_WIDTH),
    render.Column("RESOLVER", min_width=8, overflow="ellipsis"),
    render.Column("TARGET", min_width=12),
    render.Column("DECISION", min_width=10),
    render.Column("DETAIL", min_width=12),
)
PLAN_COUNT_COLUMNS = (
    render.Column("ACTION"),
    render.Column("REASON", min_width=8),
    render.Column("COUNT"),
)


def plan_document(report: PlanReport) -> render.Document:
    """Per message one row, then the counts by queue and decision."""
    blocks: list[render.Block] = []
    rows = [
        [
            plan.queue.name,
            message.message_id,
            message.resolver or "-",
            message.target.arn if message.target else "-",
            message.decision(),
            render.clip(message.shown_detail(), render.TEXT_DETAIL_MAX_CHARS),
        ]
        for plan in report.queues
        for message in plan.messages
    ]
    if rows:
        blocks += [render.Table(PLAN_COLUMNS, rows), render.Line("")]
    summary = report.summary()
    blocks.append(
        render.Line(
            f"{summary['queues']} queue(s), {summary['messages']} message(s) examined: "
            + ", ".join(f"{count} {action}" for action, count in summary["actions"].items())
        )
    )
    for plan in report.queues:
        depth = plan.depth.describe() if plan.depth else "depth unknown"
        note = " (--max-messages reached)" if plan.truncated else ""
        blocks.append(
            render.Line(f"{plan.queue.name}: {len(plan.messages)} examined{note}; {depth}", 2)
        )
        counted = sorted(plan.counts().items())
        if counted:
            blocks.append(
                render.Table(
                    PLAN_COUNT_COLUMNS,
                    [[action, reason or "", str(count)] for (action, reason), count in counted],
                    indent=4,
                    show_header=False,
                )
            )
        blocks += [render.Line(f"warning: {warning}", 4) for warning in plan.warnings]
        blocks += [render.Line(f"error: {error}", 4) for error in plan.errors]
    blocks += [render.Line(line) for line in describe_pauses(report.pauses, time.time())]
    if report.cluster is not None:
        blocks += _cluster_lines(report.cluster)
    return render.Document([blocks])


def _cluster_lines(cluster: ClusterView) -> list[render.Block]:
    """The replicas' cluster item the breakers were judged with (DynamoDB ledger)."""
    held = cluster.open
    lines: list[render.Block] = [
        render.Line(
            f"cluster: {cluster.live} live replica(s); "
            f"{len(held)} breaker(s) held open by the cluster"
        )
    ]
    for arn in held:
        holder = cluster.holder(arn)
        note = f" (canaries held by {holder})" if holder else ""
        lines.append(render.Line(f"{arn}{note}", 2))
    return lines
