"""The JSON documents the console's pages and API show, built by the CLI's own functions.

Pauses, jobs and audit come from the functions `retryd pauses`, `jobs` and `audit`
use for `--output json`; DLQs, failure groups and parked copies from the read model
the daemon records (control/readmodel.py), plus SQS's GetQueueAttributes depths.
Nothing here receives a message.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import anyio
from botocore.exceptions import BotoCoreError, ClientError

from retryd.aws import AwsClients
from retryd.classify import from_exception
from retryd.commands.audit import audit_document
from retryd.commands.pause import pauses_document
from retryd.commands.redrive import job_json
from retryd.control import audit
from retryd.control.jobs import JobStore
from retryd.control.notes import GroupNote, load_notes
from retryd.control.pauses import load_pauses
from retryd.control.readmodel import (
    GROUP_PARKED_SHOWN,
    Cursor,
    DlqView,
    ParkedPage,
    ParkingQuery,
    ReadModel,
    read_model_of,
)
from retryd.control.store import ControlError, ControlStore
from retryd.discovery.survey import read_depth
from retryd.models import QueueRef
from retryd.settings import Settings

Document = dict[str, Any]
# Jobs on the overview: the latest few; the Jobs page lists them all.
OVERVIEW_JOBS = 10
# GetQueueAttributes calls in flight for one overview: a thousand DLQs in a few round trips,
# well inside the client's connection pool.
DEPTH_READS_AT_ONCE = 16


# /readyz: how long the store may take to answer before the console is called not ready.
READY_TIMEOUT_S = 5.0
# The document /readyz reads: it need not exist; the read must be answered.
_READY_PROBE = "readyz"


class NotFoundError(ControlError):
    """The group or job asked for is not (or no longer) in the store: answered 404."""


@dataclass
class Sources:
    """Where the documents come from: the settings, the control store, the AWS clients."""

    settings: Settings
    store: ControlStore
    clients: AwsClients | None

    @property
    def jobs(self) -> JobStore:
        return JobStore(self.store, self.settings.ledger.ttl_s)

    @property
    def views(self) -> ReadModel:
        return read_model_of(self.store)

    def parked_window(self) -> tuple[float, float]:
        """The parked copies shown, (since_s, now_s): those indexed within
        `console.parked_index_ttl_s`."""
        now_s = time.time()
        return now_s - self.settings.console.parked_index_ttl_s, now_s


async def _depth(sources: Sources, view: DlqView) -> tuple[Document | None, str | None]:
    if sources.clients is None:
        return None, None
    try:
        depth = await read_depth(sources.clients.sqs, QueueRef(view.name, view.url, view.arn))
    except (BotoCoreError, ClientError) as exc:
        return None, str(from_exception(exc))
    return depth.to_json(), None


def _oldest(view: DlqView) -> str | None:
    stamps = [str(g["oldest"]) for g in view.groups if g.get("oldest")]
    return min(stamps) if stamps else None


async def dlqs_document(sources: Sources) -> list[Document]:
    """Every DLQ the daemon recorded: its depth now, oldest failure, feeds, its groups."""
    return _dlq_entries(*await _dlqs_with_depths(sources))


async def _dlqs_with_depths(
    sources: Sources,
) -> tuple[list[DlqView], list[tuple[Document | None, str | None]]]:
    views = await sources.views.dlqs()
    depths: list[tuple[Document | None, str | None]] = [(None, None)] * len(views)
    if sources.clients is None:
        # No AWS (a bench, a test): no depths to read, and no task per DLQ to start.
        return views, depths
    limiter = anyio.CapacityLimiter(DEPTH_READS_AT_ONCE)

    async def look(index: int, view: DlqView) -> None:
        async with limiter:
            depths[index] = await _depth(sources, view)

    async with anyio.create_task_group() as group:
        for index, view in enumerate(views):
            group.start_soon(look, index, view)
    return views, depths


def _dlq_entries(
    views: list[DlqView], depths: list[tuple[Document | None, str | None]]
) -> list[Document]:
    out: list[Document] = []
    for view, (depth, error) in zip(views, depths, strict=True):
        entry = view.to_json()
        entry.update(
            depth=depth,
            depth_error=error,
            oldest=_oldest(view),
            messages=sum(int(g.get("count", 0)) for g in view.groups),
        )
        out.append(entry)
    return out


def _groups(views: list[DlqView], notes: dict[str, GroupNote]) -> list[Document]:
    """Every failure group, with the DLQ it is in (a group id may recur across DLQs) and
    the note on it (None: none)."""
    rows = [
        {
            **group,
            "queue": view.name,
            "queue_arn": view.arn,
            "seen_at_s": view.at_s,
            "note": _note(notes, group.get("id")),
        }
        for view in views
        for group in view.groups
    ]
    return sorted(rows, key=lambda g: (-int(g.get("count", 0)), str(g.get("id"))))


def _note(notes: dict[str, GroupNote], group_id: Any) -> Document | None:
    note = notes.get(str(group_id))
    return note.to_json() if note is not None else None


async def groups_document(sources: Sources) -> Document:
    views = await sources.views.dlqs()
    return {"groups": _groups(views, await load_notes(sources.store))}


async def group_document(sources: Sources, group_id: str) -> Document:
    notes = await load_notes(sources.store)
    views = await sources.views.dlqs()
    rows = [g for g in _groups(views, notes) if g.get("id") == group_id]
    since_s, now_s = sources.parked_window()
    found = await sources.views.parked(
        ParkingQuery(group=group_id), since_s=since_s, now_s=now_s, page_size=GROUP_PARKED_SHOWN
    )
    parked = [c.to_json() for c in found.copies]
    if not rows and not parked and group_id not in notes:
        raise NotFoundError(f"no failure group {group_id!r} in the latest cycles")
    return {"id": group_id, "note": _note(notes, group_id), "queues": rows, "parked": parked}


async def failed_checks(sources: Sources) -> dict[str, str]:
    """The readiness checks that fail, by name, each with why (empty: ready).

    "store": the control store (pauses, jobs, audit, the read model) answers a read
    within READY_TIMEOUT_S; every page needs it.
    """
    try:
        with anyio.fail_after(READY_TIMEOUT_S):
            await sources.store.get([_READY_PROBE])
    except ControlError as exc:
        return {"store": str(exc)}
    except TimeoutError:
        return {"store": f"no answer within {READY_TIMEOUT_S:g} s"}
    return {}


async def pauses_now(sources: Sources) -> Document:
    return pauses_document((await load_pauses(sources.store)).active(time.time()))


async def jobs_document(sources: Sources) -> Document:
    return {"jobs": await sources.jobs.listed()}


async def job_document(sources: Sources, job_id: str) -> Document:
    jobs = sources.jobs
    try:
        job = await jobs.load(job_id)
    except ControlError as exc:
        raise NotFoundError(str(exc)) from None
    return {"job": job_json(job, await jobs.results(job))}


async def audit_now(sources: Sources, limit: int) -> Document:
    return audit_document(await audit.latest(sources.store, limit))


def _counted(counts: list[tuple[str, int]]) -> list[Document]:
    return [{"name": name, "count": n} for name, n in counts]


async def overview_document(sources: Sources) -> Document:
    """The Overview page: DLQs, groups, parked copies by reason and target, pauses, jobs."""
    views, depths = await _dlqs_with_depths(sources)
    dlqs = _dlq_entries(views, depths)
    since_s, now_s = sources.parked_window()
    counts = await sources.views.parked_counts(since_s=since_s, now_s=now_s)
    return {
        "dlqs": dlqs,
        "groups": _groups(views, await load_notes(sources.store)),
        "parked": {
            "total": counts.total,
            "not_indexed": counts.not_indexed,
            "by_reason": _counted(counts.by_reason),
            "by_target": _counted(counts.by_target),
        },
        "pauses": (await pauses_now(sources))["pauses"],
        "jobs": (await jobs_document(sources))["jobs"][:OVERVIEW_JOBS],
    }


async def parking_document(
    sources: Sources,
    query: ParkingQuery,
    page: int,
    page_size: int,
    after: Cursor | None = None,
) -> Document:
    """One page of the parked copies the query selects, newest first.

    `page` numbers pages for links; `after` (the previous page's `next`) pages by
    keyset, which costs the same on the last page as on the first.
    """
    since_s, now_s = sources.parked_window()
    views = sources.views

    async def read(page: int) -> ParkedPage:
        return await views.parked(
            query,
            since_s=since_s,
            now_s=now_s,
            page_size=page_size,
            offset=(max(1, page) - 1) * page_size,
            after=after,
        )

    found = await read(page)
    pages = max(1, math.ceil(found.total / page_size))
    if after is None and page > pages:
        # Past the end: the last page, as before.
        page = pages
        found = await read(page)
    return {
        "copies": [c.to_json() for c in found.copies],
        "total": found.total,
        "page": max(1, page),
        "pages": pages,
        "not_indexed": found.not_indexed,
        "next": found.next.to_text() if found.next is not None else None,
    }
