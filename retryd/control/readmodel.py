"""The console's read model: what the daemon saw, so that opening a page never receives a message.

Receiving a message to show it would raise its receive count and hide it from the
daemon for a lease, so the console reads only what the daemon recorded, in the
ledger's backend beside pauses, jobs and audit (see store.py): each DLQ's failure
groups as the latest cycle saw them (the fields `retryd inspect --output json`
prints for a queue), and an index of parked copies (id, reason, target, group,
source queue, key, error, time, size). No message body is stored: bodies may carry
personal data.

Each store says how it keeps them (`ControlStore.read_model()`), behind one
interface, `ReadModel`:
- SQLite (one host, the daemon and console beside it): tables with indexes, so an
  overview is a few indexed GROUP BYs and a search one bounded query
  (readmodel_sqlite.py);
- memory and DynamoDB: documents (`DocReadModel` below). `view/dlq/<arn>` per DLQ,
  `view/dlqs` their index (the newest DLQS_KEEP), `view/parked/<hour>` the copies
  parked in that hour and `view/parked-sum/<hour>` their counts by reason and
  target, so an overview reads the small summaries, never the copies.
The bounds are the same everywhere: at most PARKED_PER_HOUR copies per hour, the
newest kept and the others counted in `not_indexed`, never lost silently;
GROUPS_PER_DLQ_KEEP groups per DLQ; everything expires (DLQ views after
DLQ_VIEW_TTL_S, parked copies after the parking queue's retention), and the writer
prunes what expired, so no sweeper is needed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from retryd.control.store import Body, read_body, update

if TYPE_CHECKING:
    from retryd.control.store import ControlStore

DLQS_DOC = "view/dlqs"
DLQ_DOC_PREFIX = "view/dlq/"
PARKED_DOC_PREFIX = "view/parked/"
PARKED_SUM_PREFIX = "view/parked-sum/"
# A DLQ no cycle has looked at for a day drops out of the console.
DLQ_VIEW_TTL_S = 86_400
DLQS_KEEP = 2_000
GROUPS_PER_DLQ_KEEP = 200
# One hour's parked copies are one document; 500 entries of at most ~600 bytes stay
# under DynamoDB's 400 KB item limit.
PARKED_BUCKET_S = 3_600
PARKED_PER_HOUR = 500
TEXT_MAX_CHARS = 300
# The parked copies a failure group's page lists (newest first); the count is exact.
GROUP_PARKED_SHOWN = 500


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
        # Shallow copies, not asdict's deep copy: a thousand DLQs' groups on every overview.
        return {
            "name": self.name,
            "url": self.url,
            "arn": self.arn,
            "at_s": self.at_s,
            "groups": [dict(g) for g in self.groups],
            "feeds": [dict(f) for f in self.feeds],
            "route": self.route,
            "sampled": self.sampled,
        }

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


# -- the query -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParkingQuery:
    """The parking search: every given filter must hold; `text` matches error, id or key.

    `reason` and `group` match exactly; `target` and `source_queue` are substrings;
    `text` a substring of the error, the message id or the key in any case.
    """

    reason: str = ""
    target: str = ""
    source_queue: str = ""
    since_s: float | None = None
    until_s: float | None = None
    text: str = ""
    group: str = ""

    def matches(self, copy: ParkedCopy) -> bool:
        if self.reason and copy.reason != self.reason:
            return False
        if self.group and copy.group != self.group:
            return False
        if self.target not in copy.target or self.source_queue not in copy.source_queue:
            # ("" is in every text: an empty filter passes.)
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


def newest_first(copy: ParkedCopy) -> tuple[float, str]:
    """The parking search's order: newest first, then by message id."""
    return (-copy.at_s, copy.message_id)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ends, for the next one (keyset paging): its last copy's time and id."""

    at_s: float
    message_id: str

    def before(self, copy: ParkedCopy) -> bool:
        """True when `copy` comes after the cursor in the search's order."""
        return newest_first(copy) > (-self.at_s, self.message_id)

    def to_text(self) -> str:
        return f"{self.at_s!r}/{self.message_id}"

    @classmethod
    def from_text(cls, text: str) -> Cursor:
        """Parse `to_text`'s form; ValueError when it is not one."""
        at_text, sep, message_id = text.partition("/")
        if not sep:
            raise ValueError(text)
        return cls(float(at_text), message_id)


@dataclass(frozen=True, slots=True)
class ParkedPage:
    """One page of a search, the number it matched, and the copies the bounds left out."""

    copies: list[ParkedCopy]
    total: int
    not_indexed: int
    # Where the next page starts (None: this is the last).
    next: Cursor | None = None


@dataclass(frozen=True, slots=True)
class ParkedCounts:
    """The parked copies by reason and by target, largest first, as the overview shows them."""

    total: int
    not_indexed: int
    by_reason: list[tuple[str, int]]
    by_target: list[tuple[str, int]]


class ReadModel(Protocol):
    """Where the daemon records what it saw and the console reads it back."""

    async def record_dlq(self, view: DlqView) -> None:
        """Store what one cycle saw in one DLQ, replacing the previous cycle's."""
        ...

    async def record_parked(self, copies: Sequence[ParkedCopy], *, ttl_s: float) -> None:
        """Index parked copies, forgotten after `ttl_s`; the hour's bound applied."""
        ...

    async def dlqs(self) -> list[DlqView]:
        """Every DLQ recorded lately (the newest DLQS_KEEP), by name."""
        ...

    async def parked(
        self,
        query: ParkingQuery,
        *,
        since_s: float,
        now_s: float,
        page_size: int,
        offset: int = 0,
        after: Cursor | None = None,
    ) -> ParkedPage:
        """The copies parked from `since_s` to `now_s` that `query` selects, newest first:
        `page_size` of them, after the first `offset` or after `after`, and how many matched.

        A backend that keeps copies by the hour may widen `since_s` to its hour's start.
        """
        ...

    async def parked_counts(self, *, since_s: float, now_s: float) -> ParkedCounts:
        """The copies parked from `since_s` to `now_s`, counted by reason and by target."""
        ...


def _most_common(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _add_counts(into: dict[str, int], more: Mapping[str, Any]) -> None:
    for name, n in more.items():
        into[name] = into.get(name, 0) + int(n)


# -- documents (memory, DynamoDB) ---------------------------------------------------------


def parked_bucket(at_s: float) -> str:
    """The document an entry parked at `at_s` is indexed in."""
    return f"{PARKED_DOC_PREFIX}{int(at_s // PARKED_BUCKET_S)}"


class DocReadModel:
    """The read model as documents in a ControlStore (memory, DynamoDB)."""

    def __init__(self, store: ControlStore) -> None:
        self._store = store

    async def record_dlq(self, view: DlqView) -> None:
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
        await update(self._store, DLQ_DOC_PREFIX + view.arn, lambda _: body, ttl_s=DLQ_VIEW_TTL_S)

        def index(current: Body | None) -> Body:
            seen = {k: v for k, v in dict((current or {}).get("dlqs", {})).items() if k != view.arn}
            seen[view.arn] = view.at_s
            newest = sorted(seen.items(), key=lambda item: item[1])[-DLQS_KEEP:]
            return {"dlqs": dict(newest)}

        await update(self._store, DLQS_DOC, index, ttl_s=DLQ_VIEW_TTL_S)

    async def record_parked(self, copies: Sequence[ParkedCopy], *, ttl_s: float) -> None:
        by_bucket: dict[str, list[Body]] = {}
        for copy in copies:
            by_bucket.setdefault(parked_bucket(copy.at_s), []).append(copy.clipped().to_json())
        for name, entries in by_bucket.items():

            def add(current: Body | None, entries: list[Body] = entries) -> Body:
                kept = [*list((current or {}).get("copies", [])), *entries]
                dropped = int((current or {}).get("dropped", 0)) + max(
                    0, len(kept) - PARKED_PER_HOUR
                )
                return {"copies": kept[-PARKED_PER_HOUR:], "dropped": dropped}

            written = await update(self._store, name, add, ttl_s=ttl_s)
            # The hour's counts, written after its copies from what was written: a
            # summary may lag a racing writer by a cycle, never count a copy not kept.
            summary = _summary(written or {})
            await update(
                self._store,
                PARKED_SUM_PREFIX + name.removeprefix(PARKED_DOC_PREFIX),
                lambda _, summary=summary: summary,  # type: ignore[misc]
                ttl_s=ttl_s,
            )

    async def dlqs(self) -> list[DlqView]:
        index = dict((await read_body(self._store, DLQS_DOC) or {}).get("dlqs", {}))
        found = await self._store.get([DLQ_DOC_PREFIX + arn for arn in index])
        views = [DlqView.from_json(doc.body) for doc in found.values()]
        return sorted(views, key=lambda view: (view.name, view.arn))

    def _hours(self, since_s: float, now_s: float, prefix: str) -> list[str]:
        # Whole hours: the window starts at the hour `since_s` falls in.
        first = int(since_s // PARKED_BUCKET_S)
        last = int(now_s // PARKED_BUCKET_S)
        return [f"{prefix}{hour}" for hour in range(first, last + 1)]

    async def parked(
        self,
        query: ParkingQuery,
        *,
        since_s: float,
        now_s: float,
        page_size: int,
        offset: int = 0,
        after: Cursor | None = None,
    ) -> ParkedPage:
        # Every hour's document is read and filtered here: a document store has no
        # secondary index to page by (docs/console.md says what a search costs).
        found = await self._store.get(self._hours(since_s, now_s, PARKED_DOC_PREFIX))
        copies: list[ParkedCopy] = []
        dropped = 0
        for doc in found.values():
            copies.extend(
                copy
                for raw in doc.body.get("copies", [])
                if query.matches(copy := ParkedCopy.from_json(raw))
            )
            dropped += int(doc.body.get("dropped", 0))
        copies.sort(key=newest_first)
        start = offset if after is None else sum(1 for c in copies if not after.before(c))
        shown = copies[start : start + page_size]
        more = start + page_size < len(copies)
        cursor = Cursor(shown[-1].at_s, shown[-1].message_id) if shown and more else None
        return ParkedPage(shown, len(copies), dropped, cursor)

    async def parked_counts(self, *, since_s: float, now_s: float) -> ParkedCounts:
        found = await self._store.get(self._hours(since_s, now_s, PARKED_SUM_PREFIX))
        by_reason: dict[str, int] = {}
        by_target: dict[str, int] = {}
        total = dropped = 0
        for doc in found.values():
            total += int(doc.body.get("total", 0))
            dropped += int(doc.body.get("dropped", 0))
            _add_counts(by_reason, doc.body.get("by_reason", {}))
            _add_counts(by_target, doc.body.get("by_target", {}))
        return ParkedCounts(total, dropped, _most_common(by_reason), _most_common(by_target))


def _summary(hour: Body) -> Body:
    by_reason: dict[str, int] = {}
    by_target: dict[str, int] = {}
    copies = list(hour.get("copies", []))
    for raw in copies:
        by_reason[str(raw.get("reason", ""))] = by_reason.get(str(raw.get("reason", "")), 0) + 1
        by_target[str(raw.get("target", ""))] = by_target.get(str(raw.get("target", "")), 0) + 1
    return {
        "total": len(copies),
        "dropped": int(hour.get("dropped", 0)),
        "by_reason": by_reason,
        "by_target": by_target,
    }


# -- shorthands over a store's read model ---------------------------------------------------


def read_model_of(store: ControlStore) -> ReadModel:
    """The store's read model, typed (ControlStore.read_model says why it is not there)."""
    model: ReadModel = store.read_model()
    return model


async def record_dlq(store: ControlStore, view: DlqView) -> None:
    """Store what one cycle saw in one DLQ (replacing the previous cycle's) and index it."""
    await read_model_of(store).record_dlq(view)


async def record_parked(store: ControlStore, copies: Iterable[ParkedCopy], *, ttl_s: float) -> None:
    """Index parked copies; the newest PARKED_PER_HOUR of an hour kept, the rest counted."""
    await read_model_of(store).record_parked(list(copies), ttl_s=ttl_s)


async def read_dlqs(store: ControlStore) -> list[DlqView]:
    """Every DLQ the daemon recorded lately, by name."""
    return await read_model_of(store).dlqs()


@dataclass(frozen=True, slots=True)
class ParkedIndex:
    """The parked copies indexed within the retention, newest first, and how many were not."""

    copies: list[ParkedCopy]
    dropped: int


# read_parked's page: everything (it is for tests and small worlds; pages page).
_ALL = 10**9


async def read_parked(
    store: ControlStore, *, ttl_s: float, now_s: float | None = None
) -> ParkedIndex:
    """Every parked copy indexed within the last `ttl_s`, newest first."""
    now_s = time.time() if now_s is None else now_s
    page = await read_model_of(store).parked(
        ParkingQuery(), since_s=now_s - ttl_s, now_s=now_s, page_size=_ALL
    )
    return ParkedIndex(page.copies, page.not_indexed)
