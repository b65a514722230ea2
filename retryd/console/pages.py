"""The console's HTML pages: server-rendered from the API's documents, no JavaScript.

Forms POST (a browser sends `Sec-Fetch-Site: same-origin` with them) and answer
with a redirect back to the page; a running job's page refreshes itself with a
`<meta http-equiv="refresh">`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

from aiohttp import web

from retryd.commands.operator_input import OperatorInputError
from retryd.console import actions, documents, messages
from retryd.console.api import int_param, parking_query
from retryd.console.context import Console, console_of
from retryd.console.documents import NotFoundError
from retryd.console.security import identity
from retryd.control.store import ControlError
from retryd.errors import RetrydError

Page = Callable[[Console, web.Request], Awaitable[web.StreamResponse]]
REFRESH_RUNNING_S = 5


def scrubbed(value: Any) -> Any:
    """`value` with invalid UTF-8 (kept by Python as lone surrogates) replaced by '?'.

    Done before rendering, not after: filters such as `urlencode` would fail on them.
    """
    if isinstance(value, str):
        # ASCII (nearly every field) has no surrogate to replace: returned as it is.
        return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {scrubbed(k): scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrubbed(item) for item in value]
    return value


def render(
    console: Console, request: web.Request, name: str, status: int = 200, **context: Any
) -> web.Response:
    html = console.templates.get_template(name).render(
        me=identity(request), **{key: scrubbed(value) for key, value in context.items()}
    )
    return web.Response(body=html.encode("utf-8"), status=status, content_type="text/html")


def _page(build: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        console = console_of(request)
        try:
            return await build(console, request)
        except OperatorInputError as exc:
            return render(console, request, "error.html", 400, message=str(exc))
        except NotFoundError as exc:
            return render(console, request, "error.html", 404, message=str(exc))
        except ControlError as exc:
            return render(console, request, "error.html", 503, message=str(exc))
        except RetrydError as exc:
            # Another refusal the command line would exit non-zero for (a source retryd
            # does not drain, a missing parking queue): said in one line, no trace.
            return render(console, request, "error.html", 409, message=str(exc))

    return handler


async def _overview(console: Console, request: web.Request) -> web.Response:
    doc = await documents.overview_document(console.sources)
    return render(console, request, "overview.html", doc=doc)


async def _group(console: Console, request: web.Request) -> web.Response:
    doc = await documents.group_document(console.sources, request.match_info["id"])
    return render(console, request, "group.html", doc=doc)


async def _note(console: Console, request: web.Request) -> web.StreamResponse:
    group_id = request.match_info["id"]
    form = await request.post()
    raw = {"text": str(form.get("text", ""))}
    await actions.note(console.sources, console.caller, identity(request), group_id, raw)
    console.metrics.actions.labels("group-note", "ok").inc()
    raise web.HTTPSeeOther(f"/groups/{quote(group_id, safe='')}")


async def _messages(console: Console, request: web.Request) -> web.Response:
    """The messages a group's (or a queue's) "Show messages" button asked for: received now."""
    form = await request.post()
    group_id = str(form.get("group", "")).strip()
    doc = await messages.show_messages(
        console.sources, console.caller, identity(request), request.match_info["name"], group_id
    )
    console.metrics.actions.labels(messages.ACTION, "ok").inc()
    return render(console, request, "messages.html", doc=doc)


async def _parking(console: Console, request: web.Request) -> web.Response:
    query = parking_query(request)
    page = int_param(request, "page", 1)
    size = console.sources.settings.console.page_size
    doc = await documents.parking_document(console.sources, query, page, size)
    return render(console, request, "parking.html", doc=doc, query=query)


async def _pauses(console: Console, request: web.Request) -> web.Response:
    doc = await documents.pauses_now(console.sources)
    return render(console, request, "pauses.html", doc=doc)


async def _pause(console: Console, request: web.Request) -> web.StreamResponse:
    form = await request.post()
    raw = {key: str(form.get(key, "")) for key in ("pattern", "reason", "for")}
    await actions.pause(console.sources, console.caller, identity(request), raw)
    console.metrics.actions.labels("pause", "ok").inc()
    raise web.HTTPSeeOther("/pauses")


async def _resume(console: Console, request: web.Request) -> web.StreamResponse:
    done = await actions.resume(
        console.sources, console.caller, identity(request), request.match_info["id"]
    )
    console.metrics.actions.labels("resume", "ok" if done["resumed"] else "no-such-pause").inc()
    raise web.HTTPSeeOther("/pauses")


async def _jobs(console: Console, request: web.Request) -> web.Response:
    doc = await documents.jobs_document(console.sources)
    return render(console, request, "jobs.html", doc=doc)


async def _job(console: Console, request: web.Request) -> web.Response:
    doc = await documents.job_document(console.sources, request.match_info["id"])
    refresh = REFRESH_RUNNING_S if doc["job"]["state"] == "running" else None
    return render(console, request, "job.html", doc=doc, refresh_s=refresh)


async def _cancel(console: Console, request: web.Request) -> web.StreamResponse:
    job_id = request.match_info["id"]
    await actions.cancel(console.sources, console.caller, identity(request), job_id)
    console.metrics.actions.labels("cancel", "ok").inc()
    raise web.HTTPSeeOther(f"/jobs/{job_id}")


def _form_fields(form: Mapping[str, Any]) -> dict[str, str]:
    return {key: str(form.get(key, "")) for key in actions.FORM_FIELDS}


async def _redrive_form(console: Console, request: web.Request) -> web.Response:
    """The redrive form, filled from the query (a group's page links here with its group)."""
    fields = _form_fields(request.query)
    return render(console, request, "redrive.html", fields=fields, plan=None, planned_at_s=None)


async def _redrive_plan(console: Console, request: web.Request) -> web.Response:
    """The plan's exact counts, and the button that executes exactly this plan."""
    fields = _form_fields(await request.post())
    wanted = actions.request_from_form(fields, execute=False)
    done = await actions.redrive(
        console.sources, console.background, console.caller, identity(request), wanted
    )
    console.metrics.actions.labels("redrive-plan", "ok").inc()
    return render(
        console,
        request,
        "redrive.html",
        fields=fields,
        plan=done["plan"],
        planned_at_s=done["planned_at_s"],
    )


async def _redrive_execute(console: Console, request: web.Request) -> web.StreamResponse:
    form = await request.post()
    wanted = actions.request_from_form(_form_fields(form), execute=True)
    wanted = actions.with_cutoff(wanted, str(form.get("planned_at_s", "")))
    done = await actions.redrive(
        console.sources, console.background, console.caller, identity(request), wanted
    )
    console.metrics.actions.labels("redrive-execute", "ok").inc()
    raise web.HTTPSeeOther(f"/jobs/{quote(done['job']['id'], safe='')}")


async def _resume_job(console: Console, request: web.Request) -> web.StreamResponse:
    job_id = request.match_info["id"]
    await actions.resume_redrive(
        console.sources, console.background, console.caller, identity(request), job_id
    )
    console.metrics.actions.labels("redrive-resume", "ok").inc()
    raise web.HTTPSeeOther(f"/jobs/{quote(job_id, safe='')}")


async def _audit(console: Console, request: web.Request) -> web.Response:
    limit = int_param(request, "limit", console.sources.settings.console.page_size)
    doc = await documents.audit_now(console.sources, limit)
    return render(console, request, "audit.html", doc=doc)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", _page(_overview))
    router.add_get("/groups/{id}", _page(_group))
    router.add_post("/groups/{id}/note", _page(_note))
    router.add_post("/queues/{name}/messages", _page(_messages))
    router.add_get("/parking", _page(_parking))
    router.add_get("/pauses", _page(_pauses))
    router.add_post("/pauses", _page(_pause))
    router.add_post("/pauses/{id}/resume", _page(_resume))
    router.add_get("/jobs", _page(_jobs))
    router.add_get("/jobs/{id}", _page(_job))
    router.add_post("/jobs/{id}/cancel", _page(_cancel))
    router.add_post("/jobs/{id}/resume", _page(_resume_job))
    router.add_get("/redrive", _page(_redrive_form))
    router.add_post("/redrive", _page(_redrive_plan))
    router.add_post("/redrive/execute", _page(_redrive_execute))
    router.add_get("/audit", _page(_audit))
