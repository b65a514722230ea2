"""One cycle: discover the DLQs, then drain each (bounded concurrency) within a budget."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from retryd import classify
from retryd.admission import build_guards
from retryd.admission.breaker import Breakers
from retryd.admission.ratelimit import RateLimits
from retryd.aws import AwsClients
from retryd.cluster import Cluster, open_cluster
from retryd.cluster.agree import share
from retryd.control import ControlError, control_store
from retryd.control.deferrals import HiddenBook
from retryd.control.jobs import JOBS_DOC, job_metrics
from retryd.control.pauses import PAUSES_DOC, pause_set
from retryd.discovery.feeds import FeedCache
from retryd.discovery.survey import (
    RECEIVE_BATCH_MAX,
    Sizing,
    locate_parking,
    receive,
    size_up,
    survey_queues,
)
from retryd.drain.batch import Pipeline
from retryd.drain.shard import WHOLE, Shard
from retryd.errors import ParkingQueueMissingError, RetrydError
from retryd.ledger import Ledger
from retryd.metrics import Metrics
from retryd.models import CONFIG_FAIL_REASONS, DeadLetter, Decision, Outcome, QueueRef
from retryd.resolve import build_chain
from retryd.settings import Settings
from retryd.settle.parking import Parking
from retryd.targets import TargetRouter
from retryd.targets.sender import Sender

log = structlog.get_logger("retryd.cycle")


@dataclass
class CycleReport:
    """What one cycle did, counted; `decisions` is kept only when asked for."""

    queues: int = 0
    discovered: bool = False
    received: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)
    decisions: list[Decision] | None = None
    errors: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    # An error that needs a person rather than another cycle (exit code and all).
    fatal: RetrydError | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def config_failures(self) -> int:
        """Messages left in their DLQs for a configuration reason: no later cycle fixes those."""
        return sum(
            count
            for (outcome, reason), count in self.reasons.items()
            if outcome == Outcome.FAILED.value and reason in CONFIG_FAIL_REASONS
        )

    def to_json(self) -> dict[str, Any]:
        """The summary as one JSON object (`retryd once --output json`)."""
        return {
            "queues": self.queues,
            "received": self.received,
            "outcomes": {o.value: self.outcomes.get(o.value, 0) for o in Outcome},
            "reasons": [
                {"outcome": outcome, "reason": reason, "count": count}
                for (outcome, reason), count in sorted(self.reasons.items())
            ],
            "errors": list(self.errors),
            "duration_s": round(self.duration_s, 3),
            "ok": self.ok,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any], *, discovered: bool = True) -> CycleReport:
        """A report back from its `to_json` (one worker process's, for the parent to sum)."""
        return cls(
            queues=int(document["queues"]),
            discovered=discovered,
            received=int(document["received"]),
            outcomes=Counter({str(k): int(v) for k, v in document["outcomes"].items()}),
            reasons=Counter(
                {
                    (str(r["outcome"]), str(r["reason"])): int(r["count"])
                    for r in document["reasons"]
                }
            ),
            errors=[str(error) for error in document["errors"]],
            duration_s=float(document["duration_s"]),
        )

    def merge(self, other: CycleReport) -> None:
        """Add another worker's cycle: counts summed, errors joined, the longest duration."""
        self.queues += other.queues
        self.discovered = self.discovered and other.discovered
        self.received += other.received
        self.outcomes.update(other.outcomes)
        self.reasons.update(other.reasons)
        self.errors.extend(other.errors)
        self.duration_s = max(self.duration_s, other.duration_s)
        if self.fatal is None:
            self.fatal = other.fatal

    def add(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            self.outcomes[decision.outcome.value] += 1
            if decision.reason:
                self.reasons[(decision.outcome.value, decision.reason)] += 1
        if self.decisions is not None:
            self.decisions.extend(decisions)

    def summary(self) -> str:
        """The one-line summary `retryd once` prints."""
        counts = " ".join(
            f"{outcome.value}={self.outcomes.get(outcome.value, 0)}" for outcome in Outcome
        )
        line = f"queues={self.queues} received={self.received} {counts}"
        if self.reasons:
            detail = " ".join(
                f"{outcome}:{reason}={count}"
                for (outcome, reason), count in sorted(self.reasons.items())
            )
            line += f" | {detail}"
        line += f" | {self.duration_s:.2f}s"
        if self.errors:
            line += f" | errors={len(self.errors)}"
        return line


def _leaves(exc: BaseException) -> list[BaseException]:
    """The real errors inside (possibly nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


# Time kept back from each lease for the delete that settles the batch.
LEASE_MARGIN_S = 5.0

# How long noting the messages a queue's drain hid may hold off a stop.
HIDDEN_FLUSH_S = 5.0

# Batches in a row made only of messages already handled this cycle before the
# queue counts as wrapped round (each such receive hides them again, so a few
# tries reach the rest of the queue without spinning).
MAX_STALE_BATCHES = 3


@dataclass(frozen=True)
class _Run:
    """What every worker of one cycle shares."""

    pipeline: Pipeline
    deadline: float
    stopping: anyio.Event
    report: CycleReport

    @property
    def go_on(self) -> bool:
        return not self.stopping.is_set() and anyio.current_time() < self.deadline


# Outcomes whose message was deleted from its DLQ: it cannot come back this cycle
# (unless the delete failed, and then the ledger knows its copy is safe).
_DELETED = frozenset({Outcome.RESUBMITTED, Outcome.PARKED})


@dataclass
class _QueueDrain:
    """Shared state of the workers draining one queue in one cycle."""

    queue: QueueRef
    remaining: int
    # Messages handled this cycle that are still in the DLQ (failed, deferred, in
    # flight): only these can be received again. Bounded by what is left behind,
    # not by the backlog, so a 100,000-message drain does not grow with it.
    seen: set[str] = field(default_factory=set)
    stale_batches: int = 0
    done: bool = False
    oldest_sent_s: float | None = None

    def saw(self, letters: list[DeadLetter]) -> None:
        self.seen.update(letter.message_id for letter in letters)
        for letter in letters:
            sent_s = letter.sent_at_s
            if sent_s is not None and (self.oldest_sent_s is None or sent_s < self.oldest_sent_s):
                self.oldest_sent_s = sent_s

    def settled(self, decisions: list[Decision]) -> None:
        """Forget the messages that left the DLQ: nothing to tell apart when they are gone."""
        for decision in decisions:
            if decision.outcome in _DELETED:
                self.seen.discard(decision.letter.message_id)


class Cycle:
    """Everything one cycle needs, built once per run and reused by every cycle."""

    def __init__(
        self,
        settings: Settings,
        clients: AwsClients,
        metrics: Metrics,
        *,
        ledger: Ledger | None = None,
        shard: Shard = WHOLE,
    ) -> None:
        self._settings = settings
        # One of drain.processes workers drains only the DLQs that fall to it.
        self._shard = shard
        self._clients = clients
        self._metrics = metrics
        # What feeds each DLQ (Lambda functions, redrive sources), rebuilt every few cycles.
        # Redrive sources lazily: a DLQ's are looked up once it has messages (see _drain).
        self._feeds = FeedCache.for_settings(settings, lazy_redrive=True)
        self._chain = build_chain(settings, self._feeds, metrics)
        # Breakers count in the event loop's monotonic time: a wall-clock jump must
        # not open or close one.
        breakers = Breakers(settings.breaker, anyio.current_time, metrics)
        rates = RateLimits(settings.rate_limit, anyio.current_time)
        self._guards = build_guards(
            settings, ledger=ledger, metrics=metrics, breakers=breakers, rates=rates
        )
        # Replicas on one DynamoDB ledger share the breakers and rate budgets.
        self._cluster: Cluster = open_cluster(settings, clients, breakers=breakers, rates=rates)
        if not shard.whole and settings.ledger.backend != "dynamodb":
            # Worker processes with no cluster to agree through (the DynamoDB one counts
            # each as a replica): each takes an equal part of every target's rate, so
            # that together they keep to the configured one.
            rates.reshare(lambda rate: share(rate, shard.count))
        self._sender = Sender(
            targets=TargetRouter(clients, settings.drain.target_concurrency),
            guards=self._guards,
        )
        self._pipeline: Pipeline | None = None
        self._parking: Parking | None = None
        # Operator pauses live beside the ledger, shared by every replica and command.
        self._control = control_store(settings.ledger, clients)
        self._hidden = HiddenBook(self._control)

    @property
    def cluster(self) -> Cluster:
        """How this replica agrees with the others (a single replica without DynamoDB)."""
        return self._cluster

    async def leave(self) -> None:
        """At a clean stop: leave the cluster, so the others take over its budget at once."""
        with anyio.CancelScope(shield=True):
            await self._cluster.leave()

    @property
    def feeds(self) -> FeedCache:
        """What feeds each DLQ, as last learned (read-only; `retryd inspect` shows it)."""
        return self._feeds

    async def _ready_pipeline(self) -> tuple[Pipeline, Parking]:
        if self._pipeline is None or self._parking is None:
            # Located every cycle until found, so a missing parking queue stops
            # draining (nothing could be parked) without stopping the daemon.
            parking = await locate_parking(self._clients.sqs, self._settings)
            self._parking = parking
            self._pipeline = Pipeline(
                sqs=self._clients.sqs,
                chain=self._chain,
                guards=self._guards,
                sender=self._sender,
                parking=parking,
                metrics=self._metrics,
                log_payloads=self._settings.log.include_payloads,
                hidden=self._hidden,
            )
        return self._pipeline, self._parking

    async def run(
        self,
        stopping: anyio.Event,
        *,
        collect: bool = False,
        on_discovered: Callable[[], None] | None = None,
    ) -> CycleReport:
        """Discover and drain; never raises for AWS trouble, which is reported instead.

        `on_discovered` is called as soon as discovery has succeeded, before any
        DLQ is drained (readiness must not wait for a long first cycle).
        """
        report = CycleReport(decisions=[] if collect else None)
        started = anyio.current_time()
        try:
            pipeline, parking = await self._ready_pipeline()
            # Once per cycle, never per message: heartbeat, budgets, breakers.
            await self._cluster.sync()
            survey = await survey_queues(self._clients.sqs, self._settings, parking)
            queues = [queue for queue in survey.dlqs if self._shard.owns(queue.arn)]
            await self._feeds.refresh_if_due(self._clients, queues)
            report.queues = len(queues)
            report.discovered = True
            if on_discovered is not None:
                on_discovered()
            if not queues:
                log.warning(
                    "no-queues-found",
                    queue_prefixes=self._settings.discovery.queue_prefixes,
                    queues=self._settings.discovery.queues,
                    why="no DLQ matched discovery; check the prefixes, tags, names and region",
                )
            self._metrics.set_queues_discovered(len(queues))
            self._guards.protect_queues(survey.protected)
            await self._refresh_operator_state()
            run = _Run(pipeline, started + self._settings.drain.cycle_budget_s, stopping, report)
            limiter = anyio.CapacityLimiter(self._settings.drain.queue_concurrency)
            async with anyio.create_task_group() as group:
                for queue in queues:
                    group.start_soon(self._drain, run, queue, limiter)
        except ParkingQueueMissingError as exc:
            # Not an AWS hiccup: someone has to create the queue. The daemon keeps
            # looking every cycle; `once` exits with this error's own code.
            report.errors.append(f"cycle: {exc}")
            report.fatal = exc
            log.error("parking-queue-missing", queue=exc.queue, error=str(exc))  # noqa: TRY400 - the message says it all
        except Exception as exc:  # noqa: BLE001 - a failed cycle is reported, the daemon goes on
            for leaf in _leaves(exc):
                error = classify.from_exception(leaf)
                report.errors.append(f"cycle: {error}")
                # The classified error says what happened; an AWS outage's traceback does not.
                log.error("cycle-failed", error=str(error), error_class=error.error_class.value)  # noqa: TRY400
        report.duration_s = anyio.current_time() - started
        self._metrics.observe_cycle(report.duration_s, report.ok, time.time())
        return report

    async def _refresh_operator_state(self) -> None:
        """Read the pauses (and the jobs, for metrics) once per cycle, in one read.

        Unreadable, the pauses read last stay in force.
        """
        try:
            docs = await self._control.get([PAUSES_DOC, JOBS_DOC])
        except ControlError as exc:
            log.warning("pauses-unknown", error=str(exc), why="the pauses read last stay in force")
            return
        pauses = pause_set(docs[PAUSES_DOC].body if PAUSES_DOC in docs else None)
        self._guards.set_pauses(pauses)
        now_s = time.time()
        self._metrics.set_pauses([(p.pattern, p.until_s) for p in pauses.active(now_s)])
        self._metrics.set_redrive_jobs(
            *job_metrics(docs[JOBS_DOC].body if JOBS_DOC in docs else None)
        )

    async def _drain(self, run: _Run, queue: QueueRef, limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            if not run.go_on:
                return
            sizing = await self._size_up(queue)
            if sizing.empty:
                # Most DLQs are empty most of the time: one cheap call instead of a
                # long poll per empty queue.
                return
            # Its retention rides on every letter, for the guards' retention check.
            queue = sizing.queue
            # Its resolvers read what feeds it: learned now, not for every empty DLQ.
            await self._feeds.learn(self._clients, queue)
            state = _QueueDrain(queue, self._settings.drain.max_messages_per_queue)
            try:
                async with anyio.create_task_group() as group:
                    for _ in range(self._settings.drain.workers_per_queue):
                        group.start_soon(self._worker, run, state)
            finally:
                with anyio.move_on_after(HIDDEN_FLUSH_S, shield=True):
                    await self._hidden.flush(queue.name)
            if state.oldest_sent_s is not None:
                self._metrics.set_oldest_message_age(
                    queue.name, max(0.0, time.time() - state.oldest_sent_s)
                )

    async def _worker(self, run: _Run, state: _QueueDrain) -> None:
        report = run.report
        while not state.done and run.go_on:
            want = min(RECEIVE_BATCH_MAX, state.remaining)
            if want <= 0:
                state.done = True
                return
            state.remaining -= want
            # The lease starts when SQS hands the messages out: take the time before asking.
            lease_s = self._settings.drain.visibility_timeout_s
            act_by = anyio.current_time() + lease_s - min(LEASE_MARGIN_S, lease_s * 0.2)
            letters = await self._receive(state, want, report)
            if letters is None:
                state.done = True
                return
            fresh = [letter for letter in letters if letter.message_id not in state.seen]
            state.remaining += want - len(fresh)
            if not fresh:
                # Only messages already handled this cycle (transient failures whose
                # lease ran out); this receive hid them again, so look a little further.
                state.stale_batches += 1
                state.done = state.stale_batches >= MAX_STALE_BATCHES
                continue
            state.stale_batches = 0
            state.saw(fresh)
            report.received += len(fresh)
            decisions = await run.pipeline.handle(state.queue, fresh, act_by)
            state.settled(decisions)
            report.add(decisions)
            # A breaker this batch opened or closed is written now (no call otherwise),
            # so the other replicas find it at their next sync.
            await self._cluster.flush()

    async def _size_up(self, queue: QueueRef) -> Sizing:
        """The queue's depth (exported) and retention; an unknown depth is logged, not fatal."""
        sizing = await size_up(self._clients.sqs, queue)
        if sizing.depth is None:
            log.warning("depth-unknown", queue=queue.name, error=sizing.problem)
        else:
            depth = sizing.depth
            self._metrics.set_dlq_depth(queue.name, depth.visible, depth.in_flight, depth.delayed)
        return sizing

    async def _receive(
        self, state: _QueueDrain, want: int, report: CycleReport
    ) -> list[DeadLetter] | None:
        """The next batch, or None when the queue is empty or cannot be read."""
        try:
            letters = await receive(
                self._clients.sqs,
                state.queue,
                max_messages=want,
                wait_s=self._settings.drain.receive_wait_s,
                lease_s=self._settings.drain.visibility_timeout_s,
            )
        except Exception as exc:  # noqa: BLE001 - this queue is skipped, the others go on
            error = classify.from_exception(exc)
            report.errors.append(f"{state.queue.name}: {error}")
            log.warning("receive-failed", queue=state.queue.name, error=str(error))
            return None
        return letters or None
