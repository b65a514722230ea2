"""The console's read model: what the daemon saw, so that opening a page never receives a message.

Receiving a message to show it would raise its receive count and hide it from the
daemon for a lease, so the console reads only what the daemon recorded here, in
the ledger's backend beside pauses, jobs and audit (see store.py):
- `view/dlq/<arn>`: one DLQ's failure groups as the latest cycle saw them (the
  fields `retryd inspect --output json` prints for a queue), with the time;
- `view/dlqs`: the index of those documents (the newest DLQS_KEEP);
- `view/parked/<hour>`: the parked copies indexed in that hour (id, reason,
  target, group, source queue, key, error, time, size), at most PARKED_PER_HOUR,
  newest kept; more are counted in `dropped`, not lost silently.
Everything expires (DLQ views after DLQ_VIEW_TTL_S, parked copies after the
parking queue's retention), so the model stays bounded without a sweeper. No
message body is stored: bodies may carry personal data.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from retryd.control.store import Body, ControlStore, read_body, update

DLQS_DOC = "view/dlqs"
DLQ_DOC_PREFIX = "view/dlq/"
PARKED_DOC_PREFIX = "view/parked/"
# A DLQ no cycle has looked at for a day drops out of the console.
DLQ_VIEW_TTL_S = 86_400
DLQS_KEEP = 2_000
GROUPS_PER_DLQ_KEEP = 200
# One hour's parked copies are one document; 500 entries of at most ~600 bytes stay
# under DynamoDB's 400 KB item limit.
PARKED_BUCKET_S = 3_600
PARKED_PER_HOUR = 500
TEXT_MAX_CHARS = 300


def _clip(text: str) -> str:
    return text if len(text) <= TEXT_MAX_CHARS else text[: TEXT_MAX_CHARS - 3] + "..."


@dataclass(frozen=True, slots=True)
class DlqView:
    """One DLQ as a cycle saw it: the fields of `inspect --output json`'s queue entries."""

    name: str
    url: str
    arn: str
    at_s: float
    # FailureGroup.to_json() entries, largest first.
    groups: list[Body] = field(default_factory=list)
    feeds: list[dict[str, str]] = field(default_factory=list)
    route: str | None = None
    sampled: int = 0

    def to_json(self) -> Body:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DlqView:
        return cls(
            name=str(raw["name"]),
            url=str(raw.get("url", "")),
            arn=str(raw["arn"]),
            at_s=float(raw["at_s"]),
            groups=[dict(g) for g in raw.get("groups", [])],
            feeds=[dict(f) for f in raw.get("feeds", [])],
            route=raw.get("route"),
            sampled=int(raw.get("sampled", 0)),
        )


@dataclass(frozen=True, slots=True)
class ParkedCopy:
    """One copy in the parking queue, as the daemon parked it (no body)."""

    message_id: str
    reason: str
    target: str
    group: str
    source_queue: str
    key: str
    error: str
    at_s: float
    size_bytes: int

    def to_json(self) -> Body:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ParkedCopy:
        return cls(
            message_id=str(raw["message_id"]),
            reason=str(raw.get("reason", "")),
            target=str(raw.get("target", "")),
            group=str(raw.get("group", "")),
            source_queue=str(raw.get("source_queue", "")),
            key=str(raw.get("key", "")),
            error=str(raw.get("error", "")),
            at_s=float(raw["at_s"]),
            size_bytes=int(raw.get("size_bytes", 0)),
        )

    def clipped(self) -> ParkedCopy:
        return ParkedCopy(
            self.message_id[:TEXT_MAX_CHARS],
            _clip(self.reason),
            _clip(self.target),
            self.group[:TEXT_MAX_CHARS],
            _clip(self.source_queue),
            _clip(self.key),
            _clip(self.error),
            self.at_s,
            self.size_bytes,
        )


# -- recording (the daemon) ------------------------------------------------------------


async def record_dlq(store: ControlStore, view: DlqView) -> None:
    """Store what one cycle saw in one DLQ (replacing the previous cycle's) and index it."""
    body = DlqView(
        view.name,
        view.url,
        view.arn,
        view.at_s,
        view.groups[:GROUPS_PER_DLQ_KEEP],
        view.feeds,
        view.route,
        view.sampled,
    ).to_json()
    await update(store, DLQ_DOC_PREFIX + view.arn, lambda _: body, ttl_s=DLQ_VIEW_TTL_S)

    def index(current: Body | None) -> Body:
        seen = {k: v for k, v in dict((current or {}).get("dlqs", {})).items() if k != view.arn}
        seen[view.arn] = view.at_s
        newest = sorted(seen.items(), key=lambda item: item[1])[-DLQS_KEEP:]
        return {"dlqs": dict(newest)}

    await update(store, DLQS_DOC, index, ttl_s=DLQ_VIEW_TTL_S)


def parked_bucket(at_s: float) -> str:
    """The document an entry parked at `at_s` is indexed in."""
    return f"{PARKED_DOC_PREFIX}{int(at_s // PARKED_BUCKET_S)}"


async def record_parked(store: ControlStore, copies: Iterable[ParkedCopy], *, ttl_s: float) -> None:
    """Index parked copies (one write per hour they fall in); the newest PARKED_PER_HOUR kept."""
    by_bucket: dict[str, list[Body]] = {}
    for copy in copies:
        by_bucket.setdefault(parked_bucket(copy.at_s), []).append(copy.clipped().to_json())
    for name, entries in by_bucket.items():

        def add(current: Body | None, entries: list[Body] = entries) -> Body:
            kept = [*list((current or {}).get("copies", [])), *entries]
            dropped = int((current or {}).get("dropped", 0)) + max(0, len(kept) - PARKED_PER_HOUR)
            return {"copies": kept[-PARKED_PER_HOUR:], "dropped": dropped}

        await update(store, name, add, ttl_s=ttl_s)


# -- reading (the console) -------------------------------------------------------------


async def read_dlqs(store: ControlStore) -> list[DlqView]:
    """Every DLQ the daemon recorded lately, by name."""
    index = dict((await read_body(store, DLQS_DOC) or {}).get("dlqs", {}))
    found = await store.get([DLQ_DOC_PREFIX + arn for arn in index])
    views = [DlqView.from_json(doc.body) for doc in found.values()]
    return sorted(views, key=lambda view: (view.name, view.arn))


@dataclass(frozen=True, slots=True)
class ParkedIndex:
    """The parked copies indexed within the retention, newest first, and how many were not."""

    copies: list[ParkedCopy]
    dropped: int


async def read_parked(
    store: ControlStore, *, ttl_s: float, now_s: float | None = None
) -> ParkedIndex:
    """Every parked copy indexed within the last `ttl_s`, newest first."""
    now_s = time.time() if now_s is None else now_s
    first = int((now_s - ttl_s) // PARKED_BUCKET_S)
    last = int(now_s // PARKED_BUCKET_S)
    names = [f"{PARKED_DOC_PREFIX}{hour}" for hour in range(first, last + 1)]
    found = await store.get(names)
    copies: list[ParkedCopy] = []
    dropped = 0
    for doc in found.values():
        copies.extend(ParkedCopy.from_json(raw) for raw in doc.body.get("copies", []))
        dropped += int(doc.body.get("dropped", 0))
    copies.sort(key=lambda copy: (-copy.at_s, copy.message_id))
    return ParkedIndex(copies, dropped)


@dataclass(frozen=True, slots=True)
class ParkingQuery:
    """The parking search: every given filter must hold; `text` matches error, id or key."""

    reason: str = ""
    target: str = ""
    source_queue: str = ""
    since_s: float | None = None
    until_s: float | None = None
    text: str = ""

    def matches(self, copy: ParkedCopy) -> bool:
        if self.reason and copy.reason != self.reason:
            return False
        if self.target and self.target not in copy.target:
            return False
        if self.source_queue and self.source_queue not in copy.source_queue:
            return False
        if self.since_s is not None and copy.at_s < self.since_s:
            return False
        if self.until_s is not None and copy.at_s > self.until_s:
            return False
        needle = self.text.casefold()
        return not needle or any(
            needle in part.casefold() for part in (copy.error, copy.message_id, copy.key)
        )


def search(copies: Sequence[ParkedCopy], query: ParkingQuery) -> list[ParkedCopy]:
    """The copies the query selects, in the order given."""
    return [copy for copy in copies if query.matches(copy)]
