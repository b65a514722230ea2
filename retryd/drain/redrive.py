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

Durability: each step's per-message results are written to the backend before
the job moves on, and the job's ledger owner is `redrive-<job id>`: a resumed
job skips what it settled, and a message it had claimed but not committed when
it died is resent under the same key and attempt (the target can deduplicate
on it), never as a new attempt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import anyio
import structlog

from retryd import classify
from retryd.admission import Defer, DeferReason, Done, Go, Guards, Hold, Park
from retryd.arns import Arn, queue_name
from retryd.aws import AwsClients
from retryd.cluster import Cluster
from retryd.cluster.factory import admit_in_cluster
from retryd.control.deferrals import deferral_queue, forget, hidden_in
from retryd.control.jobs import (
    CANCELLED_REASON,
    Job,
    JobState,
    JobStore,
    MessageResult,
    latest_results,
    tally,
)
from retryd.control.pauses import load_pauses
from retryd.control.store import ControlStore
from retryd.discovery.feeds import FeedCache
from retryd.discovery.queues import discover_queues
from retryd.discovery.survey import RECEIVE_BATCH_MAX, peek, read_depth, release
from retryd.drain.redrive_select import Selector, as_if_in_source, source_names
from retryd.ledger import Ledger
from retryd.metrics import Metrics
from retryd.models import (
    DeadLetter,
    ErrorClass,
    ParkReason,
    QueueRef,
    Target,
    Unresolvable,
    queue_ref_from_url,
)
from retryd.models import Job as Work
from retryd.resolve import ResolverChain, build_chain
from retryd.settings import HookRule, Settings
from retryd.settle.parking import Parking, ParkRequest
from retryd.targets import Delivery, TargetRouter
from retryd.targets.router import PickClients
from retryd.targets.sender import ALREADY_RESUBMITTED, Sender

log = structlog.get_logger("retryd.redrive")

PARKING_SOURCE = "parking"
DEFAULT_RAMP = (1, 5, 25, 100)
BATCH_AFTER_RAMP = 100
# Messages read per source queue when planning, and per step when executing.
DEFAULT_MAX_MESSAGES = 1000
# How long settling a step (deletes, hand-backs, the job's write) may hold off a stop.
SETTLE_SHIELD_S = 20.0
# Longest detail written to a log line.
LOG_DETAIL_MAX_CHARS = 1024
# Time kept back from each lease for the deletes.
LEASE_MARGIN_S = 5.0

# Outcomes of a redriven message (the job's counts and the metric's label).
RESUBMITTED = "resubmitted"
PARKED = "parked"
DEFERRED = "deferred"
REFUSED = "refused"
FAILED = "failed"
OUTCOMES = (RESUBMITTED, PARKED, DEFERRED, REFUSED, FAILED)
TRANSIENT_ERROR = "transient-error"
REDIRECT_TYPE = "redirect-type-mismatch"
# What the plan calls the outcome the execution will report.
PLAN_ACTION = {
    RESUBMITTED: "resubmit",
    PARKED: "park",
    DEFERRED: "defer",
    REFUSED: "refuse",
    FAILED: "fail",
}
# Outcomes a resumed job does not try again: done (resubmitted, parked), or refused
# by a guard that would refuse it again. A deferral or a failure is tried again.
FINAL = frozenset({RESUBMITTED, PARKED, REFUSED})


class RedriveInputError(ValueError):
    """A redrive that cannot start as asked (an unknown queue, a refused --to)."""


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
    resolved: Work | Unresolvable


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


class _What(NamedTuple):
    """A message's result: outcome, reason, detail."""

    outcome: str
    reason: str = ""
    detail: str = ""


@dataclass
class _Step:
    results: list[MessageResult] = field(default_factory=list)
    deletes: dict[str, list[tuple[QueueRef, str]]] = field(default_factory=dict)
    releases: dict[str, tuple[QueueRef, dict[str, str]]] = field(default_factory=dict)
    # Keys sent, to recognise canaries that come back.
    sent_keys: set[str] = field(default_factory=set)
    refails: int = 0
    # Selected but not tried (the rate limit ran out): the next step takes them again.
    retry: set[str] = field(default_factory=set)

    def delete(self, picked: Picked) -> None:
        self.deletes.setdefault(picked.queue.url, []).append(
            (picked.queue, picked.letter.receipt_handle)
        )

    def hand_back(self, queue: QueueRef, message_id: str, handle: str) -> None:
        self.releases.setdefault(queue.url, (queue, {}))[1][message_id] = handle


def _source_name(source: str) -> str:
    """A source's queue name, whether given as a name, a URL or an SQS ARN."""
    if source.startswith("arn:"):
        try:
            return Arn.parse(source).resource
        except ValueError:
            return source
    return queue_name(source)


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
        self._ledger = ledger
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
        self._chain: ResolverChain | None = None
        self._parking: Parking | None = None
        self._dlqs: list[QueueRef] = []
        self._sources: list[QueueRef] = []
        self._by_name: dict[str, QueueRef] = {}
        self._to: Target | None = None

    def _deferrals(self, queue: QueueRef) -> str:
        return deferral_queue(queue, qualified=self._qualified_deferrals)

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
        self._parking = await Parking.locate(
            sqs, self._settings.parking.queue, self._settings.parking.detail_max_bytes
        )
        parking_ref = queue_ref_from_url(self._parking.queue_url, sqs.meta.region_name)
        self._dlqs = await discover_queues(
            sqs, self._settings.discovery, self._settings.parking.queue
        )
        self._by_name = {queue.name: queue for queue in self._dlqs}
        feeds = FeedCache.for_settings(self._settings)
        await feeds.refresh_if_due(self._clients, self._dlqs)
        self._chain = build_chain(self._hooked_settings(), feeds)
        self._guards.protect_queues([q.arn for q in self._dlqs] + [parking_ref.arn])
        self._guards.set_pauses(await load_pauses(self._control))
        # The breakers and shares as the cluster has them, for the plan as for a step.
        await self._cluster.sync()
        if self.spec.kind == PARKING_SOURCE:
            self._sources = [parking_ref]
        else:
            unknown = [s for s in self.spec.sources if _source_name(s) not in self._by_name]
            if unknown:
                raise RedriveInputError(
                    f"not a DLQ retryd drains: {', '.join(unknown)} (see `retryd inspect`; "
                    "use --from parking for the parking queue)"
                )
            self._sources = [self._by_name[_source_name(s)] for s in self.spec.sources]
        if self.spec.to is not None:
            self._to = self._check_redirect(self.spec.to)

    def _check_redirect(self, arn: str) -> Target:
        try:
            target = Target.from_arn(arn)
        except ValueError as exc:
            raise RedriveInputError(f"--to: {exc}") from None
        if not self._guards.allows(target.arn):
            raise RedriveInputError(f"--to {arn} matches no allow_targets pattern")
        probe = Work(DeadLetter(self._sources[0], "-", "-", ""), target, "", "-")
        refused = self._guards.check(probe, budget=False)
        if refused is not None:
            raise RedriveInputError(f"--to: {refused.detail}")
        return target

    async def _source_refs(self, letters: Sequence[DeadLetter]) -> dict[str, QueueRef]:
        """The source queues parked copies name, found by name (DLQs already known)."""
        refs = dict(self._by_name)
        for name in source_names(letters) - refs.keys():
            try:
                url = (await self._clients.sqs.get_queue_url(QueueName=name))["QueueUrl"]
                refs[name] = queue_ref_from_url(url, self._clients.sqs.meta.region_name)
            except Exception:  # noqa: BLE001 - a deleted source queue: resolved by its name only
                parsed = self._sources[0].arn.rsplit(":", 1)[0]
                refs[name] = QueueRef(name, "", f"{parsed}:{name}")
        return refs

    # -- reading a step's messages --------------------------------------------------------

    def _judged(self, resolved: Work | Unresolvable) -> Work | Unresolvable:
        if self._to is None or not isinstance(resolved, Work):
            return resolved
        if resolved.target.type is not self._to.type:
            return Unresolvable(
                resolved.letter,
                ParkReason.UNSUPPORTED_TARGET,
                f"--to {self._to.arn} is a {self._to.type.value} target; this message goes "
                f"to {resolved.target.type.value} ({REDIRECT_TYPE})",
            )
        return replace(resolved, target=self._to)

    async def _scan(
        self, queue: QueueRef, want: int | None, skip: set[str], step: _Step | None
    ) -> tuple[list[Picked], PlanCounts]:
        """Receive until `want` selected (None: all, up to max_messages); unselected handed back.

        With `step`, the selected stay leased for the caller to settle; without it (a
        plan) everything is handed back.
        """
        assert self._chain is not None
        counts = PlanCounts()
        sqs = self._clients.sqs
        lease_s = self._settings.drain.visibility_timeout_s
        handles: dict[str, str] = {}
        unselected: dict[str, str] = {}
        picked: list[Picked] = []
        limit = self.spec.max_messages
        try:
            while (want is None or len(picked) < want) and len(handles) < limit:
                try:
                    response = await sqs.receive_message(
                        QueueUrl=queue.url,
                        MaxNumberOfMessages=RECEIVE_BATCH_MAX,
                        WaitTimeSeconds=self._settings.drain.receive_wait_s,
                        VisibilityTimeout=lease_s,
                        MessageAttributeNames=["All"],
                        MessageSystemAttributeNames=["All"],
                    )
                except Exception as exc:  # noqa: BLE001 - reported; the job stops this queue
                    counts.errors.append(
                        f"{queue.name}: receive failed: {classify.from_exception(exc)}"
                    )
                    break
                raw = response.get("Messages", [])
                if not raw:
                    break
                letters = [DeadLetter.from_wire(queue, message) for message in raw]
                refs = await self._source_refs(letters) if self.spec.kind == PARKING_SOURCE else {}
                first_new = len(picked)
                repeated = False
                for letter in letters:
                    if letter.message_id in handles:
                        # Its first lease ran out mid-read: only the newest handle counts.
                        repeated = True
                        self._rehandle(letter, handles, picked, unselected)
                        continue
                    handles[letter.message_id] = letter.receipt_handle
                    counts.examined += 1
                    view = as_if_in_source(letter, refs) if refs else letter
                    resolved = self._chain.resolve(view)
                    full = want is not None and len(picked) >= want
                    if (
                        full
                        or letter.message_id in skip
                        or not self.spec.selector.selects(letter, resolved)
                    ):
                        counts.unselected += 0 if full or letter.message_id in skip else 1
                        unselected[letter.message_id] = letter.receipt_handle
                        continue
                    picked.append(Picked(queue, view, self._judged(resolved)))
                await self._hooked(picked, first_new)
                if repeated:
                    break
            counts.truncated = len(handles) >= limit
        finally:
            back = dict(unselected)
            if step is None:
                back.update({p.letter.message_id: p.letter.receipt_handle for p in picked})
            with anyio.move_on_after(SETTLE_SHIELD_S, shield=True):
                counts.errors.extend(await release(sqs, queue, back, lease_s))
        return picked, counts

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

    async def _hooked(self, picked: list[Picked], start: int) -> None:
        """Run the `[[hooks]]` rules on the messages picked from `start` on, as a cycle does.

        Selection looks at the message as resolved; what is sent is what a cycle would
        send: transformed, and checked against the rule's schema.
        """
        assert self._chain is not None
        fresh = picked[start:]
        if not fresh:
            return
        hooked = await self._chain.resolve_all([item.letter for item in fresh])
        for offset, (item, resolved) in enumerate(zip(fresh, hooked, strict=True)):
            picked[start + offset] = replace(item, resolved=self._judged(resolved))

    @staticmethod
    def _rehandle(
        letter: DeadLetter,
        handles: dict[str, str],
        picked: list[Picked],
        unselected: dict[str, str],
    ) -> None:
        handles[letter.message_id] = letter.receipt_handle
        for index, item in enumerate(picked):
            if item.letter.message_id == letter.message_id:
                renewed = replace(item.letter, receipt_handle=letter.receipt_handle)
                picked[index] = replace(item, letter=renewed)
                return
        unselected[letter.message_id] = letter.receipt_handle

    # -- planning ----------------------------------------------------------------------------

    async def plan(self) -> PlanCounts:
        """What executing would do, message by message; nothing changes but brief leases."""
        total = PlanCounts()
        for queue in self._sources:
            try:
                depth = await read_depth(self._clients.sqs, queue)
                total.hidden += depth.in_flight
            except Exception as exc:  # noqa: BLE001 - the plan goes on without a depth
                total.errors.append(f"{queue.name}: depth unknown: {classify.from_exception(exc)}")
            await self._count_deferred(queue, total)
            picked, counts = await self._scan(queue, None, set(), None)
            total.examined += counts.examined
            total.unselected += counts.unselected
            total.truncated = total.truncated or counts.truncated
            total.errors.extend(counts.errors)
            verdicts = await self._guards.assess(
                [p.resolved for p in picked], dry_run=True, operator_now=True
            )
            for verdict in verdicts:
                target, outcome, reason = _planned(verdict)
                total.groups[(target, PLAN_ACTION[outcome], reason)] += 1
        return total

    async def _count_deferred(self, queue: QueueRef, total: PlanCounts) -> None:
        if self.spec.kind == PARKING_SOURCE:
            return
        entries = await hidden_in(self._control, self._deferrals(queue))
        if not entries:
            return
        total.deferred += len(entries)
        first, last = entries[0].until_s, entries[-1].until_s
        if total.reappear_s is not None:
            first, last = min(first, total.reappear_s[0]), max(last, total.reappear_s[1])
        total.reappear_s = (first, last)

    async def _unhide(self) -> int:
        """Make the messages retryd deferred in the source DLQs visible now; how many."""
        if self.spec.kind == PARKING_SOURCE:
            return 0
        count = 0
        for queue in self._sources:
            entries = await hidden_in(self._control, self._deferrals(queue))
            if not entries:
                continue
            handles = {entry.message_id: entry.receipt_handle for entry in entries}
            problems = await release(self._clients.sqs, queue, handles)
            for problem in problems:
                # A handle gone stale (the message came back and was received again).
                log.info("redrive-unhide-skipped", queue=queue.name, problem=problem)
            count += len(handles) - len(problems)
            await forget(self._control, self._deferrals(queue), handles)
        if count:
            log.info("redrive-unhidden", messages=count, why="retryd had deferred them")
        return count

    # -- executing ----------------------------------------------------------------------------

    async def execute(
        self,
        job: Job,
        jobs: JobStore,
        *,
        on_step: Callable[[Job, Sequence[MessageResult]], None] | None = None,
    ) -> Job:
        """Run (or resume) `job` to its end, a canary stop, or a cancellation (saved either way)."""
        latest = latest_results(await jobs.results(job))
        # Within one run every message is tried once; a resume tries again what did
        # not end (a failure, a deferral): the fix may be live now.
        settled = {m for m, result in latest.items() if result.outcome in FINAL}
        job.state = JobState.RUNNING
        job.stop_reason = ""
        await jobs.save(job)
        await self._unhide()
        try:
            while True:
                if (await jobs.load(job.id)).state is JobState.CANCELLED:
                    # `retryd jobs cancel` from elsewhere: stop before the next step.
                    job.state = JobState.CANCELLED
                    job.stop_reason = CANCELLED_REASON
                    break
                want = self.spec.step_size(job.step)
                step = _Step()
                # Once a step, as a cycle does: heartbeat, shares, breakers.
                await self._cluster.sync()
                picked = await self._pick(want, settled, step)
                if not picked:
                    job.state = JobState.DONE
                    break
                await self._run_step(picked, step)
                with anyio.CancelScope(shield=True):
                    # A breaker this step opened reaches the daemon's replicas now.
                    await self._cluster.flush()
                    # Sent is sent: the step's accounting must not be cut short.
                    await self._settle_queues(step)
                    await jobs.add_results(job, step.results)
                    latest.update(latest_results(step.results))
                    tally(job, latest)
                    settled |= {result.message_id for result in step.results}
                    job.step += 1
                    await jobs.save(job)
                if on_step is not None:
                    on_step(job, step.results)
                canary = job.step <= len(self.spec.ramp)
                if canary and self.spec.canary_wait_s > 0:
                    await anyio.sleep(self.spec.canary_wait_s)
                if canary:
                    refails = step.refails + await self._returned(step.sent_keys)
                    if refails > self.spec.max_refail:
                        job.state = JobState.STOPPED
                        job.stop_reason = (
                            f"step {job.step} ({len(picked)} message(s)): {refails} canary "
                            f"failure(s), more than --max-refail {self.spec.max_refail}; "
                            "the rest is left where it was"
                        )
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

    async def _pick(self, want: int, settled: set[str], step: _Step) -> list[Picked]:
        picked: list[Picked] = []
        for queue in self._sources:
            more, counts = await self._scan(queue, want - len(picked), settled, step)
            for error in counts.errors:
                log.warning("redrive-read-problem", error=error)
            picked.extend(more)
            if len(picked) >= want:
                break
        return picked

    async def _run_step(self, picked: Sequence[Picked], step: _Step) -> None:
        by_id = {p.letter.message_id: p for p in picked}
        verdicts = await self._guards.assess([p.resolved for p in picked], operator_now=True)
        lease_s = self._settings.drain.visibility_timeout_s
        act_by = anyio.current_time() + lease_s - min(LEASE_MARGIN_S, lease_s * 0.2)
        sent = await self._sender.send([v for v in verdicts if isinstance(v, Go)], act_by)
        for verdict in verdicts:
            if not isinstance(verdict, Go):
                self._settle_verdict(step, by_id[_message_id(verdict)], verdict)
        for work in sent.already_done:
            item = by_id[work.letter.message_id]
            self._settle(step, item, _What(RESUBMITTED, ALREADY_RESUBMITTED), work, delete=True)
        for defer in sent.deferred:
            item = by_id[defer.job.letter.message_id]
            if defer.reason is DeferReason.RATE_LIMITED:
                # Not tried: handed back and taken again by a later step.
                step.retry.add(item.letter.message_id)
            self._settle(step, item, _What(DEFERRED, defer.reason.value, defer.detail))
        for hold in sent.held:
            item = by_id[hold.job.letter.message_id]
            self._settle(step, item, _What(FAILED, hold.reason, hold.detail))
        to_park = [
            parked
            for delivery in sent.deliveries
            if (parked := self._settle_delivery(step, by_id, delivery)) is not None
        ]
        if to_park:
            await self._park(step, to_park)
        step.results = [r for r in step.results if r.message_id not in step.retry]

    def _settle_verdict(
        self, step: _Step, item: Picked, verdict: Park | Defer | Done | Hold
    ) -> None:
        if isinstance(verdict, Done):
            self._settle(
                step, item, _What(RESUBMITTED, ALREADY_RESUBMITTED), verdict.job, delete=True
            )
        elif isinstance(verdict, Park):
            self._settle(step, item, _What(REFUSED, verdict.reason.value, verdict.detail))
        elif isinstance(verdict, Defer):
            self._settle(step, item, _What(DEFERRED, verdict.reason.value, verdict.detail))
        else:
            self._settle(step, item, _What(FAILED, verdict.reason, verdict.detail))

    def _settle_delivery(
        self, step: _Step, by_id: dict[str, Picked], delivery: Delivery
    ) -> tuple[Picked, Work, str] | None:
        """Settle one target answer; a permanent refusal of a DLQ message comes back to park."""
        work = delivery.job
        item = by_id[work.letter.message_id]
        error = delivery.error
        if error is None:
            step.sent_keys.add(work.key)
            self._settle(step, item, _What(RESUBMITTED), work, delete=True)
            return None
        step.refails += 1
        if error.error_class is ErrorClass.PERMANENT and self.spec.kind != PARKING_SOURCE:
            return (item, work, str(error))
        # A parked copy refused again stays parked, as it was; a transient failure
        # stays where it is for the daemon (a DLQ) or the next redrive (parking).
        reason = (
            ParkReason.TARGET_REJECTED.value
            if error.error_class is ErrorClass.PERMANENT
            else TRANSIENT_ERROR
        )
        self._settle(step, item, _What(FAILED, reason, str(error)), work)
        return None

    async def _park(self, step: _Step, items: Sequence[tuple[Picked, Work, str]]) -> None:
        assert self._parking is not None
        reason = ParkReason.TARGET_REJECTED.value
        errors = await self._parking.park(
            [ParkRequest(p.letter, reason, detail, w.next_attempt) for p, w, detail in items]
        )
        for (item, work, detail), error in zip(items, errors, strict=True):
            if error is None:
                self._settle(step, item, _What(PARKED, reason, detail), work, delete=True)
            else:
                what = _What(FAILED, "parking-failed", f"{detail}; {error}")
                self._settle(step, item, what, work)

    def _settle(
        self,
        step: _Step,
        item: Picked,
        what: _What,
        work: Work | None = None,
        *,
        delete: bool = False,
    ) -> None:
        """Record one message's result; delete it (its copy is safe) or hand it back."""
        if delete:
            step.delete(item)
        else:
            step.hand_back(item.queue, item.letter.message_id, item.letter.receipt_handle)
        resolved = work if work is not None else item.resolved
        target = resolved.target.arn if isinstance(resolved, Work) else ""
        key = resolved.key if isinstance(resolved, Work) else ""
        step.results.append(
            MessageResult(
                item.letter.message_id, what.outcome, what.reason, target, key, what.detail
            )
        )
        fields = {
            "kind": self.spec.kind,
            "queue": item.queue.name,
            "message_id": item.letter.message_id,
            "target": target or None,
            "outcome": what.outcome,
            "reason": what.reason or None,
            "detail": what.detail[:LOG_DETAIL_MAX_CHARS] or None,
        }
        if what.outcome == RESUBMITTED:
            log.info("redrive-" + what.outcome, **fields)
        else:
            log.warning("redrive-" + what.outcome, **fields)

    async def _settle_queues(self, step: _Step) -> None:
        sqs = self._clients.sqs
        for entries in step.deletes.values():
            queue = entries[0][0]
            for start in range(0, len(entries), 10):
                chunk = entries[start : start + 10]
                try:
                    response = await sqs.delete_message_batch(
                        QueueUrl=queue.url,
                        Entries=[
                            {"Id": str(i), "ReceiptHandle": h} for i, (_, h) in enumerate(chunk)
                        ],
                    )
                    failed: list[Mapping[str, object]] = list(response.get("Failed", []))
                except Exception as exc:  # noqa: BLE001 - the copy is safe; the original reappears
                    failed = [{"Id": "*", "Message": str(classify.from_exception(exc))}]
                for failure in failed:
                    self._metrics.record_delete_failure(queue)
                    log.warning("delete-failed", queue=queue.name, failure=failure)
        for queue, handles in step.releases.values():
            for problem in await release(
                sqs, queue, handles, self._settings.drain.visibility_timeout_s
            ):
                log.warning("redrive-hand-back-failed", queue=queue.name, problem=problem)

    async def _returned(self, keys: set[str]) -> int:
        """Canary keys found back in a DLQ retryd drains (their leases handed back at once)."""
        if not keys or self._chain is None:
            return 0
        found: set[str] = set()
        for queue in self._dlqs:
            async with peek(
                self._clients.sqs,
                queue,
                max_messages=self.spec.max_messages,
                wait_s=0,
            ) as seen:
                for letter in seen.letters:
                    resolved = self._chain.resolve(letter)
                    if isinstance(resolved, Work) and resolved.key in keys:
                        found.add(resolved.key)
        if found:
            log.warning("redrive-canaries-returned", keys=sorted(found)[:10], count=len(found))
        return len(found)


def _message_id(verdict: Park | Defer | Done | Hold) -> str:
    return verdict.letter.message_id if isinstance(verdict, Park) else verdict.job.letter.message_id


def _planned(verdict: Go | Park | Defer | Done | Hold) -> tuple[str, str, str]:
    """(target, outcome, reason) that executing would report for this verdict."""
    if isinstance(verdict, Park):
        target = verdict.job.target.arn if verdict.job else ""
        return target, REFUSED, verdict.reason.value
    target = verdict.job.target.arn
    if isinstance(verdict, Go):
        return target, RESUBMITTED, ""
    if isinstance(verdict, Done):
        return target, RESUBMITTED, ALREADY_RESUBMITTED
    if isinstance(verdict, Defer):
        return target, DEFERRED, verdict.reason.value
    return target, FAILED, verdict.reason


def outcome_of(action: str) -> str:
    """The execution outcome a plan's action stands for."""
    return {value: key for key, value in PLAN_ACTION.items()}[action]
