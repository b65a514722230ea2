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

The source is one or more DLQs (S3 sources, `bucket/prefix`, among them: each
object a message whose id is its key), or the parking queue: a parked copy is
resolved as if it were still in its `retryd.source-queue`. SQS cannot receive
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

import anyio
import structlog

from retryd import classify
from retryd.admission.guards import Guards
from retryd.aws import AwsClients
from retryd.cluster.base import Cluster
from retryd.control.jobs import (
    CANCELLED_REASON,
    JOB_HEARTBEAT_S,
    JobState,
    JobStore,
    JobTakenOverError,
    MessageResult,
    RedriveJob,
    latest_results,
    new_runner,
)
from retryd.control.pauses import load_pauses
from retryd.control.store import ControlError, ControlStore
from retryd.discovery.survey import read_depth
from retryd.drain.operator_pipeline import OperatorPipeline, Step
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
from retryd.drain.setup import PlaceBuilder, Purpose, admit_live
from retryd.heartbeat import Leasing
from retryd.ledger import Ledger
from retryd.metrics import Metrics
from retryd.models import DeadLetter, Decision, Job, QueueRef, SourceKind, Target, Unresolvable
from retryd.settings import Settings
from retryd.settle import outcome
from retryd.settle.objects import Objects
from retryd.targets import TargetRouter
from retryd.targets.router import PickClients

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
        # This process's run of a job: one token, so the job it takes stays its own.
        self.runner = new_runner()
        self._qualified_deferrals = qualified_deferrals
        self._clients = clients
        self._metrics = metrics
        self._control = control
        self.spec = spec
        # Built as a cycle builds them, and shared the same way (one more replica).
        admission = admit_live(
            settings, home or clients, ledger=ledger, metrics=metrics, member=member
        )
        self._guards: Guards = admission.guards
        self._cluster: Cluster = admission.cluster
        # The place as a cycle sees it, looked at once, with the job's --transform first.
        self._builder = PlaceBuilder(
            settings,
            Purpose.OPERATOR,
            self._guards,
            router=TargetRouter(clients, settings.drain.target_concurrency, pick=pick),
            transform=spec.transform,
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
        place = await self._builder.set_up(self._clients)
        # S3 sources are DLQs to an operator as to the cycle (read only with an S3 client).
        objects = Objects.of(
            self._clients.s3, self._guards.ledger, settle=self._settings.discovery.s3_settle
        )
        dlqs = place.dlqs + (place.buckets if objects is not None else [])
        self._guards.set_pauses(await load_pauses(self._control))
        # The breakers and shares as the cluster has them, for the plan as for a step.
        await self._cluster.sync()
        by_name = {queue.name: queue for queue in dlqs}
        if self.spec.kind == PARKING_SOURCE:
            sources = [place.parking_queue]
        else:
            unknown = [s for s in self.spec.sources if source_name(s) not in by_name]
            if unknown:
                raise SourceNotDrainedError(
                    f"not a DLQ retryd drains: {', '.join(unknown)} (see `retryd inspect`: an "
                    "S3 source is named bucket/prefix; use --from parking for the parking queue)"
                )
            sources = [by_name[source_name(s)] for s in self.spec.sources]
        to = self._check_redirect(self.spec.to, sources[0]) if self.spec.to is not None else None
        self._read = Sources(
            self._settings,
            self._clients,
            self._control,
            self.spec,
            place.chain,
            dlqs,
            sources,
            to,
            self._qualified_deferrals,
            objects,
        )
        self._pipeline = OperatorPipeline(
            kind=self.spec.kind,
            lease_s=self._settings.drain.visibility_timeout_s,
            sqs=self._clients.sqs,
            chain=place.chain,
            guards=place.guards,
            sender=place.live_sender(),
            parking=place.parking,
            metrics=self._metrics,
            leasing=Leasing.for_settings(self._settings),
            objects=objects,
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
            # S3 keeps no count of a prefix's objects, nor any in flight.
            if queue.kind is SourceKind.SQS:
                try:
                    depth = await read_depth(self._clients.sqs, queue)
                    total.hidden += depth.in_flight
                except Exception as exc:  # noqa: BLE001 - the plan goes on without a depth
                    why = classify.from_exception(exc)
                    total.errors.append(f"{queue.name}: depth unknown: {why}")
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
        # Refused (JobBusyError) while another live process runs the job.
        await jobs.take(job, self.runner)
        ended: RedriveJob | None = None
        error: BaseException | None = None
        async with anyio.create_task_group() as beats:
            beats.start_soon(_keep_alive, job, jobs)
            try:
                ended = await self._run(job, jobs, latest, settled, on_step)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, as it was
                # Raised outside the group, so callers see it and not an ExceptionGroup.
                error = exc
            finally:
                beats.cancel_scope.cancel()
        if error is not None:
            raise error
        assert ended is not None
        return ended

    async def _run(
        self,
        job: RedriveJob,
        jobs: JobStore,
        latest: dict[str, MessageResult],
        settled: set[str],
        on_step: Callable[[RedriveJob, Sequence[MessageResult]], None] | None,
    ) -> RedriveJob:
        await self._sources.unhide()
        # A step whose results are not stored yet: a signal in the middle of it still
        # stores what it settled (deleted messages included) before the job stops.
        unstored: Step | None = None
        try:
            while True:
                # JobTakenOverError once another process has taken the job over.
                if (await jobs.load_as_runner(job)).state is JobState.CANCELLED:
                    # `retryd jobs cancel` from elsewhere: stop before the next step.
                    job.state = JobState.CANCELLED
                    job.stop_reason = CANCELLED_REASON
                    break
                # Once a step, as a cycle does: heartbeat, shares, breakers.
                await self._cluster.sync()
                # Before its first send, as a cycle's: once the daemon's replicas count it.
                await self._cluster.join()
                picked = await self._pick(self.spec.step_size(job.step), settled)
                if not picked:
                    job.state = JobState.DONE
                    break
                step = unstored = Step()
                await self._run_step(picked, step)
                unstored = None
                with anyio.CancelScope(shield=True):
                    # A breaker this step opened reaches the daemon's replicas now.
                    await self._cluster.flush()
                    # Sent is sent: the step's accounting must not be cut short.
                    await step.store(job, jobs, latest, settled)
                    job.step += 1
                    await jobs.save(job)
                if on_step is not None:
                    on_step(job, step.results)
                if await self._canaries_failed(job, len(picked), step):
                    break
        except JobTakenOverError:
            # The job is its new runner's now: nothing of this run is written back.
            raise
        except BaseException:
            job.state = JobState.STOPPED
            job.stop_reason = job.stop_reason or "interrupted; `retryd redrive --resume` goes on"
            with anyio.CancelScope(shield=True):
                if unstored is not None:
                    # The interrupted step stays the current one: a resume repeats it,
                    # skipping what it settled.
                    await unstored.store(job, jobs, latest, settled)
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
        if self.spec.canary_wait_s > 0 and step.sent_keys:
            # Only a copy that went out can come back; a step that sent nothing (each
            # message refused or deferred) has no canary to wait for.
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

    async def _run_step(self, picked: Sequence[Picked], step: Step) -> None:
        """Send one step through the pipeline, queue by queue, into `step`: its results, keys
        and refails. Cut short (a signal), `step` still holds what was settled."""
        assert self._pipeline is not None
        pipeline = self._pipeline
        pipeline.step = step
        by_queue: dict[str, list[Picked]] = {}
        for item in picked:
            by_queue.setdefault(item.queue.url, []).append(item)
        try:
            for items in by_queue.values():
                letters, resolved = [p.letter for p in items], [p.resolved for p in items]
                # Settled within the lease of the earliest read among them (each message's
                # deadline is taken at the receive that read it).
                deadline = min(item.act_by for item in items)
                # An S3 source's objects stay leased (renewed) until settled, then released.
                keys = [letter.message_id for letter in letters]
                async with self._sources.holding(items[0].queue, keys):
                    await pipeline.handle(items[0].queue, letters, deadline, resolved)
        finally:
            step.account(picked)


async def _keep_alive(job: RedriveJob, jobs: JobStore) -> None:
    """Touch the job while it runs, so a resume elsewhere sees it alive and does not take
    it over; a canary wait or a long step is covered too. A failed touch is only logged:
    the job's own next write says whether the store is usable."""
    while True:
        await anyio.sleep(JOB_HEARTBEAT_S)
        try:
            if not await jobs.touch(job):
                log.warning("redrive-job-taken-over", job=job.id)
                return
        except ControlError as exc:
            log.warning("redrive-job-heartbeat-failed", job=job.id, error=str(exc))
