"""The console's operator actions, each through the function its CLI command uses.

Pause and resume go through `commands.pause` (as `retryd pause` / `resume`), cancel
through `commands.redrive.cancel_job`, a redrive through `commands.redrive.redrive_job`
(as `retryd redrive [--execute]`) and a job's resume through `resume_job` (as
`--resume`); every one is audited with the AWS caller the console runs as and the
person signed in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from typing import Any

from retryd.commands.operator_input import OperatorInputError
from retryd.commands.pause import pause_end_s, pause_targets, resume_targets
from retryd.commands.redrive import (
    Redriven,
    RedriveRequest,
    RedriveSteps,
    cancel_job,
    job_json,
    plan_json,
    redrive_job,
    resume_job,
)
from retryd.commands.timeparse import iso, parse_time_s
from retryd.console.auth import Identity
from retryd.console.background import BackgroundJobs, OnStarted
from retryd.console.documents import Document, NotFoundError, Sources
from retryd.control import audit
from retryd.control.jobs import JobStore, RedriveJob
from retryd.control.notes import set_note
from retryd.drain.redrive import PlanCounts, Redrive, Spec


async def pause(sources: Sources, caller: str, who: Identity, raw: dict[str, Any]) -> Document:
    """Pause the targets matching `pattern` (the fields of `retryd pauses --output json`).

    The end is `until_s` (unix seconds), or `for` (a duration like 2h); neither: until
    resumed.
    """
    now_s = time.time()
    pattern = str(raw.get("pattern") or "").strip()
    if not pattern:
        raise OperatorInputError("pattern: name a target ARN glob (or * for every target)")
    until = raw.get("until_s")
    duration = str(raw.get("for") or "").strip() or None
    if until not in (None, ""):
        try:
            until_s: float | None = float(until)
        except (TypeError, ValueError):
            raise OperatorInputError("until_s: give unix seconds") from None
        if until_s is not None and until_s <= now_s:
            raise OperatorInputError("until_s is in the past")
    else:
        until_s = pause_end_s(duration, None, now_s)
    made = await pause_targets(
        sources.store,
        glob=pattern,
        reason=str(raw.get("reason") or ""),
        until_s=until_s,
        who=caller,
        person=who.name,
        now_s=now_s,
    )
    return {"pause": made.to_json()}


async def resume(sources: Sources, caller: str, who: Identity, pause_id: str) -> Document:
    """End the pause with this id (or glob), as `retryd resume` does."""
    removed = await resume_targets(sources.store, selectors=[pause_id], who=caller, person=who.name)
    return {"resumed": [p.to_json() for p in removed]}


async def cancel(sources: Sources, caller: str, who: Identity, job_id: str) -> Document:
    """Cancel a redrive job, as `retryd jobs cancel` does."""
    job = await cancel_job(sources.store, sources.jobs, job_id=job_id, who=caller, person=who.name)
    return {"job": job_json(job)}


# -- redrive -----------------------------------------------------------------------------

# The fields of a redrive as the form posts them (a JSON request nests the selector).
FORM_FIELDS = (
    "sources",
    "reasons",
    "targets",
    "groups",
    "since",
    "until",
    "where",
    "to",
    "ramp",
    "canary_wait_s",
    "max_refail",
    "max_messages",
)


def _words(value: Any, name: str) -> tuple[str, ...]:
    """A list of names, from a JSON list or a form's text (one per line, or commas)."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.replace(",", "\n").splitlines() if part.strip())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(item.strip() for item in value if item.strip())
    raise OperatorInputError(f"{name}: give a list of names")


def _number(value: Any, name: str, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OperatorInputError(f"{name}: give a number") from None
    if not math.isfinite(number):
        raise OperatorInputError(f"{name}: give a number")
    return number


def _moment(value: Any, name: str) -> str | None:
    """Unix seconds (JSON) as the ISO time the command line takes; a form's text as typed."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value.strip()
    return iso(_number(value, name, 0.0))


def _ramp(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return ",".join(str(step) for step in value) if value else "none"
    return str(value)


def request_from_json(raw: Mapping[str, Any]) -> RedriveRequest:
    """A redrive as `POST /api/redrives` sends it: the spec's fields as `jobs show` records
    them (`sources`, `selector` {reasons, targets, groups, since_s, until_s, message_ids,
    where}, `to`, `ramp`, `canary_wait_s`, `max_refail`, `max_messages`), plus `execute`."""
    selector = raw.get("selector") or {}
    if not isinstance(selector, Mapping):
        raise OperatorInputError("selector: give an object")
    if raw.get("transform"):
        raise OperatorInputError("transform: a transform is named with retryd redrive, not here")
    return RedriveRequest(
        sources=_words(raw.get("sources"), "sources"),
        reasons=_words(selector.get("reasons"), "selector.reasons"),
        targets=_words(selector.get("targets"), "selector.targets"),
        groups=_words(selector.get("groups"), "selector.groups"),
        since=_moment(selector.get("since_s"), "selector.since_s"),
        until=_moment(selector.get("until_s"), "selector.until_s"),
        message_ids=_words(selector.get("message_ids"), "selector.message_ids"),
        where=str(selector["where"]) if selector.get("where") else None,
        to=str(raw["to"]) if raw.get("to") else None,
        ramp=_ramp(raw.get("ramp")),
        canary_wait_s=_number(raw.get("canary_wait_s"), "canary_wait_s", 30.0),
        max_refail=int(_number(raw.get("max_refail"), "max_refail", 0)),
        max_messages=int(_number(raw.get("max_messages"), "max_messages", 1000)),
        execute=raw.get("execute") is True,
        output="json",
    )


def request_from_form(form: Mapping[str, str], *, execute: bool) -> RedriveRequest:
    """A redrive as the Redrive page's form posts it (since/until as the command line takes)."""
    return request_from_json(
        {
            "sources": form.get("sources", ""),
            "selector": {
                "reasons": form.get("reasons", ""),
                "targets": form.get("targets", ""),
                "groups": form.get("groups", ""),
                "since_s": form.get("since", ""),
                "until_s": form.get("until", ""),
                "where": form.get("where", ""),
            },
            "to": form.get("to", ""),
            "ramp": form.get("ramp", ""),
            "canary_wait_s": form.get("canary_wait_s", ""),
            "max_refail": form.get("max_refail", ""),
            "max_messages": form.get("max_messages", ""),
            "execute": execute,
        }
    )


def with_cutoff(request: RedriveRequest, planned_at: Any) -> RedriveRequest:
    """The job selects nothing that failed after its plan: `until` is at most the plan's time."""
    planned_s = _number(planned_at, "planned_at_s", time.time())
    cutoff = iso(math.ceil(planned_s))
    if request.until is not None:
        try:
            asked_s = parse_time_s(request.until, time.time())
        except ValueError as exc:
            raise OperatorInputError(f"until: {exc}") from None
        if asked_s <= planned_s:
            return request
    return replace(request, until=cutoff)


async def redrive(
    sources: Sources,
    background: BackgroundJobs,
    caller: str,
    who: Identity,
    request: RedriveRequest,
) -> Document:
    """Plan a redrive (`execute` false) or start its job, through the function
    `retryd redrive` uses; answers the plan, with the job when one was started."""
    planned_at_s = time.time()
    plans: list[Document] = []

    def planned(spec: Spec, counts: PlanCounts) -> None:
        plans.append(plan_json(spec, counts))

    async def execute(
        engine: Redrive, job: RedriveJob, jobs: JobStore, _: int | None
    ) -> RedriveJob:
        return await engine.execute(job, jobs)

    steps_for = partial(RedriveSteps, planned, execute)
    if not request.execute:
        done = await redrive_job(
            sources.settings, request, steps_for(), who=caller, person=who.name
        )
        if done.no_group:
            raise NotFoundError("none of the groups asked for is in the sources now")
        return {"plan": plans[0], "planned_at_s": planned_at_s}

    async def run(on_started: OnStarted) -> Redriven:
        return await redrive_job(
            sources.settings, request, steps_for(on_started), who=caller, person=who.name
        )

    job = await background.start(run)
    if job is None:
        raise NotFoundError("none of the groups asked for is in the sources now; nothing started")
    return {"plan": plans[0], "job": job_json(job)}


async def resume_redrive(
    sources: Sources, background: BackgroundJobs, caller: str, who: Identity, job_id: str
) -> Document:
    """Go on with a stopped job, as `retryd redrive --resume JOB` does."""

    async def execute(
        engine: Redrive, job: RedriveJob, jobs: JobStore, _: int | None
    ) -> RedriveJob:
        return await engine.execute(job, jobs)

    async def run(on_started: OnStarted) -> RedriveJob:
        steps = RedriveSteps(lambda *_: None, execute, on_started)
        return await resume_job(sources.settings, job_id, steps, who=caller, person=who.name)

    job = await background.start(run)
    if job is None:
        raise NotFoundError(f"job {job_id} did not start")
    return {"job": job_json(job)}


# -- notes -------------------------------------------------------------------------------


async def note(
    sources: Sources, caller: str, who: Identity, group_id: str, raw: Mapping[str, Any]
) -> Document:
    """Set the note on a failure group (`{"text": ...}`; empty text clears it); audited."""
    text = raw.get("text")
    if not isinstance(text, str):
        raise OperatorInputError('text: give the note as a string ("" clears it)')
    made = await set_note(sources.store, group_id, text, by=who.name)
    await audit.record(
        sources.store,
        who=caller,
        person=who.name,
        action="group-note",
        what={"group": group_id, "text": made.text if made else ""},
        outcome="set" if made else "cleared",
    )
    return {"id": group_id, "note": made.to_json() if made else None}
