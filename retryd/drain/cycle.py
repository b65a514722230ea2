"""One cycle: discover the DLQs in every place, then drain each (bounded concurrency) in a budget.

A place is an account in a region (`retryd.places`); with no `[[accounts]]` there is
one. Each place has its own clients, parking queue, feed map and pipeline; the
guards, the ledger, the operator state and the cluster item are shared (they live
in the home place). A place that cannot be worked in this cycle (its role cannot be
assumed, its discovery fails, its parking queue is missing) is that place's error:
the others are drained, and the next cycle tries it again.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import structlog

from retryd import classify
from retryd.aws import AwsClients
from retryd.cluster.agree import share
from retryd.cluster.base import Cluster
from retryd.control import ControlError, control_store
from retryd.control.jobs import JOBS_DOC, job_metrics
from retryd.control.pauses import PAUSES_DOC, pause_set
from retryd.discovery.feeds import FeedCache
from retryd.discovery.survey import Sizing, size_up
from retryd.drain.batch import Pipeline
from retryd.drain.buckets import BucketDrain
from retryd.drain.setup import PlaceBuilder, PlaceSetup, Purpose, admit_live
from retryd.drain.shard import WHOLE, Shard
from retryd.drain.sightings import QueueSighting, Sightings
from retryd.errors import ParkingQueueMissingError, RetrydError
from retryd.heartbeat import Leasing
from retryd.leases import RECEIVE_BATCH_MAX, act_by, receive
from retryd.ledger import Ledger
from retryd.metrics import Metrics, place_labels
from retryd.models import (
    CONFIG_FAIL_REASONS,
    CYCLE_OUTCOMES,
    DELETED_OUTCOMES,
    DeadLetter,
    Decision,
    Outcome,
    QueueRef,
)
from retryd.places import Place, PlaceFailure, Places, Visit, leaves
from retryd.settings import Settings
from retryd.settle.objects import Objects
from retryd.settle.outcome import judged_again
from retryd.targets import TargetRouter

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
            "outcomes": {o.value: self.outcomes.get(o.value, 0) for o in CYCLE_OUTCOMES},
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
            f"{outcome.value}={self.outcomes.get(outcome.value, 0)}" for outcome in CYCLE_OUTCOMES
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


# How long noting the messages a queue's drain hid may hold off a stop.
HIDDEN_FLUSH_S = 5.0

# Batches in a row made only of messages already handled this cycle before the
# queue counts as wrapped round (each such receive hides them again, so a few
# tries reach the rest of the queue without spinning).
MAX_STALE_BATCHES = 3
# A receiver whose targets' tokens are all spoken for looks again no sooner than this...
MIN_ROOM_WAIT_S = 0.05
# ...and no later: a share can grow at any heartbeat (a lapsed replica's next token is days
# away until one lands), and the cycle's budget and a stop are only seen between waits.
MAX_ROOM_WAIT_S = 1.0
# How long a DLQ that keeps moving messages in back-to-back cycles is drained without a
# depth look-up (Cycle._sized): its depth gauge and its retention are never older than
# this, two scrapes of a 15 s Prometheus interval.
BUSY_DEPTH_MAX_AGE_S = 30.0


@dataclass(frozen=True)
class _CycleBudget:
    """What every worker of one cycle shares."""

    deadline: float
    stopping: anyio.Event
    report: CycleReport

    @property
    def may_go_on(self) -> bool:
        return not self.stopping.is_set() and anyio.current_time() < self.deadline


@dataclass(frozen=True)
class _PlaceDrain:
    """One place as this cycle found it: its DLQs, and the clients and pipeline to drain them."""

    setup: PlaceSetup
    clients: AwsClients
    pipeline: Pipeline

    @property
    def queues(self) -> list[QueueRef]:
        return self.setup.dlqs

    @property
    def buckets(self) -> list[QueueRef]:
        return self.setup.buckets


@dataclass
class Handled:
    """The messages of one queue handled this cycle that may come back to it stale.

    Only the failed, paused and in-flight ones are remembered: the memory is bounded by
    what is left behind, not by the backlog, so a 100,000-message drain does not grow
    with it.
    """

    seen: set[str] = field(default_factory=set)
    oldest_sent_s: float | None = None

    def __contains__(self, message_id: str) -> bool:
        return message_id in self.seen

    def saw(self, letters: list[DeadLetter]) -> None:
        self.seen.update(letter.message_id for letter in letters)
        for letter in letters:
            sent_s = letter.sent_at_s
            if sent_s is not None and (self.oldest_sent_s is None or sent_s < self.oldest_sent_s):
                self.oldest_sent_s = sent_s

    def settled(self, decisions: list[Decision]) -> None:
        """Forget the messages that left the DLQ, and those to be taken again this cycle."""
        for decision in decisions:
            # Deleted from its DLQ: it cannot come back this cycle (unless the delete
            # failed, and then the ledger knows its copy is safe). Judged again when it comes
            # back (a deferral, due then): taken for a stale one, its receive would hide it
            # for a whole lease past its due time.
            if decision.outcome in DELETED_OUTCOMES or judged_again(decision):
                self.seen.discard(decision.letter.message_id)


@dataclass
class _QueueDrain:
    """Shared state of the workers draining one queue in one cycle."""

    look: _PlaceDrain
    queue: QueueRef
    remaining: int
    sighting: QueueSighting
    handled: Handled = field(default_factory=Handled)
    # The targets of the last batch's messages: what the next receive asks for is
    # bounded by what their tokens cover (none known yet: a full batch).
    targets: frozenset[str] = frozenset()
    stale_batches: int = 0
    done: bool = False
    # Messages this drain resubmitted or parked: what makes a cycle busy (service/scheduler.py).
    moved: int = 0


@dataclass(frozen=True, slots=True)
class _Busy:
    """A DLQ whose last drain moved messages: its depth as read before it, and when."""

    sizing: Sizing
    read_at_s: float


class Cycle:
    """Everything one cycle needs, built once per run and reused by every cycle."""

    def __init__(
        self,
        settings: Settings,
        clients: AwsClients,
        metrics: Metrics,
        *,
        ledger: Ledger | None = None,
        places: Places | None = None,
        shard: Shard = WHOLE,
    ) -> None:
        """`clients` are the home place's; `places` every place to drain (default: that one)."""
        self._settings = settings
        self._clients = clients
        self._metrics = metrics
        self._places = places or Places.single(clients)
        admission = admit_live(settings, clients, ledger=ledger, metrics=metrics)
        self._guards = admission.guards
        self._cluster: Cluster = admission.cluster
        rates = admission.rates
        if not shard.whole and settings.ledger.backend != "dynamodb":
            # Worker processes with no cluster to agree through (the DynamoDB one counts
            # each as a replica): each takes an equal part of every target's rate, so
            # that together they keep to the configured one.
            rates.reshare(lambda rate: share(rate, shard.count))
        # One router for every place: one bound on concurrent Lambda/Step Functions calls.
        self._router = TargetRouter(
            clients,
            settings.drain.target_concurrency,
            pick=self._places.for_sending if self._places.configured else None,
        )
        # Operator pauses live beside the ledger, shared by every replica and command.
        self._control = control_store(settings.ledger, clients)
        # What each place needs, kept across cycles (parking queue once found, feeds,
        # chain, sender); one of drain.processes workers drains only the DLQs that fall to it.
        self._builder = PlaceBuilder(
            settings,
            Purpose.CYCLE,
            self._guards,
            router=self._router,
            metrics=metrics,
            control=self._control,
            qualified=self._places.configured,
            owns=lambda queue: shard.owns(queue.arn),
        )
        # A place's pipeline, built once its parking queue is found, kept with it.
        self._pipelines: dict[Place, Pipeline] = {}
        # What the console's read model learns from each DLQ drained (never fails a batch).
        self._sightings = Sightings(self._control, parked_ttl_s=settings.console.parked_index_ttl_s)
        # By queue ARN, the DLQs whose last drain moved messages (see _sized).
        self._busy: dict[str, _Busy] = {}

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
        """What feeds each DLQ of the home place, as last learned (`retryd inspect` shows it)."""
        return self._builder.kept(self._places.places[0]).feeds

    def _pipeline(self, place: Place, setup: PlaceSetup, clients: AwsClients) -> Pipeline:
        pipeline = self._pipelines.get(place)
        if pipeline is None:
            pipeline = self._pipelines[place] = Pipeline(
                sqs=clients.sqs,
                chain=setup.chain,
                guards=setup.guards,
                sender=setup.live_sender(),
                parking=setup.parking,
                metrics=self._metrics,
                log_payloads=self._settings.log.include_payloads,
                hidden=setup.hidden,
                leasing=Leasing.for_settings(self._settings),
                objects=self._objects(clients),
            )
        return pipeline

    def _objects(self, clients: AwsClients) -> Objects | None:
        """A place's S3 objects, leased in the shared ledger; None without an S3 client."""
        return Objects.of(
            clients.s3, self._guards.ledger, settle=self._settings.discovery.s3_settle
        )

    async def run(
        self,
        stopping: anyio.Event,
        *,
        collect: bool = False,
        on_discovered: Callable[[], None] | None = None,
    ) -> CycleReport:
        """Discover and drain; never raises for AWS trouble, which is reported instead.

        `on_discovered` is called as soon as discovery has succeeded (in at least one
        place), before any DLQ is drained (readiness must not wait for a long first cycle).
        """
        report = CycleReport(decisions=[] if collect else None)
        started = anyio.current_time()
        try:
            if self._places.configured:
                # Once per cycle, never per message: heartbeat, budgets, breakers.
                await self._cluster.sync()
            looks = await self._look_everywhere(report)
            queues = [queue for look in looks for queue in [*look.queues, *look.buckets]]
            report.queues = len(queues)
            report.discovered = bool(looks)
            if looks and on_discovered is not None:
                on_discovered()
            if looks and not queues:
                log.warning(
                    "no-queues-found",
                    queue_prefixes=self._settings.discovery.queue_prefixes,
                    queues=self._settings.discovery.queues,
                    why="no DLQ matched discovery; check the prefixes, tags, names and region",
                )
            # Every place's DLQs and parking queue, as last surveyed (a failed survey
            # keeps the last): set again, as a place's set-up does, for the cycle's order.
            self._guards.protect_queues(self._builder.protected)
            if looks:
                await self._refresh_operator_state()
                # A replica that has just joined others already sending: not before they
                # have counted it (at most a few seconds, once).
                await self._cluster.join()
            run = _CycleBudget(started + self._settings.drain.cycle_budget_s, stopping, report)
            limiter = anyio.CapacityLimiter(self._settings.drain.queue_concurrency)
            await self._drain_everywhere(run, looks, limiter)
        except ParkingQueueMissingError as exc:
            # Not an AWS hiccup: someone has to create the queue. The daemon keeps
            # looking every cycle; `once` exits with this error's own code.
            report.errors.append(f"cycle: {exc}")
            report.fatal = exc
            log.error("parking-queue-missing", queue=exc.queue, error=str(exc))  # noqa: TRY400 - the message says it all
        except Exception as exc:  # noqa: BLE001 - a failed cycle is reported, the daemon goes on
            for leaf in leaves(exc):
                error = classify.from_exception(leaf)
                report.errors.append(f"cycle: {error}")
                # The classified error says what happened; an AWS outage's traceback does not.
                log.error("cycle-failed", error=str(error), error_class=error.error_class.value)  # noqa: TRY400
        report.duration_s = anyio.current_time() - started
        self._metrics.observe_cycle(report.duration_s, report.ok, time.time())
        return report

    async def _drain_everywhere(
        self, run: _CycleBudget, looks: list[_PlaceDrain], limiter: anyio.CapacityLimiter
    ) -> None:
        """Every DLQ of every place, side by side: SQS queues and S3 sources alike."""
        # Forget the DLQs whose look-up is due anyway (and those discovery no longer finds).
        now_s = anyio.current_time()
        self._busy = {
            arn: busy
            for arn, busy in self._busy.items()
            if now_s - busy.read_at_s < BUSY_DEPTH_MAX_AGE_S
        }
        async with anyio.create_task_group() as group:
            for look in looks:
                for queue in look.queues:
                    group.start_soon(self._drain, run, look, queue, limiter)
                for source in look.buckets:
                    group.start_soon(self._drain_bucket, run, look, source, limiter)

    async def _look(self, visit: Visit) -> _PlaceDrain:
        """One place's DLQs for this cycle, with what is needed to drain them; errors propagate."""
        setup = await self._builder.set_up(
            visit.clients,
            settings=self._places.settings_for(self._settings, visit.place),
            key=visit.place,
        )
        if not self._places.configured:
            # One place: the cluster's sync is the cycle's, once its parking queue is found.
            await self._cluster.sync()
        labels = place_labels(setup.survey.parking_arn)
        self._metrics.set_queues_discovered(labels["account"], labels["region"], len(setup.dlqs))
        return _PlaceDrain(setup, visit.clients, self._pipeline(visit.place, setup, visit.clients))

    async def _look_everywhere(self, report: CycleReport) -> list[_PlaceDrain]:
        """Every place's look, side by side; a place that fails is reported and left out.

        With one place its failures are the cycle's, as they always were.
        """
        looks, failures = await self._places.each(
            self._settings,
            self._look,
            only=self._places.to_survey(self._settings),
            catch=(Exception,),
            side_by_side=True,
        )
        for failure in failures:
            self._place_failed(failure, report)
        return [look for _, look in looks]

    def _place_failed(self, failure: PlaceFailure, report: CycleReport) -> None:
        place, exc = failure.place, failure.error
        where = {"account": place.account_id, "region": place.region}
        if isinstance(exc, ParkingQueueMissingError):
            # As with one place: this place's messages stay put until the queue exists.
            report.fatal = report.fatal or exc
            log.error("parking-queue-missing", queue=exc.queue, error=failure.why, **where)
        else:
            log.error("place-failed", error=failure.why, error_class=failure.error_class, **where)
        report.errors.append(str(failure))
        self._metrics.record_account_error(place.account_id, place.region, failure.error_class)

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

    async def _drain(
        self, run: _CycleBudget, look: _PlaceDrain, queue: QueueRef, limiter: anyio.CapacityLimiter
    ) -> None:
        # Every line about this queue (its workers' and its batches' too) names its place.
        with structlog.contextvars.bound_contextvars(**place_labels(queue.arn)):
            await self._drain_queue(run, look, queue, limiter)

    async def _drain_queue(
        self, run: _CycleBudget, look: _PlaceDrain, queue: QueueRef, limiter: anyio.CapacityLimiter
    ) -> None:
        async with limiter:
            if not run.may_go_on:
                return
            sizing, read_at_s, reused = await self._sized(look.clients, queue)
            # What the drain leaves behind, for the console's read model (drain/sightings.py).
            sighting = QueueSighting(sizing.queue, look.setup.chain)
            if sizing.empty and not self._hid_due(look, queue):
                # Most DLQs are empty most of the time: one cheap call instead of a
                # long poll per empty queue.
                self._busy.pop(queue.arn, None)
                await self._sightings.record(sighting)
                return
            # Its retention rides on every letter, for the guards' retention check.
            queue = sizing.queue
            # Its resolvers read what feeds it: learned now, not for every empty DLQ.
            await look.setup.feeds.learn(look.clients, queue)
            limit = self._settings.drain.max_messages_per_queue
            state = _QueueDrain(look, queue, limit, sighting)
            try:
                async with anyio.create_task_group() as group:
                    for _ in range(self._settings.drain.workers_per_queue):
                        group.start_soon(self._worker, run, state)
            finally:
                hidden = look.setup.hidden
                # A set-up that hides nothing has nothing to note.
                if hidden is not None:
                    with anyio.move_on_after(HIDDEN_FLUSH_S, shield=True):
                        await hidden.flush(hidden.key(queue))
            if hidden is not None:
                # What reappeared while the DLQ was drained until found empty was read in it
                # (and so was anything due when a drain began from a count showing messages).
                hidden.due(hidden.key(queue), time.time())
            # A reading of "none visible" (drained only because deferrals were due) is not
            # one to skip the next look-up on.
            if state.moved and sizing.depth is not None and not sizing.empty:
                self._busy[queue.arn] = _Busy(sizing, read_at_s)
            else:
                self._busy.pop(queue.arn, None)
                if reused:
                    # Drained without a look-up and found quiet: its gauge says so now,
                    # not after the rest that follows.
                    await self._size_up(look.clients, queue)
            await self._sightings.record(sighting)
            if state.handled.oldest_sent_s is not None:
                self._metrics.set_oldest_message_age(
                    queue, max(0.0, time.time() - state.handled.oldest_sent_s)
                )

    async def _drain_bucket(
        self, run: _CycleBudget, look: _PlaceDrain, source: QueueRef, limiter: anyio.CapacityLimiter
    ) -> None:
        """One S3 source, through the place's pipeline (drain/buckets.py lists and leases)."""
        objects = self._objects(look.clients)
        if objects is None:
            return
        report = run.report
        sighting = QueueSighting(source, look.setup.chain)

        def on_error(error: str) -> None:
            report.errors.append(error)
            log.warning("object-read-failed", error=error)

        def on_batch(decisions: list[Decision]) -> None:
            report.received += len(decisions)
            self._sightings.saw(sighting, decisions)
            report.add(decisions)

        with structlog.contextvars.bound_contextvars(**place_labels(source.arn)):
            async with limiter:
                if not run.may_go_on:
                    return
                try:
                    await BucketDrain(self._settings, self._control, objects).drain(
                        look.clients.s3,
                        source,
                        look.pipeline,
                        limit=self._settings.drain.max_messages_per_queue,
                        may_go_on=lambda: run.may_go_on,
                        on_batch=on_batch,
                        on_error=on_error,
                    )
                except Exception as exc:  # noqa: BLE001 - this source is skipped, the others go on
                    error = classify.from_exception(exc)
                    report.errors.append(f"{source.name}: {error}")
                    log.warning("list-failed", queue=source.name, error=str(error))
                await self._sightings.record(sighting)
                await self._cluster.flush()

    async def _worker(self, run: _CycleBudget, state: _QueueDrain) -> None:
        report = run.report
        while not state.done and run.may_go_on:
            if state.remaining <= 0:
                state.done = True
                return
            want = await self._batch_size(state)
            if want == 0:
                continue
            state.remaining -= want
            # The lease starts when SQS hands the messages out: take the time before asking.
            deadline = act_by(self._settings.drain.visibility_timeout_s)
            letters = await self._receive(state, want, report)
            if letters is None:
                state.done = True
                return
            fresh = [letter for letter in letters if letter.message_id not in state.handled]
            state.remaining += want - len(fresh)
            if not fresh:
                # Only messages already handled this cycle (transient failures whose
                # lease ran out); this receive hid them again, so look a little further.
                state.stale_batches += 1
                state.done = state.stale_batches >= MAX_STALE_BATCHES
                continue
            state.stale_batches = 0
            state.handled.saw(fresh)
            report.received += len(fresh)
            decisions = await state.look.pipeline.handle(state.queue, fresh, deadline)
            state.moved += sum(1 for decision in decisions if decision.outcome in DELETED_OUTCOMES)
            state.handled.settled(decisions)
            state.targets = frozenset(d.target.arn for d in decisions if d.target) or state.targets
            self._sightings.saw(state.sighting, decisions)
            report.add(decisions)
            # A breaker this batch opened or closed is written now (no call otherwise),
            # so the other replicas find it at their next sync.
            await self._cluster.flush()

    async def _batch_size(self, state: _QueueDrain) -> int:
        """How many messages to ask for next; 0 after waiting for room.

        Only what the targets of the DLQ's last batch can send soon (admission says
        how many): received and held here, the rest would wait while another replica,
        its tokens idle, found the DLQ empty.
        """
        lease_s = self._settings.drain.visibility_timeout_s
        room = self._guards.receivable(state.targets, lease_s)
        if room == 0:
            wait_s = self._guards.receivable_in_s(state.targets, lease_s)
            await anyio.sleep(min(MAX_ROOM_WAIT_S, max(MIN_ROOM_WAIT_S, wait_s)))
            # Waiting for tokens is when a share that has grown matters: re-read the
            # membership if it is due (no call otherwise).
            await self._cluster.flush()
            return 0
        return min(RECEIVE_BATCH_MAX, state.remaining, RECEIVE_BATCH_MAX if room is None else room)

    @staticmethod
    def _hid_due(look: _PlaceDrain, queue: QueueRef) -> bool:
        """Whether messages the daemon's drains hid in `queue` (deferred) are due again now:
        then the DLQ is read, whatever its count says."""
        hidden = look.setup.hidden
        return hidden is not None and hidden.due(hidden.key(queue), time.time())

    async def _sized(self, clients: AwsClients, queue: QueueRef) -> tuple[Sizing, float, bool]:
        """The DLQ's sizing for this drain, when its depth was read, and whether that was
        in an earlier cycle.

        A DLQ whose last drain moved messages, with its depth read less than
        BUSY_DEPTH_MAX_AGE_S ago, is drained again without asking: it is read in the
        next receive anyway, and busy cycles follow each other at once, so asking every
        DLQ its depth each time cost a call per DLQ per cycle (about 0.8 ms of CPU
        each, a twentieth of the steady world's CPU). Its depth gauge and retention
        are then at most that old.
        """
        busy = self._busy.get(queue.arn)
        now_s = anyio.current_time()
        if busy is not None and now_s - busy.read_at_s < BUSY_DEPTH_MAX_AGE_S:
            kept = busy.sizing
            queue = replace(queue, retention_s=kept.queue.retention_s)
            return Sizing(queue, kept.depth), busy.read_at_s, True
        return await self._size_up(clients, queue), now_s, False

    async def _size_up(self, clients: AwsClients, queue: QueueRef) -> Sizing:
        """The queue's depth (exported) and retention; an unknown depth is logged, not fatal."""
        sizing = await size_up(clients.sqs, queue)
        if sizing.depth is None:
            log.warning("depth-unknown", queue=queue.name, error=sizing.problem)
        else:
            depth = sizing.depth
            self._metrics.set_dlq_depth(queue, depth.visible, depth.in_flight, depth.delayed)
        return sizing

    async def _receive(
        self, state: _QueueDrain, want: int, report: CycleReport
    ) -> list[DeadLetter] | None:
        """The next batch, or None when the queue is empty or cannot be read."""
        try:
            letters = await receive(
                state.look.clients.sqs,
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
