"""The console's JSON API: the same documents the pages show, with the CLI's field names."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from retryd.commands.operator_input import OperatorInputError
from retryd.console import actions, documents, messages
from retryd.console.context import Console, console_of
from retryd.console.documents import NotFoundError
from retryd.console.security import CHANGES, identity
from retryd.control.readmodel import Cursor, ParkingQuery
from retryd.control.store import ControlError
from retryd.errors import RetrydError

Builder = Callable[[Console, web.Request], Awaitable[dict[str, Any]]]


def as_json(document: dict[str, Any], status: int = 200) -> web.Response:
    # ensure_ascii: invalid UTF-8 kept as surrogates is sent as \u escapes, never as raw bytes.
    # Compact: only then does the json module use its C encoder (an indented overview of
    # a thousand DLQs took seconds); the CLI indents its copy of the same document.
    return web.Response(
        text=json.dumps(document, ensure_ascii=True, separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


def _answer(build: Builder) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        try:
            return as_json(await build(console_of(request), request))
        except OperatorInputError as exc:
            return as_json({"error": str(exc)}, 400)
        except NotFoundError as exc:
            return as_json({"error": str(exc)}, 404)
        except ControlError as exc:
            return as_json({"error": str(exc)}, 503)
        except RetrydError as exc:
            # Another refusal the command line would exit non-zero for (a source retryd
            # does not drain, a missing parking queue): said in one line, no trace.
            return as_json({"error": str(exc)}, 409)

    return handler


def int_param(request: web.Request, name: str, default: int) -> int:
    try:
        return max(1, int(request.query.get(name, default)))
    except ValueError:
        raise OperatorInputError(f"{name}: give a whole number") from None


def parking_query(request: web.Request) -> ParkingQuery:
    def time_param(name: str) -> float | None:
        raw = request.query.get(name, "").strip()
        if not raw:
            return None
        try:
            return float(raw)
        except ValueError:
            raise OperatorInputError(f"{name}: give unix seconds") from None

    return ParkingQuery(
        reason=request.query.get("reason", "").strip(),
        target=request.query.get("target", "").strip(),
        source_queue=request.query.get("source_queue", "").strip(),
        since_s=time_param("since_s"),
        until_s=time_param("until_s"),
        text=request.query.get("q", "").strip(),
        group=request.query.get("group", "").strip(),
    )


async def _overview(console: Console, _: web.Request) -> dict[str, Any]:
    return await documents.overview_document(console.sources)


async def _groups(console: Console, _: web.Request) -> dict[str, Any]:
    return await documents.groups_document(console.sources)


async def _group(console: Console, request: web.Request) -> dict[str, Any]:
    return await documents.group_document(console.sources, request.match_info["id"])


def cursor_param(request: web.Request) -> Cursor | None:
    """`after`: the `next` of the page before (keyset paging), or None."""
    raw = request.query.get("after", "").strip()
    if not raw:
        return None
    try:
        return Cursor.from_text(raw)
    except ValueError:
        raise OperatorInputError("after: give the `next` of the page before") from None


async def _parking(console: Console, request: web.Request) -> dict[str, Any]:
    size = console.sources.settings.console.page_size
    return await documents.parking_document(
        console.sources,
        parking_query(request),
        int_param(request, "page", 1),
        size,
        cursor_param(request),
    )


async def _jobs(console: Console, _: web.Request) -> dict[str, Any]:
    return await documents.jobs_document(console.sources)


async def _job(console: Console, request: web.Request) -> dict[str, Any]:
    return await documents.job_document(console.sources, request.match_info["id"])


async def _cancel(console: Console, request: web.Request) -> dict[str, Any]:
    done = await actions.cancel(
        console.sources, console.caller, identity(request), request.match_info["id"]
    )
    console.metrics.actions.labels("cancel", "ok").inc()
    return done


async def _json_object(request: web.Request, what: str) -> dict[str, Any]:
    try:
        raw = await request.json()
    except ValueError:
        raise OperatorInputError(f"send the {what} as a JSON object") from None
    if not isinstance(raw, dict):
        raise OperatorInputError(f"send the {what} as a JSON object")
    return raw


async def _redrive(console: Console, request: web.Request) -> dict[str, Any]:
    raw = await _json_object(request, "redrive")
    wanted = actions.request_from_json(raw)
    if wanted.execute:
        wanted = actions.with_cutoff(wanted, raw.get("planned_at_s"))
    done = await actions.redrive(
        console.sources, console.background, console.caller, identity(request), wanted
    )
    console.metrics.actions.labels(
        "redrive-execute" if wanted.execute else "redrive-plan", "ok"
    ).inc()
    return done


async def _resume_job(console: Console, request: web.Request) -> dict[str, Any]:
    done = await actions.resume_redrive(
        console.sources,
        console.background,
        console.caller,
        identity(request),
        request.match_info["id"],
    )
    console.metrics.actions.labels("redrive-resume", "ok").inc()
    return done


async def _note(console: Console, request: web.Request) -> dict[str, Any]:
    raw = await _json_object(request, "note")
    done = await actions.note(
        console.sources, console.caller, identity(request), request.match_info["id"], raw
    )
    console.metrics.actions.labels("group-note", "ok").inc()
    return done


async def _messages(console: Console, request: web.Request) -> dict[str, Any]:
    done = await messages.show_messages(
        console.sources,
        console.caller,
        identity(request),
        request.match_info["name"],
        request.query.get("group", "").strip(),
    )
    console.metrics.actions.labels(messages.ACTION, "ok").inc()
    return done


async def _pauses(console: Console, _: web.Request) -> dict[str, Any]:
    return await documents.pauses_now(console.sources)


async def _pause(console: Console, request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.json()
    except ValueError:
        raise OperatorInputError("send the pause as a JSON object") from None
    if not isinstance(raw, dict):
        raise OperatorInputError("send the pause as a JSON object")
    done = await actions.pause(console.sources, console.caller, identity(request), raw)
    console.metrics.actions.labels("pause", "ok").inc()
    return done


async def _resume(console: Console, request: web.Request) -> dict[str, Any]:
    done = await actions.resume(
        console.sources, console.caller, identity(request), request.match_info["id"]
    )
    console.metrics.actions.labels("resume", "ok" if done["resumed"] else "no-such-pause").inc()
    if not done["resumed"]:
        raise NotFoundError(f"no pause in force with id {request.match_info['id']!r}")
    return done


async def _audit(console: Console, request: web.Request) -> dict[str, Any]:
    limit = int_param(request, "limit", console.sources.settings.console.page_size)
    return await documents.audit_now(console.sources, limit)


@dataclass(frozen=True)
class Route:
    """One API route: what serves it, and what the generated API reference says of it."""

    method: str
    path: str
    build: Builder
    # What it answers (or, for a change, what it does and answers): one sentence.
    answers: str
    # (name, meaning) of each query parameter it reads.
    params: tuple[tuple[str, str], ...] = ()
    # What is posted, for a route that takes a JSON body.
    body: str = ""

    @property
    def role(self) -> str:
        """The role needed: the security middleware lets only operators change anything."""
        return "operator" if self.method in CHANGES else "viewer"


_PARKING_PARAMS = (
    ("reason", "a parking reason (`attempts-exhausted`, `target-rejected`, ...)"),
    ("target", "a target's ARN, or a glob"),
    ("source_queue", "the DLQ the copy was parked from"),
    ("group", "a failure group's id"),
    ("since_s", "parked at or after (unix seconds)"),
    ("until_s", "parked before (unix seconds)"),
    ("q", "text in the error, the message id or the key"),
    ("page", "the page number, from 1"),
    ("after", "the `next` of the page before (keyset paging)"),
)

ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/api/overview",
        _overview,
        "The overview: every DLQ (depth, oldest age, what feeds it), failure groups, "
        "parked counts, pauses, open breakers, jobs.",
    ),
    Route("GET", "/api/groups", _groups, "Every failure group across the DLQs, with its note."),
    Route(
        "GET",
        "/api/groups/{id}",
        _group,
        "One failure group: its counts, times, error, note and newest parked copies.",
    ),
    Route(
        "POST",
        "/api/groups/{id}/note",
        _note,
        "Sets (or, with empty text, clears) the group's note; audited as `group-note`.",
        body='`{"text": "..."}`',
    ),
    Route(
        "GET",
        "/api/parking",
        _parking,
        "A page of the index of parked copies, filtered.",
        params=_PARKING_PARAMS,
    ),
    Route(
        "POST",
        "/api/queues/{name}/messages",
        _messages,
        "Shows a DLQ's messages (up to `[console] page_size`): body, attributes, the error, "
        "retryd's stamps and the ledger's history of each key. It *receives* them (peeked "
        "and handed back at once, as `retryd inspect` does), which raises their receive "
        "counts; audited as `show-messages`.",
        params=(("group", "only the messages of this failure group"),),
    ),
    Route("GET", "/api/jobs", _jobs, "Running and recent jobs, as `retryd jobs --output json`."),
    Route(
        "GET",
        "/api/jobs/{id}",
        _job,
        "One job with its steps and counts, as `retryd jobs show JOB --output json`.",
    ),
    Route(
        "POST",
        "/api/jobs/{id}/cancel",
        _cancel,
        "Cancels a running job, as `retryd jobs cancel`; audited.",
    ),
    Route(
        "POST",
        "/api/jobs/{id}/resume",
        _resume_job,
        "Resumes a stopped redrive job, as `retryd redrive --resume`; answers the job.",
    ),
    Route(
        "POST",
        "/api/redrives",
        _redrive,
        'Plans a redrive (`"execute": false`: answers the plan with `planned_at_s`) or starts '
        "it as a durable job whose cutoff is the plan's time (answers the job); audited.",
        body="the selectors as `retryd jobs show JOB --output json` records them, "
        'with `"execute"` and `"planned_at_s"`',
    ),
    Route("GET", "/api/pauses", _pauses, "The pauses in force, as `retryd pauses --output json`."),
    Route(
        "POST",
        "/api/pauses",
        _pause,
        "Pauses a target glob, as `retryd pause`; audited; answers the pause.",
        body='`{"pattern": "...", "reason": "...", "for": "2h"}`',
    ),
    Route(
        "DELETE",
        "/api/pauses/{id}",
        _resume,
        "Resumes (ends) a pause, as `retryd resume`; audited; 404 when none is in force.",
    ),
    Route(
        "GET",
        "/api/audit",
        _audit,
        "The newest audit records, as `retryd audit --output json`.",
        params=(("limit", "how many records (default `[console] page_size`)"),),
    ),
)


def add_routes(router: web.UrlDispatcher) -> None:
    for route in ROUTES:
        if route.method == "GET":
            # add_get also answers HEAD, as every GET route did before the table.
            router.add_get(route.path, _answer(route.build))
        else:
            router.add_route(route.method, route.path, _answer(route.build))
