"""Messages retryd hid in their DLQ (a deferral): kept so that a redrive can hand them back.

A deferred message is hidden with ChangeMessageVisibility for up to hours, where
no receive — and so no redrive — can see it. Its receipt handle stays valid
while it stays hidden, so the cycle notes (message id, handle, when it
reappears, why) for each message it hid, and writes them per DLQ once the queue
is drained for the cycle. `retryd redrive` then says how many are hidden and
when they reappear, and with `--execute` makes them visible at once before it
reads.

Entries live in SHARDS documents per DLQ (by message id), each capped at
SHARD_KEEP entries (those reappearing last are kept): a DLQ with more hidden
messages than that is only partly un-hidden, and the plan says so. An entry is
dropped once its time has passed (the message reappeared by itself) or when a
redrive has used it.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import structlog

from retryd.control.store import Body, ControlStore, update
from retryd.models import QueueRef

log = structlog.get_logger("retryd.deferrals")

SHARDS = 8
# SQS hides a message for at most 12 hours: past that no entry can be of use.
DOC_TTL_S = 13 * 3_600
# About 600 bytes an entry: a shard stays far below DynamoDB's 400 KB item limit.
SHARD_KEEP = 300
# The soonest distinct whole seconds at which a DLQ's hidden messages reappear, kept per
# DLQ for the cycle (`HiddenBook.due`): a few hundred bytes a DLQ however many it hid. A
# DLQ's later ones are dropped, and it is read when its count shows them, as before.
DUE_KEEP = 64


@dataclass(frozen=True, slots=True)
class Hidden:
    """One message retryd hid in `queue` until `until_s`."""

    queue: str
    message_id: str
    receipt_handle: str
    until_s: float
    reason: str


def deferral_queue(queue: QueueRef, *, qualified: bool) -> str:
    """The name a DLQ's entries are kept under: its name, or (with [[accounts]], where one
    name can be a queue in several accounts and regions) its ARN."""
    return queue.arn if qualified else queue.name


def _shard(message_id: str) -> int:
    return hashlib.sha256(message_id.encode()).digest()[0] % SHARDS


def _doc(queue: str, shard: int) -> str:
    return f"deferred/{queue}/{shard}"


def _entries(queue: str, body: Body | None, now_s: float) -> dict[str, Hidden]:
    return {
        message_id: Hidden(queue, message_id, raw["h"], float(raw["u"]), raw.get("r", ""))
        for message_id, raw in (body or {}).get("m", {}).items()
        if float(raw["u"]) > now_s
    }


def _body(entries: Iterable[Hidden]) -> Body:
    kept = sorted(entries, key=lambda e: e.until_s)[-SHARD_KEEP:]
    return {
        "m": {e.message_id: {"h": e.receipt_handle, "u": e.until_s, "r": e.reason} for e in kept}
    }


class HiddenBook:
    """Collects what a cycle hid, per DLQ, and writes it once the DLQ is done for the cycle;
    and says when a DLQ holds hidden messages that are due again (`due`)."""

    def __init__(self, store: ControlStore, *, qualified: bool = False) -> None:
        self._store = store
        self._qualified = qualified
        self._pending: dict[str, list[Hidden]] = defaultdict(list)
        # Per DLQ, a heap of the whole seconds (unix) its hidden messages reappear at.
        self._reappear_s: dict[str, list[int]] = {}

    def key(self, queue: QueueRef) -> str:
        """What `queue`'s entries are kept under (see `deferral_queue`)."""
        return deferral_queue(queue, qualified=self._qualified)

    def note(self, entries: Iterable[Hidden]) -> None:
        now_s = time.time()
        for entry in entries:
            self._pending[entry.queue].append(entry)
            self._remember_reappearing(entry.queue, math.ceil(entry.until_s), now_s)

    def _remember_reappearing(self, queue: str, at_s: int, now_s: float) -> None:
        times = self._reappear_s.setdefault(queue, [])
        if at_s in times:
            return
        # Times already passed make room first: in a long drain their messages came back
        # and were judged again in it.
        while len(times) >= DUE_KEEP and times[0] <= now_s:
            heapq.heappop(times)
        if len(times) < DUE_KEEP:
            heapq.heappush(times, at_s)
        elif at_s < max(times):
            times.remove(max(times))
            heapq.heapify(times)
            heapq.heappush(times, at_s)

    def due(self, queue: str, now_s: float) -> bool:
        """Whether messages this book saw hidden in `queue` have reappeared by `now_s`.

        Each such time is answered once: the caller reads the DLQ now, and a message it
        defers again is noted again. SQS's counts may lag a change by a minute or more
        (GetQueueAttributes API reference), so a DLQ retryd knows holds due messages is
        read even when its count says none are visible.
        """
        times = self._reappear_s.get(queue)
        reappeared = False
        while times and times[0] <= now_s:
            heapq.heappop(times)
            reappeared = True
        if times == []:
            del self._reappear_s[queue]
        return reappeared

    async def flush(self, queue: str) -> None:
        """Write what was noted for `queue`; a failure is logged (the messages reappear anyway)."""
        noted = self._pending.pop(queue, [])
        if not noted:
            return
        try:
            await remember(self._store, noted)
        except Exception as exc:  # noqa: BLE001 - only a redrive's shortcut is lost
            log.warning("deferrals-not-stored", queue=queue, count=len(noted), error=str(exc))


async def remember(store: ControlStore, entries: Sequence[Hidden]) -> None:
    by_doc: dict[str, list[Hidden]] = defaultdict(list)
    for entry in entries:
        by_doc[_doc(entry.queue, _shard(entry.message_id))].append(entry)
    now_s = time.time()
    for name, added in by_doc.items():
        queue = added[0].queue

        def change(body: Body | None, added: list[Hidden] = added, queue: str = queue) -> Body:
            current = _entries(queue, body, now_s)
            current.update({entry.message_id: entry for entry in added})
            return _body(current.values())

        await update(store, name, change, ttl_s=DOC_TTL_S)


async def hidden_in(store: ControlStore, queue: str) -> list[Hidden]:
    """Every message retryd noted as hidden in `queue` that has not reappeared yet."""
    now_s = time.time()
    names = [_doc(queue, shard) for shard in range(SHARDS)]
    found = await store.get(names)
    entries: list[Hidden] = []
    for name in names:
        doc = found.get(name)
        if doc is not None:
            entries.extend(_entries(queue, doc.body, now_s).values())
    return sorted(entries, key=lambda e: e.until_s)


async def forget(store: ControlStore, queue: str, message_ids: Iterable[str]) -> None:
    """Drop these entries (a redrive used them)."""
    by_doc: dict[str, set[str]] = defaultdict(set)
    for message_id in message_ids:
        by_doc[_doc(queue, _shard(message_id))].add(message_id)
    now_s = time.time()
    for name, gone in by_doc.items():

        def change(body: Body | None, gone: set[str] = gone) -> Body | None:
            if body is None:
                return None
            current = _entries(queue, body, now_s)
            return _body(e for m, e in current.items() if m not in gone)

        await update(store, name, change, ttl_s=DOC_TTL_S)
