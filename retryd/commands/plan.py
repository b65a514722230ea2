"""`retryd plan`: what `retryd once` would do with every message, with nothing changed.

Each DLQ is read the way a cycle reads it, but under a short lease; every
message is resolved by the same chain and judged by the same guards (in dry-run
mode: no tokens taken, no canary slot used, no ledger write), and then every
lease is handed back (visibility 0) so the messages are where they were,
visible at once. Nothing is resubmitted, parked or deleted.

The leased read is retryd/peek.py's, shared with `retryd inspect`.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import anyio
from botocore.exceptions import BotoCoreError, ClientError

from retryd import classify
from retryd.admission import Defer, Done, Go, Guards, Park, Verdict, build_guards
from retryd.admission.paused import Pause, PauseSet
from retryd.aws import AwsClients, open_clients
from retryd.commands import progress
from retryd.control.pauses import describe as describe_pauses
from retryd.control.pauses import pauses_in_force
from retryd.discovery.feeds import FeedCache, FeedMap
from retryd.discovery.queues import discover_queues, queue_ref_from_url
from retryd.discovery.survey import Depth, peek, read_depth
from retryd.ledger import Ledger, open_ledger
from retryd.models import DeadLetter, QueueRef, Target
from retryd.resolve import ResolverChain, build_chain
from retryd.settings import Settings
from retryd.settle.parking import Parking
from retryd.targets.sender import ALREADY_RESUBMITTED

# Longest detail shown on one text line (the JSON output keeps all of it).
TEXT_DETAIL_MAX_CHARS = 160
JSON_FORMAT_VERSION = 1


# -- What `once` would decide ------------------------------------------------------------


@asynccontextmanager
async def open_guards(
    settings: Settings, clients: AwsClients, protected: Iterable[str]
) -> AsyncIterator[Guards]:
    """The guards a cycle applies, built as a cycle builds them, for dry-run assessment.

    `protected` are the queues a cycle never resubmits into (its DLQs and the
    parking queue). The one place `plan` builds guards.
    """
    # Only read: counts and backoff come from the ledger. A SQLite file that does not
    # exist yet has counted nothing, and opening it would create it: a plan writes
    # nothing, so it judges with no ledger instead.
    exists = settings.ledger.backend != "sqlite" or await anyio.Path(settings.ledger.path).exists()
    ledger_scope: AbstractAsyncContextManager[Ledger | None] = (
        open_ledger(settings.ledger, clients) if exists else nullcontext(None)
    )
    async with ledger_scope as ledger:
        guards = build_guards(settings, ledger=ledger, metrics=None)
        guards.protect_queues(protected)
        # Judged with the operator's pauses, as the next cycle will be.
        guards.set_pauses(PauseSet(tuple(await pauses_in_force(settings.ledger, clients))))
        yield guards


async def open_chain(
    settings: Settings, clients: AwsClients, queues: Sequence[QueueRef]
) -> tuple[ResolverChain, FeedMap]:
    """The resolver chain a cycle uses for these DLQs, and the feed map it is built on."""
    feeds = FeedCache.for_settings(settings)
    await feeds.refresh_if_due(clients, queues)
    return build_chain(settings, feeds), feeds.current


class Action(StrEnum):
    """What `once` would do with a message."""

    RESUBMIT = "resubmit"
    PARK = "park"
    DEFER = "defer"
    # Left untouched to reappear after its lease (retryd cannot tell yet, e.g. no ledger).
    HOLD = "hold"


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

    @classmethod
    def from_verdict(cls, verdict: Verdict) -> PlannedMessage:
        if isinstance(verdict, Park):
            parked = verdict.job
            return cls(
                verdict.letter.message_id,
                Action.PARK,
                verdict.attempt,
                (parked.resolver or None) if parked else None,
                parked.target if parked else None,
                verdict.reason.value,
                detail=verdict.detail,
            )
        job = verdict.job
        go = cls(
            job.letter.message_id,
            Action.RESUBMIT,
            job.next_attempt,
            job.resolver or None,
            job.target,
        )
        if isinstance(verdict, Go):
            return replace(go, attempt=verdict.attempt)
        if isinstance(verdict, Done):
            return replace(
                go,
                attempt=verdict.attempt,
                reason=ALREADY_RESUBMITTED,
                detail="resubmitted already (the ledger committed it); only deleted",
            )
        if isinstance(verdict, Defer):
            return replace(
                go,
                action=Action.DEFER,
                attempt=verdict.attempt,
                reason=verdict.reason.value,
                delay_s=verdict.delay_s,
                detail=verdict.detail,
            )
        return replace(
            go,
            action=Action.HOLD,
            attempt=job.attempt,
            reason=verdict.reason,
            detail=verdict.detail,
        )

    def decision(self) -> str:
        """The verdict in a few words: `resubmit as attempt 2`, `park too-old`, ..."""
        if self.action is Action.RESUBMIT and self.reason == ALREADY_RESUBMITTED:
            return f"delete (attempt {self.attempt} already resubmitted)"
        if self.action is Action.RESUBMIT:
            return f"resubmit as attempt {self.attempt}"
        if self.action is Action.PARK:
            return f"park {self.reason}"
        if self.action is Action.HOLD:
            return f"hold {self.reason}"
        return f"defer {self.reason} for {self.delay_s or 0:.0f}s"

    def to_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "action": self.action.value,
            "reason": self.reason,
            "attempt": self.attempt,
            "delay_s": self.delay_s,
            "resolver": self.resolver,
            "target": (
                {"type": self.target.type.value, "arn": self.target.arn} if self.target else None
            ),
            "detail": self.detail,
        }


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
            "actions": {action.value: actions.get(action.value, 0) for action in Action},
            "groups": groups,
            "failed_queues": [plan.queue.name for plan in self.failed],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "version": JSON_FORMAT_VERSION,
            "max_messages": self.max_messages,
            "queues": [plan.to_json() for plan in self.queues],
            "pauses": [pause.to_json() for pause in self.pauses],
            "summary": self.summary(),
        }


async def _plan_queue(
    clients: AwsClients,
    settings: Settings,
    queue: QueueRef,
    decide: Callable[[Sequence[DeadLetter]], Any],
    *,
    max_messages: int,
    bars: progress.QueueProgress,
) -> QueuePlan:
    plan = QueuePlan(queue)
    try:
        plan.depth = await read_depth(clients.sqs, queue)
    except Exception as exc:  # noqa: BLE001 - a cycle drains without a depth; so does plan
        plan.warnings.append(f"depth unknown: {classify.from_exception(exc)}")
    else:
        if plan.depth.visible == 0:
            # A cycle skips a DLQ SQS reports empty; the plan says the same by showing none.
            return plan
        # A cycle carries the retention on every letter, for the guards' retention check.
        queue = replace(queue, retention_s=plan.depth.retention_s)
    bar = bars.add(queue.name, min(max_messages, plan.depth.visible) if plan.depth else None)
    async with peek(
        clients.sqs,
        queue,
        max_messages=max_messages,
        wait_s=settings.drain.receive_wait_s,
        on_batch=lambda count: bars.advance(bar, count),
    ) as seen:
        verdicts: list[Verdict] = await decide(seen.letters) if seen.letters else []
    bars.finish(bar)
    plan.messages = [PlannedMessage.from_verdict(verdict) for verdict in verdicts]
    plan.errors.extend(seen.errors)
    plan.truncated = seen.truncated
    return plan


async def make_plan(
    settings: Settings,
    clients: AwsClients,
    *,
    max_messages: int,
    bars: progress.QueueProgress,
) -> PlanReport:
    """Read, resolve and assess every DLQ's messages; nothing changes but brief leases.

    Discovery errors and a missing parking queue propagate, as they stop a cycle.
    """
    parking = await Parking.locate(
        clients.sqs, settings.parking.queue, settings.parking.detail_max_bytes
    )
    parking_arn = queue_ref_from_url(parking.queue_url, clients.sqs.meta.region_name).arn
    queues = await discover_queues(clients.sqs, settings.discovery, settings.parking.queue)
    chain, _ = await open_chain(settings, clients, queues)
    plans: list[QueuePlan] = [QueuePlan(queue) for queue in queues]
    async with open_guards(settings, clients, [q.arn for q in queues] + [parking_arn]) as guards:

        async def decide(letters: Sequence[DeadLetter]) -> list[Verdict]:
            return await guards.assess([chain.resolve(x) for x in letters], dry_run=True)

        limiter = anyio.CapacityLimiter(settings.drain.queue_concurrency)

        async def one(index: int) -> None:
            async with limiter:
                plans[index] = await _plan_queue(
                    clients,
                    settings,
                    queues[index],
                    decide,
                    max_messages=max_messages,
                    bars=bars,
                )

        async with anyio.create_task_group() as group:
            for index in range(len(queues)):
                group.start_soon(one, index)
        pauses = guards.pauses.active(time.time())
    return PlanReport(plans, max_messages, pauses)


# -- Output ----------------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Left-aligned columns; the last column is not padded."""
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append((indent + "  ".join([*cells, row[-1]])).rstrip())
    return lines


def render_text(report: PlanReport) -> str:
    """Per message one line, then the counts by queue and decision."""
    lines: list[str] = []
    rows: list[list[str]] = [["QUEUE", "MESSAGE ID", "RESOLVER", "TARGET", "DECISION", "DETAIL"]]
    for plan in report.queues:
        for message in plan.messages:
            rows.append(
                [
                    plan.queue.name,
                    message.message_id,
                    message.resolver or "-",
                    message.target.arn if message.target else "-",
                    message.decision(),
                    _clip(message.detail, TEXT_DETAIL_MAX_CHARS),
                ]
            )
    if len(rows) > 1:
        lines.extend(_table(rows))
        lines.append("")
    summary = report.summary()
    lines.append(
        f"{summary['queues']} queue(s), {summary['messages']} message(s) examined: "
        + ", ".join(f"{count} {action}" for action, count in summary["actions"].items())
    )
    for plan in report.queues:
        depth = plan.depth.describe() if plan.depth else "depth unknown"
        note = " (--max-messages reached)" if plan.truncated else ""
        lines.append(f"  {plan.queue.name}: {len(plan.messages)} examined{note}; {depth}")
        counted = sorted(plan.counts().items())
        if counted:
            lines.extend(
                _table(
                    [[action, reason or "", str(count)] for (action, reason), count in counted],
                    indent="    ",
                )
            )
        lines.extend(f"    warning: {warning}" for warning in plan.warnings)
        lines.extend(f"    error: {error}" for error in plan.errors)
    lines.extend(describe_pauses(report.pauses, time.time()))
    return "\n".join(lines)


async def run_plan(settings: Settings, *, output: str, max_messages: int) -> int:
    """The `plan` command: 0, or 1 when some queue could not be read (named on stderr)."""
    if max_messages < 1:
        print("retryd plan: --max-messages must be at least 1", file=sys.stderr)
        return 2
    async with open_clients(settings.aws) as clients:
        try:
            with progress.QueueProgress(enabled=progress.wanted(output)) as bars:
                report = await make_plan(settings, clients, max_messages=max_messages, bars=bars)
        except (ClientError, BotoCoreError) as exc:
            print(
                f"retryd plan: cannot list the DLQs: {classify.from_exception(exc)}",
                file=sys.stderr,
            )
            return 1
    if output == "json":
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render_text(report))
    for plan in report.failed:
        for error in plan.errors:
            print(f"retryd plan: {plan.queue.name}: {error}", file=sys.stderr)
    return 1 if report.failed else 0
