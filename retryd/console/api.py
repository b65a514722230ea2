"""The console's JSON API: the same documents the pages show, with the CLI's field names."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from retryd.commands.operator_input import OperatorInputError
from retryd.console import actions, documents
from retryd.console.context import Console, console_of
from retryd.console.documents import NotFoundError
from retryd.console.security import identity
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


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/overview", _answer(_overview))
    router.add_get("/api/groups", _answer(_groups))
    router.add_get("/api/groups/{id}", _answer(_group))
    router.add_post("/api/groups/{id}/note", _answer(_note))
    router.add_get("/api/parking", _answer(_parking))
    router.add_get("/api/jobs", _answer(_jobs))
    router.add_get("/api/jobs/{id}", _answer(_job))
    router.add_post("/api/jobs/{id}/cancel", _answer(_cancel))
    router.add_post("/api/jobs/{id}/resume", _answer(_resume_job))
    router.add_post("/api/redrives", _answer(_redrive))
    router.add_get("/api/pauses", _answer(_pauses))
    router.add_post("/api/pauses", _answer(_pause))
    router.add_delete("/api/pauses/{id}", _answer(_resume))
    router.add_get("/api/audit", _answer(_audit))
