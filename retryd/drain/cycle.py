"""One cycle: discover the DLQs, then drain each (bounded concurrency) within a budget."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace

import anyio
import structlog

from retryd import classify
from retryd.admission import build_guards
from retryd.admission.ratelimit import RateLimits
from retryd.aws import AwsClients
from retryd.discovery.feeds import FeedCache
from retryd.discovery.queues import discover_queues, queue_ref_from_url
from retryd.discovery.survey import RECEIVE_BATCH_MAX, read_depth
from retryd.drain.batch import Pipeline
from retryd.errors import ParkingQueueMissingError, RetrydError
from retryd.ledger import Ledger
from retryd.metrics import Metrics
from retryd.models import DeadLetter, Decision, Outcome, QueueRef
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


@dataclass
class _QueueDrain:
    """Shared state of the workers draining one queue in one cycle."""

    queue: QueueRef
    remaining: int
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


class Cycle:
    """Everything one cycle needs, built once per run and reused by every cycle."""

    def __init__(
        self,
        settings: Settings,
        clients: AwsClients,
        metrics: Metrics,
        *,
        ledger: Ledger | None = None,
    ) -> None:
        self._settings = settings
        self._clients = clients
        self._metrics = metrics
        # What feeds each DLQ (Lambda functions, redrive sources), rebuilt every few cycles.
        # Redrive sources lazily: a DLQ's are looked up once it has messages (see _drain).
        self._feeds = FeedCache.for_settings(settings, lazy_redrive=True)
        self._chain = build_chain(settings, self._feeds)
        self._guards = build_guards(settings, ledger=ledger, metrics=metrics)
        self._sender = Sender(
            targets=TargetRouter(clients, settings.drain.target_concurrency),
            guards=self._guards,
            rates=RateLimits(settings.rate_limit, anyio.current_time),
            ledger=ledger,
        )
        self._pipeline: Pipeline | None = None
        self._parking_arn = ""

    @property
    def feeds(self) -> FeedCache:
        """What feeds each DLQ, as last learned (read-only; `retryd inspect` shows it)."""
        return self._feeds

    async def _ready_pipeline(self) -> Pipeline:
        if self._pipeline is None:
            # Located every cycle until found, so a missing parking queue stops
            # draining (nothing could be parked) without stopping the daemon.
            parking = await Parking.locate(
                self._clients.sqs,
                self._settings.parking.queue,
                self._settings.parking.detail_max_bytes,
            )
            self._parking_arn = queue_ref_from_url(
                parking.queue_url, self._clients.sqs.meta.region_name
            ).arn
            self._pipeline = Pipeline(
                sqs=self._clients.sqs,
                chain=self._chain,
                guards=self._guards,
                sender=self._sender,
                parking=parking,
                metrics=self._metrics,
                log_payloads=self._settings.log.include_payloads,
            )
        return self._pipeline

    async def run(self, stopping: anyio.Event, *, collect: bool = False) -> CycleReport:
        """Discover and drain; never raises for AWS trouble, which is reported instead."""
        report = CycleReport(decisions=[] if collect else None)
        started = anyio.current_time()
        try:
            pipeline = await self._ready_pipeline()
            queues = await discover_queues(
                self._clients.sqs, self._settings.discovery, self._settings.parking.queue
            )
            await self._feeds.refresh_if_due(self._clients, queues)
            report.queues = len(queues)
            report.discovered = True
            self._metrics.set_queues_discovered(len(queues))
            self._guards.protect_queues([q.arn for q in queues] + [self._parking_arn])
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

    async def _drain(self, run: _Run, queue: QueueRef, limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            if not run.go_on:
                return
            visible, retention_s = await self._visible(queue)
            if visible == 0:
                # Most DLQs are empty most of the time: one cheap call instead of a
                # long poll per empty queue. SQS's count is approximate, so a message
                # that arrived just now waits for the next cycle.
                return
            # Carried on every letter, so the guards can rescue messages SQS is about to drop.
            queue = replace(queue, retention_s=retention_s)
            # Its resolvers read what feeds it: learned now, not for every empty DLQ.
            await self._feeds.learn(self._clients, queue)
            state = _QueueDrain(queue, self._settings.drain.max_messages_per_queue)
            async with anyio.create_task_group() as group:
                for _ in range(self._settings.drain.workers_per_queue):
                    group.start_soon(self._worker, run, state)
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
            report.add(await run.pipeline.handle(state.queue, fresh, act_by))

    async def _visible(self, queue: QueueRef) -> tuple[int | None, int | None]:
        """Visible messages in `queue` (its depth exported) and its retention in seconds.

        Either is None when SQS did not say.
        """
        try:
            depth = await read_depth(self._clients.sqs, queue)
        except Exception as exc:  # noqa: BLE001 - no depth is no reason not to drain
            log.warning("depth-unknown", queue=queue.name, error=str(classify.from_exception(exc)))
            return None, None
        self._metrics.set_dlq_depth(queue.name, depth.visible, depth.in_flight, depth.delayed)
        return depth.visible, depth.retention_s

    async def _receive(
        self, state: _QueueDrain, want: int, report: CycleReport
    ) -> list[DeadLetter] | None:
        """The next batch, or None when the queue is empty or cannot be read."""
        try:
            response = await self._clients.sqs.receive_message(
                QueueUrl=state.queue.url,
                MaxNumberOfMessages=want,
                WaitTimeSeconds=self._settings.drain.receive_wait_s,
                VisibilityTimeout=self._settings.drain.visibility_timeout_s,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
            )
        except Exception as exc:  # noqa: BLE001 - this queue is skipped, the others go on
            error = classify.from_exception(exc)
            report.errors.append(f"{state.queue.name}: {error}")
            log.warning("receive-failed", queue=state.queue.name, error=str(error))
            return None
        messages = response.get("Messages", [])
        if not messages:
            return None
        return [DeadLetter.from_wire(state.queue, raw) for raw in messages]
