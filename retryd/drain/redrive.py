"""Redrive jobs: an operator's "send these back now", with a canary ramp that stops itself.

A redrive goes the cycle's way — resolve, admission, ledger claim, send,
settle — with three overrides, each the operator's explicit decision:

- **now**: backoff, the age limit and the retention rule do not hold a redrive
  back (`Guards.assess(operator_now=True)`);
- **one more attempt**: a message whose attempt budget is spent gets exactly one
  more attempt, counted as every attempt is (the ledger's count goes up by one).
  If it fails again it comes back to its DLQ past the budget, where the daemon
  parks it at once as `attempts-exhausted`: retryd never retries it by itself
  again, so no redrive can start a loop — every further try is another
  operator's command;
- **redirect**: `--to ARN` sends the selection to another target of the same
  type (an alias, a fixed version, a replacement queue), which must be on the
  allowlist and may not be a queue retryd drains or parks into.

Every safety guard still holds: the allowlist, the loop guard, pauses, the
ledger's claims (a message the daemon resubmits at the same moment is sent
once), the circuit breakers and the rate limits. On the DynamoDB ledger the job
is one more replica of the cluster (retryd.cluster), as the daemon's replicas
are to each other: it finds open the breakers they opened, takes a share of each
target's rate beside theirs (so together they stay within `per_s`), and leaves
when it ends (`leave`).

The source is one or more DLQs, or the parking queue: a parked copy is resolved
as if it were still in its `retryd.source-queue`. SQS cannot receive
selectively, so each step receives, keeps what the selectors select, and hands
the rest back at once (visibility 0) when the step's read ends. Whatever the job
does not finish with (a deferral, a transient failure, a permanent refusal of a
parked copy) is handed back the same way: nothing is held past its step.

A step is a slice of the ramp (1, 5, 25, 100 by default; then batches of
BATCH_AFTER_RAMP at the rate limit). After each ramp step the job waits
`canary_wait_s` and judges its canaries: synchronous errors, and canary keys
that came back into a DLQ retryd drains. Past `max_refail` it stops itself,
says why, and leaves the rest where it was.

The steps are the cycle's Pipeline (drain/batch.py) with its overrides
(`OperatorPipeline`): what happens to a message is decided by settle.outcome,
deleted and handed back through retryd.leases; the sources are read by
drain/redrive_read.py, and the spec and plan counts are drain/redrive_spec.py's.

Durability: each step's per-message results are written to the backend before
the job moves on, and the job's ledger owner is `redrive-<job id>`: a resumed
job skips what it settled, and a message it had claimed but not committed when
it died is resent under the same key and attempt (the target can deduplicate
on it), never as a new attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import anyio
import structlog

from retryd import classify, leases
from retryd.admission import DeferReason, Guards
from retryd.aws import AwsClients
from retryd.cluster import Cluster
from retryd.cluster.factory import admit_in_cluster
from retryd.control.jobs import (
    CANCELLED_REASON,
    JobState,
    JobStore,
    MessageResult,
    RedriveJob,
    latest_results,
    tally,
)
from retryd.control.pauses import load_pauses
from retryd.control.store import ControlStore
from retryd.discovery.feeds import FeedCache
from retryd.discovery.survey import read_depth
from retryd.drain.operator_pipeline import OperatorPipeline, Step, result_of
from retryd.drain.redrive_read import Sources
from retryd.drain.redrive_spec import (
    BATCH_AFTER_RAMP,
    DEFAULT_MAX_MESSAGES,
    DEFAULT_RAMP,
    FINAL,
    PARKING_SOURCE,
    PLAN_ACTION,
    Picked,
    PlanCounts,
    RedriveInputError,
    SourceNotDrainedError,
    Spec,
    outcome_of,
    source_name,
)
from retryd.drain.setup import set_up_place
from retryd.ledger import Ledger
from retryd.metrics import Metrics
from retryd.models import DeadLetter, Decision, Job, Outcome, QueueRef, Target, Unresolvable
from retryd.resolve import build_chain
from retryd.settings import HookRule, Settings
from retryd.settle import outcome
from retryd.targets import TargetRouter
from retryd.targets.router import PickClients
from retryd.targets.sender import Sender

__all__ = [
    "BATCH_AFTER_RAMP",
    "DEFAULT_MAX_MESSAGES",
    "DEFAULT_RAMP",
    "PARKING_SOURCE",
    "PLAN_ACTION",
    "PlanCounts",
    "Redrive",
    "RedriveInputError",
    "SourceNotDrainedError",
    "Spec",
    "outcome_of",
]

if TYPE_CHECKING:
    pass

log = structlog.get_logger("retryd.redrive")

# Longest detail written to a log line.
LOG_DETAIL_MAX_CHARS = 1024


class Redrive:
    """One redrive's world: sources, resolvers, guards and sender, built once."""

    def __init__(
        self,
        settings: Settings,
        clients: AwsClients,
        *,
        ledger: Ledger | None,
        metrics: Metrics,
        control: ControlStore,
        spec: Spec,
        pick: PickClients | None = None,
        qualified_deferrals: bool = False,
        member: str | None = None,
        home: AwsClients | None = None,
    ) -> None:
        """`clients` are those of the place the sources are in; `pick` chooses a target's;
        `qualified_deferrals` (with [[accounts]]) finds deferred messages by queue ARN;
        `home` (default: `clients`) are the clients of the place the cluster item is in."""
        self._settings = settings
        self._qualified_deferrals = qualified_deferrals
        self._clients = clients
        self._metrics = metrics
        self._control = control
        self.spec = spec
        # Built as a cycle builds them, and shared the same way: a redrive during an
        # incident must neither hit a target the daemon found broken nor add its own
        # rate on top of the daemon's.
        admission = admit_in_cluster(
            settings, home or clients, ledger=ledger, metrics=metrics, me=member
        )
        self._guards: Guards = admission.guards
        self._cluster: Cluster = admission.cluster
        # Admission (the guards) owns the rate limits and the ledger claims, as in a cycle.
        self._sender = Sender(
            targets=TargetRouter(clients, settings.drain.target_concurrency, pick=pick),
            guards=self._guards,
        )
        self._read: Sources | None = None
        self._pipeline: OperatorPipeline | None = None

    @property
    def cluster(self) -> Cluster:
        """How this job agrees with the daemon's replicas (a single replica without DynamoDB)."""
        return self._cluster

    async def leave(self) -> None:
        """At the end (done, stopped or failed): write its breaker moves, leave the cluster."""
        with anyio.CancelScope(shield=True):
            await self._cluster.flush()
            await self._cluster.leave()

    # -- setting up ----------------------------------------------------------------------

    async def prepare(self) -> None:
        """Find the queues, learn the feeds and pauses; RedriveInputError for a bad spec."""
        sqs = self._clients.sqs
        place = await set_up_place(sqs, self._settings)
        parking, parking_ref, dlqs = place.parking, place.parking_queue, place.survey.dlqs
        feeds = FeedCache.for_settings(self._settings)
        await feeds.refresh_if_due(self._clients, dlqs)
        chain = build_chain(self._hooked_settings(), feeds)
        self._guards.protect_queues(place.survey.protected)
        self._guards.set_pauses(await load_pauses(self._control))
        # The breakers and shares as the cluster has them, for the plan as for a step.
        await self._cluster.sync()
        by_name = {queue.name: queue for queue in dlqs}
        if self.spec.kind == PARKING_SOURCE:
            sources = [parking_ref]
        else:
            unknown = [s for s in self.spec.sources if source_name(s) not in by_name]
            if unknown:
                raise SourceNotDrainedError(
                    f"not a DLQ retryd drains: {', '.join(unknown)} (see `retryd inspect`; "
                    "use --from parking for the parking queue)"
                )
            sources = [by_name[source_name(s)] for s in self.spec.sources]
        to = self._check_redirect(self.spec.to, sources[0]) if self.spec.to is not None else None
        self._read = Sources(
            self._settings,
            self._clients,
            self._control,
            self.spec,
            chain,
            dlqs,
            sources,
            to,
            self._qualified_deferrals,
        )
        self._pipeline = OperatorPipeline(
            kind=self.spec.kind,
            lease_s=self._settings.drain.visibility_timeout_s,
            sqs=sqs,
            chain=chain,
            guards=self._guards,
            sender=self._sender,
            parking=parking,
            metrics=self._metrics,
        )

    def _check_redirect(self, arn: str, source: QueueRef) -> Target:
        try:
            target = Target.from_arn(arn)
        except ValueError as exc:
            raise RedriveInputError(f"--to: {exc}") from None
        if not self._guards.allows(target.arn):
            raise RedriveInputError(f"--to {arn} matches no allow_targets pattern")
        probe = Job(DeadLetter(source, "-", "-", ""), target, "", "-")
        refused = self._guards.check(probe, budget=False)
        if refused is not None:
            raise RedriveInputError(f"--to: {refused.detail}")
        return target

    def _hooked_settings(self) -> Settings:
        """The settings whose [[hooks]] the job runs: with `--transform`, that one first.

        The first matching rule wins, so a rule matching every DLQ (`queue = "*"`) put
        in front gives each selected message the job's transform; loading it is checked
        like the configured ones (ConfigError, exit 2, when it cannot be loaded).
        """
        if self.spec.transform is None:
            return self._settings
        rule = HookRule(queue="*", transform=self.spec.transform)
        return self._settings.model_copy(update={"hooks": [rule, *self._settings.hooks]})

    @property
    def _sources(self) -> Sources:
        if self._read is None:
            raise RuntimeError("Redrive.prepare() first")
        return self._read

    # -- planning ----------------------------------------------------------------------------

    async def plan(self) -> PlanCounts:
        """What executing would do, message by message; nothing changes but brief leases."""
        read = self._sources
        total = PlanCounts()
        for queue in read.sources:
            try:
                depth = await read_depth(self._clients.sqs, queue)
                total.hidden += depth.in_flight
            except Exception as exc:  # noqa: BLE001 - the plan goes on without a depth
                total.errors.append(f"{queue.name}: depth unknown: {classify.from_exception(exc)}")
            await read.count_deferred(queue, total)
            picked, counts = await read.scan(queue, None, set(), keep=False)
            total.examined += counts.examined
            total.unselected += counts.unselected
            total.truncated = total.truncated or counts.truncated
            total.errors.extend(counts.errors)
            for decision in await self.predict(picked):
                target = decision.target.arn if decision.target else ""
                total.groups[(target, PLAN_ACTION[decision.outcome], decision.reason)] += 1
        return total

    async def predict(self, picked: Sequence[Picked]) -> list[Decision]:
        """What a step would decide for `picked`, if every target and the parking queue said yes."""
        later = [p.resolved for p in picked if isinstance(p.resolved, Unresolvable)]
        decisions = [outcome.not_yet_resolvable(item) for item in later if item.retry_later]
        assessed = [
            p.resolved for p in picked if p.resolved not in later or not p.resolved.retry_later
        ]
        verdicts = await self._guards.assess(assessed, dry_run=True, operator_now=True)
        return decisions + [outcome.predict(verdict, operator=True) for verdict in verdicts]

    # -- executing ----------------------------------------------------------------------------

    async def execute(
        self,
        job: RedriveJob,
        jobs: JobStore,
        *,
        on_step: Callable[[RedriveJob, Sequence[MessageResult]], None] | None = None,
    ) -> RedriveJob:
        """Run (or resume) `job` to its end, a canary stop, or a cancellation (saved either way)."""
        latest = latest_results(await jobs.results(job))
        # Within one run every message is tried once; a resume tries again what did
        # not end (a failure, a deferral): the fix may be live now.
        settled = {m for m, result in latest.items() if result.outcome in FINAL}
        job.state = JobState.RUNNING
        job.stop_reason = ""
        await jobs.save(job)
        await self._sources.unhide()
        try:
            while True:
                if (await jobs.load(job.id)).state is JobState.CANCELLED:
                    # `retryd jobs cancel` from elsewhere: stop before the next step.
                    job.state = JobState.CANCELLED
                    job.stop_reason = CANCELLED_REASON
                    break
                # Once a step, as a cycle does: heartbeat, shares, breakers.
                await self._cluster.sync()
                picked = await self._pick(self.spec.step_size(job.step), settled)
                if not picked:
                    job.state = JobState.DONE
                    break
                step = await self._run_step(picked)
                with anyio.CancelScope(shield=True):
                    # A breaker this step opened reaches the daemon's replicas now.
                    await self._cluster.flush()
                    # Sent is sent: the step's accounting must not be cut short.
                    await jobs.add_results(job, step.results)
                    latest.update(latest_results(step.results))
                    tally(job, latest)
                    settled |= {result.message_id for result in step.results}
                    job.step += 1
                    await jobs.save(job)
                if on_step is not None:
                    on_step(job, step.results)
                if await self._canaries_failed(job, len(picked), step):
                    break
        except BaseException:
            job.state = JobState.STOPPED
            job.stop_reason = job.stop_reason or "interrupted; `retryd redrive --resume` goes on"
            with anyio.CancelScope(shield=True):
                await jobs.save(job)
            raise
        await jobs.save(job)
        log.info(
            "redrive-job-ended", job=job.id, state=job.state.value, reason=job.stop_reason or None
        )
        return job

    async def _canaries_failed(self, job: RedriveJob, picked: int, step: Step) -> bool:
        """After a ramp step: wait, count its canary failures; past --max-refail, stop the job."""
        if job.step > len(self.spec.ramp):
            return False
        if self.spec.canary_wait_s > 0:
            await anyio.sleep(self.spec.canary_wait_s)
        refails = step.refails + await self._sources.returned(step.sent_keys)
        if refails <= self.spec.max_refail:
            return False
        job.state = JobState.STOPPED
        job.stop_reason = (
            f"step {job.step} ({picked} message(s)): {refails} canary failure(s), more than "
            f"--max-refail {self.spec.max_refail}; the rest is left where it was"
        )
        return True

    async def _pick(self, want: int, settled: set[str]) -> list[Picked]:
        picked: list[Picked] = []
        for queue in self._sources.sources:
            more, counts = await self._sources.scan(queue, want - len(picked), settled, keep=True)
            for error in counts.errors:
                log.warning("redrive-read-problem", error=error)
            picked.extend(more)
            if len(picked) >= want:
                break
        return picked

    async def _run_step(self, picked: Sequence[Picked]) -> Step:
        """Send one step through the pipeline, queue by queue; its results, keys and refails."""
        assert self._pipeline is not None
        pipeline = self._pipeline
        pipeline.step = step = Step()
        by_queue: dict[str, list[Picked]] = {}
        for item in picked:
            by_queue.setdefault(item.queue.url, []).append(item)
        for items in by_queue.values():
            deadline = leases.act_by(self._settings.drain.visibility_timeout_s)
            decisions = await pipeline.handle(
                items[0].queue, [p.letter for p in items], deadline, [p.resolved for p in items]
            )
            for decision, item in zip(decisions, items, strict=True):
                if (
                    decision.outcome is Outcome.DEFERRED
                    and decision.reason == DeferReason.RATE_LIMITED
                ):
                    # Not tried: handed back and taken again by a later step.
                    continue
                step.results.append(result_of(decision, item))
        return step
