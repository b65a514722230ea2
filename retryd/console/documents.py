"""The JSON documents the console's pages and API show, built by the CLI's own functions.

Pauses, jobs and audit come from the functions `retryd pauses`, `jobs` and `audit`
use for `--output json`; DLQs, failure groups and parked copies from the read model
the daemon records (control/readmodel.py), plus SQS's GetQueueAttributes depths.
Nothing here receives a message.
"""

from __future__ import annotations

import math
import time
from collections import Counter
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
    DlqView,
    ParkedCopy,
    ParkingQuery,
    read_dlqs,
    read_parked,
    search,
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
    views = await read_dlqs(sources.store)
    out: list[Document] = [{} for _ in views]
    limiter = anyio.CapacityLimiter(DEPTH_READS_AT_ONCE)

    async def look(index: int, view: DlqView) -> None:
        async with limiter:
            depth, error = await _depth(sources, view)
        entry = view.to_json()
        entry.update(
            depth=depth,
            depth_error=error,
            oldest=_oldest(view),
            messages=sum(int(g.get("count", 0)) for g in view.groups),
        )
        out[index] = entry

    async with anyio.create_task_group() as group:
        for index, view in enumerate(views):
            group.start_soon(look, index, view)
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
    views = await read_dlqs(sources.store)
    return {"groups": _groups(views, await load_notes(sources.store))}


async def _parked(sources: Sources) -> tuple[list[ParkedCopy], int]:
    index = await read_parked(sources.store, ttl_s=sources.settings.console.parked_index_ttl_s)
    return index.copies, index.dropped


async def group_document(sources: Sources, group_id: str) -> Document:
    notes = await load_notes(sources.store)
    views = await read_dlqs(sources.store)
    rows = [g for g in _groups(views, notes) if g.get("id") == group_id]
    copies, _ = await _parked(sources)
    parked = [c.to_json() for c in copies if c.group == group_id]
    if not rows and not parked and group_id not in notes:
        raise NotFoundError(f"no failure group {group_id!r} in the latest cycles")
    return {"id": group_id, "note": _note(notes, group_id), "queues": rows, "parked": parked}


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


def _counted(values: list[str]) -> list[Document]:
    return [{"name": name, "count": n} for name, n in Counter(values).most_common()]


async def overview_document(sources: Sources) -> Document:
    """The Overview page: DLQs, groups, parked copies by reason and target, pauses, jobs."""
    dlqs = await dlqs_document(sources)
    views = [DlqView.from_json(entry) for entry in dlqs]
    copies, dropped = await _parked(sources)
    return {
        "dlqs": dlqs,
        "groups": _groups(views, await load_notes(sources.store)),
        "parked": {
            "total": len(copies),
            "not_indexed": dropped,
            "by_reason": _counted([c.reason for c in copies]),
            "by_target": _counted([c.target for c in copies]),
        },
        "pauses": (await pauses_now(sources))["pauses"],
        "jobs": (await jobs_document(sources))["jobs"][:OVERVIEW_JOBS],
    }


async def parking_document(
    sources: Sources, query: ParkingQuery, page: int, page_size: int
) -> Document:
    """One page of the parked copies the query selects, newest first."""
    copies, dropped = await _parked(sources)
    found = search(copies, query)
    pages = max(1, math.ceil(len(found) / page_size))
    page = min(max(1, page), pages)
    start = (page - 1) * page_size
    return {
        "copies": [c.to_json() for c in found[start : start + page_size]],
        "total": len(found),
        "page": page,
        "pages": pages,
        "not_indexed": dropped,
    }
