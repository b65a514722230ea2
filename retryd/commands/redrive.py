"""`retryd redrive` and `retryd jobs`: plan a redrive, run it as a durable job, resume, list.

Without `--execute` a redrive changes nothing: it reads its sources under a
short lease, judges each selected message as executing would, hands every lease
back, and prints the counts. With `--execute` it prints that plan first, then
runs the job and prints what it did, in the same terms, so the two can be
compared line by line. Every plan, execution, resume and cancel is audited.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import CollectorRegistry

from retryd import classify
from retryd.aws import AwsClients, open_clients
from retryd.commands import progress
from retryd.commands.operator_input import OperatorInputError
from retryd.commands.timeparse import iso, parse_time_s
from retryd.control import ControlError, audit, control_store
from retryd.control.jobs import JobState, JobStore, MessageResult, RedriveJob, new_job_id
from retryd.control.store import ControlStore
from retryd.drain.redrive import (
    DEFAULT_RAMP,
    PLAN_ACTION,
    PlanCounts,
    Redrive,
    RedriveInputError,
    Spec,
)
from retryd.drain.redrive_select import Selector, SelectorError
from retryd.ledger import Ledger, open_ledger
from retryd.metrics import Metrics
from retryd.models import Outcome
from retryd.places import PlaceError, Places, open_places
from retryd.settings import Settings

# Exit codes of `retryd redrive` (besides 2, bad input, and 4, no parking queue).
EXIT_OK = 0
# The job stopped itself (its canaries failed) or could not read a source.
EXIT_STOPPED = 1


@dataclass(frozen=True)
class RedriveRequest:
    """The command line of one `retryd redrive`."""

    sources: Sequence[str]
    reasons: Sequence[str] = ()
    targets: Sequence[str] = ()
    groups: Sequence[str] = ()
    since: str | None = None
    until: str | None = None
    message_ids: Sequence[str] = ()
    where: str | None = None
    to: str | None = None
    transform: str | None = None
    ramp: str | None = None
    canary_wait_s: float = 30.0
    max_refail: int = 0
    max_messages: int = 1000
    execute: bool = False
    resume: str | None = None
    output: str = "text"


def parse_ramp(text: str | None) -> tuple[int, ...]:
    """`1,5,25,100` (the default), or `none` for no canary steps."""
    if text is None:
        return DEFAULT_RAMP
    if text.strip().lower() == "none":
        return ()
    try:
        steps = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise OperatorInputError(f"--ramp {text!r}: give step sizes like 1,5,25,100") from None
    if not steps or any(step < 1 for step in steps):
        raise OperatorInputError(f"--ramp {text!r}: every step must be at least 1")
    return steps


def build_spec(request: RedriveRequest, now_s: float) -> Spec:
    """The job's spec from the command line; OperatorInputError naming what is wrong."""
    if not request.sources:
        raise OperatorInputError("say where from: --from QUEUE (repeatable) or --from parking")
    if "parking" in request.sources and len(request.sources) > 1:
        raise OperatorInputError("--from parking cannot be combined with DLQs; run two redrives")
    if request.reasons and request.sources != ["parking"]:
        raise OperatorInputError(
            "--reason selects by the reason a copy was parked: use it with --from parking"
        )
    if request.canary_wait_s < 0 or request.max_refail < 0 or request.max_messages < 1:
        raise OperatorInputError(
            "--canary-wait-s and --max-refail must be >= 0, --max-messages >= 1"
        )
    try:
        selector = Selector(
            reasons=tuple(request.reasons),
            targets=tuple(request.targets),
            groups=tuple(request.groups),
            since_s=parse_time_s(request.since, now_s) if request.since else None,
            until_s=parse_time_s(request.until, now_s) if request.until else None,
            message_ids=tuple(request.message_ids),
            where=request.where,
        )
    except (SelectorError, ValueError) as exc:
        raise OperatorInputError(str(exc)) from None
    return Spec(
        sources=tuple(request.sources),
        selector=selector,
        to=request.to,
        transform=request.transform,
        ramp=parse_ramp(request.ramp),
        canary_wait_s=request.canary_wait_s,
        max_refail=request.max_refail,
        max_messages=request.max_messages,
    )


# -- output ------------------------------------------------------------------------------


def _rows(groups: Counter[tuple[str, str, str]]) -> list[list[str]]:
    rows = [["TARGET", "ACTION", "REASON", "COUNT"]]
    for (target, action, reason), count in sorted(groups.items()):
        rows.append([target or "-", action, reason or "-", str(count)])
    return rows


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def plan_json(spec: Spec, counts: PlanCounts) -> dict[str, Any]:
    return {
        "spec": spec.to_json(),
        "examined": counts.examined,
        "selected": counts.selected,
        "unselected": counts.unselected,
        "hidden": counts.hidden,
        "deferred_hidden": counts.deferred,
        "reappear": [iso(moment) for moment in counts.reappear_s] if counts.reappear_s else None,
        "truncated": counts.truncated,
        "groups": [
            {"target": t or None, "action": a, "reason": r or None, "count": n}
            for (t, a, r), n in sorted(counts.groups.items())
        ],
        "errors": counts.errors,
    }


def render_plan(spec: Spec, counts: PlanCounts) -> str:
    lines = [
        f"redrive plan (from {', '.join(spec.sources)}): {counts.examined} examined, "
        f"{counts.selected} selected, {counts.unselected} not selected (handed back at once)"
    ]
    if counts.groups:
        lines.extend("  " + line for line in _table(_rows(counts.groups)))
    if counts.deferred and counts.reappear_s is not None:
        first, last = (iso(moment) for moment in counts.reappear_s)
        when = f"at {first}" if first == last else f"between {first} and {last}"
        lines.append(
            f"  {counts.deferred} message(s) retryd deferred are hidden until {when}; "
            "--execute hands them back first and judges them with the rest"
        )
    others = counts.hidden - counts.deferred
    if others > 0:
        lines.append(
            f"  {others} other message(s) in flight (leased by a cycle, or hidden): "
            "a redrive cannot see them until they reappear"
        )
    if counts.truncated:
        lines.append(f"  --max-messages {spec.max_messages} reached: more may be waiting")
    if spec.to:
        lines.append(f"  redirected to {spec.to}")
    lines.extend(f"  error: {error}" for error in counts.errors)
    return "\n".join(lines)


def executed_groups(job: RedriveJob) -> Counter[tuple[str, str, str]]:
    """The job's counts in the plan's terms: (target, action, reason)."""
    groups: Counter[tuple[str, str, str]] = Counter()
    for key, count in job.counts.items():
        outcome, reason, target = key.split("|", 2)
        action = PLAN_ACTION[Outcome(outcome)] if outcome in PLAN_ACTION else outcome
        groups[(target, action, reason)] += count
    return groups


def job_json(job: RedriveJob, results: Sequence[MessageResult] | None = None) -> dict[str, Any]:
    body = job.to_json()
    body["groups"] = [
        {"target": t or None, "action": a, "reason": r or None, "count": n}
        for (t, a, r), n in sorted(executed_groups(job).items())
    ]
    if results is not None:
        body["results"] = [r.to_json() for r in results]
    return body


def render_job(job: RedriveJob) -> str:
    totals = job.outcome_totals()
    counted = ", ".join(f"{count} {outcome}" for outcome, count in sorted(totals.items()))
    lines = [
        f"job {job.id} (from {', '.join(job.spec['sources'])}) {job.state.value}: "
        f"{counted or 'nothing done'}; {job.step} step(s); by {job.by or 'unknown'}"
    ]
    groups = executed_groups(job)
    if groups:
        lines.extend("  " + line for line in _table(_rows(groups)))
    if job.stop_reason:
        lines.append(f"  stopped: {job.stop_reason}")
    if job.state is JobState.STOPPED:
        lines.append(f"  go on with: retryd redrive --resume {job.id}")
    return "\n".join(lines)


def render_failures(job: RedriveJob) -> list[str]:
    rows = [["MESSAGE ID", "OUTCOME", "REASON", "DETAIL"]]
    rows.extend(
        [r.message_id, r.outcome.value, r.reason or "-", " ".join(r.detail.split())[:120]]
        for r in job.failed_results()
    )
    return ["  " + line for line in _table(rows)] if len(rows) > 1 else []


# -- the commands ------------------------------------------------------------------------


async def _who_and_store(settings: Settings, clients: AwsClients) -> tuple[str, ControlStore]:
    return await audit.caller_identity(settings.aws), control_store(settings.ledger, clients)


async def _sources_place(
    settings: Settings, places: Places, spec: Spec
) -> tuple[Settings, AwsClients]:
    """The settings and clients of the place the sources are in (`--from parking`: home)."""
    try:
        place = places.place_for_sources(spec.sources)
    except ValueError as exc:
        raise OperatorInputError(str(exc)) from None
    try:
        await places.ready(place)
    except PlaceError as exc:
        raise ControlError(f"cannot read the sources in {place}: {exc.why}") from None
    return places.settings_for(settings, place), await places.clients(place)


async def _redrive_in_place(
    settings: Settings,
    places: Places,
    spec: Spec,
    job: RedriveJob,
    *,
    ledger: Ledger,
    metrics: Metrics,
    store: ControlStore,
    home: AwsClients,
) -> Redrive:
    """The engine for `job`, in the place its sources are in: a new job and a resumed one
    are built alike, so a resume works where the job began."""
    there, clients = await _sources_place(settings, places, spec)
    return Redrive(
        there,
        clients,
        ledger=ledger,
        metrics=metrics,
        control=store,
        spec=spec,
        pick=places.for_sending if places.configured else None,
        qualified_deferrals=places.configured,
        member=_owner(job),
        home=home,
    )


async def run_redrive(settings: Settings, request: RedriveRequest) -> int:
    """The `redrive` command."""
    if request.resume is not None:
        return await _resume(settings, request.resume, request.output)
    spec = build_spec(request, time.time())
    async with open_places(settings) as places:
        # The operator state, the audit and the ledger are the home place's.
        home = await places.home_clients()
        who, store = await _who_and_store(settings, home)
        metrics = Metrics(CollectorRegistry())
        job = RedriveJob(new_job_id(), spec.kind, spec.to_json(), who)
        async with open_ledger(settings.ledger, home, metrics, owner=_owner(job)) as ledger:
            redrive = await _redrive_in_place(
                settings, places, spec, job, ledger=ledger, metrics=metrics, store=store, home=home
            )
            try:
                return await _plan_and_execute(
                    settings, request, redrive, job=job, store=store, who=who
                )
            finally:
                await redrive.leave()


async def _plan_and_execute(
    settings: Settings,
    request: RedriveRequest,
    redrive: Redrive,
    *,
    job: RedriveJob,
    store: Any,
    who: str,
) -> int:
    """Plan, and execute when asked; the exit code."""
    spec = redrive.spec
    try:
        await redrive.prepare()
        counts = await redrive.plan()
    except RedriveInputError as exc:
        raise OperatorInputError(str(exc)) from None
    except (BotoCoreError, ClientError) as exc:
        raise ControlError(f"cannot read the sources: {classify.from_exception(exc)}") from exc
    _print(render_plan(spec, counts), plan_json(spec, counts), request.output, "plan")
    if not request.execute:
        await audit.record(
            store,
            who=who,
            action="redrive-plan",
            what=spec.to_json(),
            count=counts.selected,
        )
        if request.output == "text":
            print("nothing changed; add --execute to do it")
        return EXIT_STOPPED if counts.errors else EXIT_OK
    jobs = JobStore(store, settings.ledger.ttl_s)
    # Audited as it starts too: a job whose process is killed still left a record.
    await _audit_job(store, who, "redrive-execute", job, outcome="started")
    try:
        job = await _execute(redrive, job, jobs, counts.selected, request.output)
    finally:
        await _audit_job(store, who, "redrive-execute", job)
    _print(render_job(job), job_json(job), request.output, "job")
    return EXIT_OK if job.state is JobState.DONE else EXIT_STOPPED


async def _resume(settings: Settings, job_id: str, output: str) -> int:
    async with open_places(settings) as places:
        home = await places.home_clients()
        who, store = await _who_and_store(settings, home)
        jobs = JobStore(store, settings.ledger.ttl_s)
        job = await _load(jobs, job_id)
        if job.state in (JobState.DONE, JobState.CANCELLED):
            raise OperatorInputError(f"job {job_id} is {job.state.value}; nothing to resume")
        spec = Spec.from_json(job.spec)
        metrics = Metrics(CollectorRegistry())
        async with open_ledger(settings.ledger, home, metrics, owner=_owner(job)) as ledger:
            redrive = await _redrive_in_place(
                settings, places, spec, job, ledger=ledger, metrics=metrics, store=store, home=home
            )
            try:
                try:
                    await redrive.prepare()
                except RedriveInputError as exc:
                    raise OperatorInputError(str(exc)) from None
                try:
                    job = await _execute(redrive, job, jobs, None, output)
                finally:
                    await _audit_job(store, who, "redrive-resume", job)
            finally:
                await redrive.leave()
    _print(render_job(job), job_json(job), output, "job")
    return EXIT_OK if job.state is JobState.DONE else EXIT_STOPPED


async def _execute(
    redrive: Redrive, job: RedriveJob, jobs: JobStore, expected: int | None, output: str
) -> RedriveJob:
    """Run the job with a progress bar on a watched terminal."""
    with progress.QueueProgress(enabled=progress.wanted(output)) as bars:
        bar = bars.add(f"redrive {job.id}", expected)

        def on_step(_: RedriveJob, results: Sequence[MessageResult]) -> None:
            bars.advance(bar, len(results))

        return await redrive.execute(job, jobs, on_step=on_step)


async def _load(jobs: JobStore, job_id: str) -> RedriveJob:
    try:
        return await jobs.load(job_id)
    except ControlError as exc:
        raise OperatorInputError(str(exc)) from None


def _owner(job: RedriveJob) -> str:
    # The same owner on every resume: a claim begun before a crash is this job's to finish.
    return f"redrive-{job.id}"


async def _audit_job(
    store: Any, who: str, action: str, job: RedriveJob, *, outcome: str | None = None
) -> None:
    await audit.record(
        store,
        who=who,
        action=action,
        what={"job": job.id, **job.spec},
        count=sum(job.counts.values()),
        outcome=outcome or job.state.value,
    )


def _print(text: str, document: dict[str, Any], output: str, name: str) -> None:
    if output == "json":
        print(json.dumps({name: document}, indent=2))
    else:
        print(text)
    sys.stdout.flush()


async def run_jobs(settings: Settings, *, output: str) -> int:
    async with open_clients(settings.aws) as clients:
        jobs = JobStore(control_store(settings.ledger, clients), settings.ledger.ttl_s)
        listed = await jobs.listed()
    if output == "json":
        print(json.dumps({"jobs": listed}, indent=2))
        return 0
    if not listed:
        print("no redrive jobs")
    for entry in listed:
        stop = f"  {entry['stop_reason']}" if entry.get("stop_reason") else ""
        print(
            f"{entry['id']}  {entry['kind']:<7}  {entry['state']:<9}  "
            f"{entry['messages']:>6} message(s)  updated {iso(entry['updated_at_s'])}{stop}"
        )
    return 0


async def run_job_show(settings: Settings, *, job_id: str, output: str) -> int:
    async with open_clients(settings.aws) as clients:
        jobs = JobStore(control_store(settings.ledger, clients), settings.ledger.ttl_s)
        job = await _load(jobs, job_id)
        results = await jobs.results(job) if output == "json" else None
    if output == "json":
        print(json.dumps({"job": job_json(job, results)}, indent=2))
        return 0
    print(render_job(job))
    failures = render_failures(job)
    if failures:
        print("  messages not resubmitted:")
        print("\n".join(failures))
    return 0


async def run_job_cancel(settings: Settings, *, job_id: str) -> int:
    async with open_clients(settings.aws) as clients:
        who, store = await _who_and_store(settings, clients)
        jobs = JobStore(store, settings.ledger.ttl_s)
        job = await _load(jobs, job_id)
        if job.state is JobState.DONE:
            raise OperatorInputError(f"job {job_id} is done; nothing to cancel")
        job.state = JobState.CANCELLED
        await jobs.save(job)
        await _audit_job(store, who, "redrive-cancel", job)
    print(f"job {job_id} cancelled; it will not be resumed (what it sent stays sent)")
    return 0
