"""`retryd redrive` and `retryd jobs`: plan a redrive, run it as a durable job, resume, list.

Without `--execute` a redrive changes nothing: it reads its sources under a
short lease, judges each selected message as executing would, hands every lease
back, and prints the counts. With `--execute` it prints that plan first, then
runs the job and prints what it did, in the same terms, so the two can be
compared line by line. Every plan, execution, resume and cancel is audited.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import anyio
import anyio.abc
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import CollectorRegistry

from retryd import classify
from retryd.admission.verdicts import DeferReason
from retryd.aws import AwsClients, open_clients
from retryd.commands import progress
from retryd.commands.operator_input import OperatorInputError, check_arn_glob
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
    SourceNotDrainedError,
    Spec,
)
from retryd.drain.redrive_select import Selector, SelectorError
from retryd.errors import ExitCode, RetrydError
from retryd.ledger import Ledger, open_ledger
from retryd.metrics import Metrics
from retryd.models import Outcome, ParkReason
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
    # The options given on the command line (`--ramp`, ...): a resume applies those it may.
    given: frozenset[str] = frozenset()
    # Global options (`--config PATH`, ...) a resume command must repeat.
    resume_options: tuple[str, ...] = ()


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


def check_selectors(request: RedriveRequest) -> None:
    """OperatorInputError for a selector that would select nothing, silently: a target glob
    no ARN could match, a `--reason` that is no parking reason, a `--to` that is no ARN."""
    for glob in request.targets:
        check_arn_glob(glob, "--target")
    valid = [reason.value for reason in ParkReason]
    unknown = [reason for reason in request.reasons if reason not in valid]
    if unknown:
        raise OperatorInputError(
            f"--reason {', '.join(unknown)}: not a parking reason; one of {', '.join(valid)}"
        )
    if request.to is not None:
        check_arn_glob(request.to, "--to", wildcards=False)


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


async def _who_and_store(
    settings: Settings, clients: AwsClients, who: str | None = None
) -> tuple[str, ControlStore]:
    caller = who if who is not None else await audit.caller_identity(settings.aws)
    return caller, control_store(settings.ledger, clients)


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
        member=_member(job),
        home=home,
    )


@dataclass(frozen=True)
class RedriveSteps:
    """How one redrive reports as it goes: the command line prints, the console answers."""

    # The plan, as soon as it is counted (before anything changes).
    planned: Callable[[Spec, PlanCounts], None]
    # Runs the job to its end, a canary stop or a cancellation (the job as saved).
    # `expected`: the messages the plan selected (None on a resume).
    execute: Callable[[Redrive, RedriveJob, JobStore, int | None], Awaitable[RedriveJob]]
    # The job, once it is saved as running (before its first step).
    started: Callable[[RedriveJob], None] = lambda _: None


@dataclass(frozen=True)
class Redriven:
    """What one redrive planned and, when executed, the job it ran."""

    spec: Spec
    counts: PlanCounts
    job: RedriveJob | None
    # The selection named groups none of which was found: nothing executed.
    no_group: bool = False


async def run_redrive(settings: Settings, request: RedriveRequest) -> int:
    """The `redrive` command."""
    if request.resume is not None:
        return await _resume(settings, request.resume, request.output, request)

    def planned(spec: Spec, counts: PlanCounts) -> None:
        _print(render_plan(spec, counts), plan_json(spec, counts), request.output, "plan")

    async def execute(
        redrive: Redrive, job: RedriveJob, jobs: JobStore, expected: int | None
    ) -> RedriveJob:
        options = request.resume_options
        return await _execute(redrive, job, jobs, expected, request.output, resume_options=options)

    done = await redrive_job(settings, request, RedriveSteps(planned, execute))
    if done.no_group:
        return EXIT_STOPPED
    if done.job is None:
        if request.output == "text":
            print("nothing changed; add --execute to do it")
        return EXIT_STOPPED if done.counts.errors else EXIT_OK
    _print(render_job(done.job), job_json(done.job), request.output, "job")
    code = job_exit(done.job)
    if code == EXIT_OK and done.counts.errors:
        # A source the plan could not read was not redriven either: "done" with nothing
        # done there must not read as success.
        print(
            f"retryd: job {done.job.id} could not read every source "
            f"({len(done.counts.errors)} error(s), listed in the plan above)",
            file=sys.stderr,
        )
        return EXIT_STOPPED
    return code


async def redrive_job(
    settings: Settings,
    request: RedriveRequest,
    steps: RedriveSteps,
    *,
    who: str | None = None,
    person: str = "",
) -> Redriven:
    """Plan a redrive and, with `request.execute`, run it as a durable job; audited either way.

    `retryd redrive` and the console's `POST /api/redrives` both come here: `who` is
    the AWS caller (default: asked of STS), `person` the console's signed-in person.
    """
    check_selectors(request)
    spec = build_spec(request, time.time())
    async with open_places(settings) as places:
        # The operator state, the audit and the ledger are the home place's.
        home = await places.home_clients()
        caller, store = await _who_and_store(settings, home, who)
        metrics = Metrics(CollectorRegistry())
        job = RedriveJob(new_job_id(), spec.kind, spec.to_json(), caller)
        async with open_ledger(settings.ledger, home, metrics, owner=_owner(job)) as ledger:
            redrive = await _redrive_in_place(
                settings, places, spec, job, ledger=ledger, metrics=metrics, store=store, home=home
            )
            try:
                return await _plan_and_execute(
                    settings,
                    request,
                    redrive,
                    steps,
                    job=job,
                    store=store,
                    who=caller,
                    person=person,
                )
            finally:
                await redrive.leave()


async def _plan_and_execute(
    settings: Settings,
    request: RedriveRequest,
    redrive: Redrive,
    steps: RedriveSteps,
    *,
    job: RedriveJob,
    store: ControlStore,
    who: str,
    person: str,
) -> Redriven:
    """Plan, and execute when asked."""
    spec = redrive.spec
    try:
        await redrive.prepare()
        counts = await redrive.plan()
    except RedriveInputError as exc:
        raise input_error(exc) from None
    except (BotoCoreError, ClientError) as exc:
        raise ControlError(f"cannot read the sources: {classify.from_exception(exc)}") from exc
    steps.planned(spec, counts)
    refuse_mismatched_redirect(spec, counts)
    if selects_no_group(request, counts):
        return Redriven(spec, counts, None, no_group=True)
    if not request.execute:
        await audit.record(
            store,
            who=who,
            person=person,
            action="redrive-plan",
            what=spec.to_json(),
            count=counts.selected,
        )
        return Redriven(spec, counts, None)
    jobs = JobStore(store, settings.ledger.ttl_s)
    # Audited as it starts too: a job whose process is killed still left a record.
    await _audit_job(store, who, "redrive-execute", job, outcome="started", person=person)
    await jobs.take(job, redrive.runner)
    steps.started(job)
    try:
        job = await steps.execute(redrive, job, jobs, counts.selected)
    finally:
        await _audit_job(store, who, "redrive-execute", job, person=person)
    return Redriven(spec, counts, job)


async def _resume(
    settings: Settings, job_id: str, output: str, request: RedriveRequest | None = None
) -> int:
    async def execute(
        redrive: Redrive, job: RedriveJob, jobs: JobStore, expected: int | None
    ) -> RedriveJob:
        options = request.resume_options if request is not None else ()
        return await _execute(redrive, job, jobs, expected, output, resume_options=options)

    job = await resume_job(
        settings, job_id, RedriveSteps(lambda *_: None, execute), request=request, output=output
    )
    _print(render_job(job), job_json(job), output, "job")
    return job_exit(job)


async def resume_job(
    settings: Settings,
    job_id: str,
    steps: RedriveSteps,
    *,
    request: RedriveRequest | None = None,
    output: str = "text",
    who: str | None = None,
    person: str = "",
) -> RedriveJob:
    """Go on with a stopped job where it stopped (`retryd redrive --resume`, the console's
    resume button); `request` (the command line's) may change what a resume may change."""
    async with open_places(settings) as places:
        home = await places.home_clients()
        caller, store = await _who_and_store(settings, home, who)
        jobs = JobStore(store, settings.ledger.ttl_s)
        job = await _load(jobs, job_id)
        if job.state in (JobState.DONE, JobState.CANCELLED):
            raise OperatorInputError(f"job {job_id} is {job.state.value}; nothing to resume")
        spec = Spec.from_json(job.spec)
        changed: dict[str, Any] = {}
        if request is not None:
            spec, changed = resume_changes(spec, job, request)
            _say_resumed(job, changed, output)
        metrics = Metrics(CollectorRegistry())
        async with open_ledger(settings.ledger, home, metrics, owner=_owner(job)) as ledger:
            redrive = await _redrive_in_place(
                settings, places, spec, job, ledger=ledger, metrics=metrics, store=store, home=home
            )
            try:
                try:
                    await redrive.prepare()
                except RedriveInputError as exc:
                    raise input_error(exc) from None
                # Refused here, before anything is said to have started, while another
                # live process runs the job (JobBusyError).
                await jobs.take(job, redrive.runner)
                steps.started(job)
                try:
                    job = await steps.execute(redrive, job, jobs, None)
                finally:
                    await _audit_job(
                        store, caller, "redrive-resume", job, changed=changed, person=person
                    )
            finally:
                await redrive.leave()
    return job


async def _execute(
    redrive: Redrive,
    job: RedriveJob,
    jobs: JobStore,
    expected: int | None,
    output: str,
    *,
    resume_options: Sequence[str] = (),
) -> RedriveJob:
    """Run the job with a progress bar on a watched terminal; a signal stops it, resumably."""
    with progress.QueueProgress(enabled=progress.wanted(output)) as bars:
        bar = bars.add(f"redrive {job.id}", expected)

        def on_step(_: RedriveJob, results: Sequence[MessageResult]) -> None:
            bars.advance(bar, len(results))

        return await until_signalled(
            partial(redrive.execute, job, jobs, on_step=on_step), job, resume_options
        )


async def _load(jobs: JobStore, job_id: str) -> RedriveJob:
    try:
        return await jobs.load(job_id)
    except ControlError as exc:
        raise OperatorInputError(str(exc)) from None


def _owner(job: RedriveJob) -> str:
    # The same owner on every resume: a claim begun before a crash is this job's to finish.
    return f"redrive-{job.id}"


def _member(job: RedriveJob) -> str:
    """This process's name among the replicas: the job's, and one of its own.

    Not the ledger owner alone: a second process started for a running job (refused,
    the job busy) would otherwise overwrite the job's heartbeat and, leaving, remove
    it, and the daemons would count the job out while it still sends.
    """
    return f"{_owner(job)}-{uuid.uuid4().hex[:8]}"


async def _audit_job(
    store: Any,
    who: str,
    action: str,
    job: RedriveJob,
    *,
    outcome: str | None = None,
    changed: dict[str, Any] | None = None,
    person: str = "",
) -> None:
    await audit.record(
        store,
        who=who,
        person=person,
        action=action,
        what={"job": job.id, **job.spec, **({"changed": changed} if changed else {})},
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
        await cancel_job(store, jobs, job_id=job_id, who=who, person="")
    print(f"job {job_id} cancelled; it will not be resumed (what it sent stays sent)")
    return 0


# -- exit codes (issue 22) ---------------------------------------------------------------

# A job ending with messages in these outcomes did less than it was asked to.
NOT_DONE = frozenset({Outcome.FAILED, Outcome.REFUSED, Outcome.DEFERRED})
# ... except a message deferred because the daemon is resubmitting it at that moment:
# it goes, only not by this job.
DONE_BY_ANOTHER = frozenset({(Outcome.DEFERRED, DeferReason.CLAIMED_ELSEWHERE.value)})


def input_error(exc: RedriveInputError) -> RetrydError:
    """The error a redrive that cannot start is reported as: an unknown source is 1, as for
    every command naming a queue retryd does not know; any other refusal is bad input, 2."""
    if isinstance(exc, SourceNotDrainedError):
        return SourceNotDrainedError(f"redrive: {exc}; nothing was done")
    return OperatorInputError(str(exc))


def job_exit(job: RedriveJob) -> int:
    """0 only when the job ended and every message it tried went (resubmitted or parked, or
    left to the daemon that was resubmitting it at that moment)."""
    if job.state is not JobState.DONE:
        return EXIT_STOPPED
    left = {
        (outcome, reason): count
        for (outcome, reason), count in job.reason_totals().items()
        if outcome in NOT_DONE and (outcome, reason) not in DONE_BY_ANOTHER
    }
    if left:
        # "2 deferred (paused), 4 failed": what was not done, and why where it is a guard.
        counted = ", ".join(
            f"{count} {outcome}" + (f" ({reason})" if outcome == Outcome.DEFERRED else "")
            for (outcome, reason), count in sorted(left.items())
        )
        print(f"retryd: job {job.id} ended with {counted}", file=sys.stderr)
        return EXIT_STOPPED
    return EXIT_OK


def refuse_mismatched_redirect(spec: Spec, counts: PlanCounts) -> None:
    """OperatorInputError (exit 2, nothing sent) when `--to` cannot take the selection.

    A redirect keeps the target's type; a selected message for another type would be
    refused one by one (`unsupported-target`) by a job that then says `done`.
    """
    if spec.to is None:
        return
    mismatched = sum(
        count
        for (target, action, reason), count in counts.groups.items()
        if not target
        and action == PLAN_ACTION[Outcome.REFUSED]
        and reason == ParkReason.UNSUPPORTED_TARGET.value
    )
    if mismatched:
        raise OperatorInputError(
            f"--to {spec.to}: {mismatched} selected message(s) go to another type of target "
            "(a redirect keeps the type); nothing was sent: narrow the selection with --target"
        )


def selects_no_group(request: RedriveRequest, counts: PlanCounts) -> bool:
    """Say so (stderr) when `--group` selected nothing: a group id no source holds is most
    often a typo or an id from another queue, not an empty incident."""
    if not request.groups or counts.selected:
        return False
    print(
        f"retryd: redrive: no message in {', '.join(request.sources)} is in failure group "
        f"{', '.join(request.groups)} (`retryd inspect` shows each DLQ's groups); nothing was done",
        file=sys.stderr,
    )
    return True


# -- resume (issue 22) -------------------------------------------------------------------

# What a job selects and where it sends: fixed when it was made, so that a resume goes on
# with the same messages. The pace of the ramp may change (the fix may be live now).
FIXED_ON_RESUME = (
    "--from",
    "--reason",
    "--target",
    "--group",
    "--since",
    "--until",
    "--message-id",
    "--where",
    "--to",
    "--transform",
)
# Each option a resume may change, and the Spec field it sets.
CHANGEABLE_ON_RESUME = {
    "--ramp": "ramp",
    "--canary-wait-s": "canary_wait_s",
    "--max-refail": "max_refail",
    "--max-messages": "max_messages",
}
# How drain/redrive.py words a stop by the canaries (its `stop_reason`).
CANARY_STOP = "canary failure(s)"


def resume_changes(
    spec: Spec, job: RedriveJob, request: RedriveRequest
) -> tuple[Spec, dict[str, Any]]:
    """The spec a resume runs with, and what it changed (for the job and the audit).

    OperatorInputError (exit 2) naming every option given that cannot change. The job
    is changed in place: its stored spec, and the step it goes on from. A job its
    canaries stopped repeats the step that stopped, at that step's size (its messages
    were handed back untouched, bar the canaries); a new `--ramp` starts at its first
    step. An interrupted job goes on from the step it was in.
    """
    fixed = [option for option in FIXED_ON_RESUME if option in request.given]
    if fixed:
        raise OperatorInputError(
            f"--resume {job.id}: {', '.join(fixed)} cannot change on resume (the job keeps "
            "what it selected and where it sends); only "
            f"{', '.join(CHANGEABLE_ON_RESUME)} may be given"
        )
    if request.canary_wait_s < 0 or request.max_refail < 0 or request.max_messages < 1:
        raise OperatorInputError(
            "--canary-wait-s and --max-refail must be >= 0, --max-messages >= 1"
        )
    values: dict[str, Any] = {
        "ramp": parse_ramp(request.ramp),
        "canary_wait_s": request.canary_wait_s,
        "max_refail": request.max_refail,
        "max_messages": request.max_messages,
    }
    changes = {
        field: values[field]
        for option, field in CHANGEABLE_ON_RESUME.items()
        if option in request.given and values[field] != getattr(spec, field)
    }
    resumed = replace(spec, **changes)
    if "ramp" in changes:
        job.step = 0
    elif job.state is JobState.STOPPED and CANARY_STOP in job.stop_reason and job.step > 0:
        job.step -= 1
    job.spec = resumed.to_json()
    recorded = {
        field: list(value) if isinstance(value, tuple) else value
        for field, value in changes.items()
    }
    return resumed, recorded


def _say_resumed(job: RedriveJob, changed: dict[str, Any], output: str) -> None:
    if output != "text":
        return
    size = Spec.from_json(job.spec).step_size(job.step)
    line = f"resuming job {job.id} at step {job.step + 1} ({size} message(s))"
    if changed:
        line += " with " + ", ".join(
            f"{field}={','.join(map(str, value)) if isinstance(value, list) else value}"
            for field, value in changed.items()
        )
    print(line)


# -- interruptions (issue 22) ------------------------------------------------------------


class JobInterruptedError(RetrydError):
    """SIGINT or SIGTERM stopped a redrive job: where it is, and how to go on (exit 130/143)."""

    def __init__(self, job: RedriveJob, signum: int, resume_options: Sequence[str]) -> None:
        self.exit_code = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED
        command = shlex.join(["retryd", "redrive", "--resume", job.id, *resume_options])
        super().__init__(
            f"{signal.Signals(signum).name}: job {job.id} is {job.state.value} after "
            f"{job.step} step(s); go on with: {command}"
        )


async def until_signalled(
    run: Callable[[], Awaitable[RedriveJob]], job: RedriveJob, resume_options: Sequence[str]
) -> RedriveJob:
    """`run()`'s job, or JobInterruptedError once SIGINT/SIGTERM has stopped it.

    The signal cancels the run, which saves the job as stopped on its way out (a
    step's settling is shielded, so what was sent is accounted for first); then
    the operator is told which job, in what state, and the exact command to resume.
    """
    caught: list[int] = []
    done: list[RedriveJob] = []

    async def watch(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                caught.append(signum)
                group.cancel_scope.cancel()
                return

    async with anyio.create_task_group() as group:
        await group.start(watch)
        done.append(await run())
        group.cancel_scope.cancel()
    if caught:
        raise JobInterruptedError(job, caught[0], resume_options)
    return done[0]


async def cancel_job(
    store: ControlStore, jobs: JobStore, *, job_id: str, who: str, person: str
) -> RedriveJob:
    """Cancel a job and audit it; the job as stored. The command line and the console
    both cancel through this (`person` is the console's signed-in person, "" otherwise)."""
    job = await _load(jobs, job_id)
    if job.state is JobState.DONE:
        raise OperatorInputError(f"job {job_id} is done; nothing to cancel")
    job.state = JobState.CANCELLED
    await jobs.save(job)
    await _audit_job(store, who, "redrive-cancel", job, person=person)
    return job
