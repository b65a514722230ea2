"""One S3 source in one cycle: list from its marker, lease, read, and hand batches to the Pipeline.

An S3 source (a bucket prefix of Lambda failure records) is drained like a DLQ:
its objects become letters, ten at a time, and go through the same Pipeline
(resolve, admit, send, settle) as an SQS batch; only reading and settling differ
(retryd.s3_objects, retryd.settle.objects).

Listing is incremental. Each source keeps a marker in the control store, beside
the ledger: the key after which the next cycle lists (ListObjectsV2 `StartAfter`).
The marker only moves past an object once the object is settled (deleted or
tagged) and older than `discovery.s3_marker_lag_s`: an object left behind (failed,
deferred, leased by another replica, not reached before the budget ran out)
stops it, so the next cycle lists again from there and nothing is skipped.
Lambda's keys carry the time they were written after the function's name
(`aws/lambda/async/<function>/YYYY/MM/DD/<time>-<uuid>`): within one function's
prefix a new record sorts after the old ones, save those written in the same few
seconds, which the lag covers. Across functions sharing a prefix, a new record
of function `a` sorts before the marker once it is in function `b`'s keys: so
every `discovery.s3_full_list_every_s` a source is listed from its start, and a
source per function (`aws/lambda/async/<function>/`) never needs it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from retryd import classify, s3_objects
from retryd.control.store import ControlStore, Doc
from retryd.drain.batch import Pipeline
from retryd.leases import RECEIVE_BATCH_MAX, act_by
from retryd.models import DELETED_OUTCOMES, DeadLetter, Decision, QueueRef
from retryd.s3_objects import Client, Listed
from retryd.settings import Settings
from retryd.settle.objects import Objects

log = structlog.get_logger("retryd.cycle")

# The control document holding a source's marker: `s3-marker/bucket/prefix`.
MARKER_DOC_PREFIX = "s3-marker/"


@dataclass(frozen=True, slots=True)
class Marker:
    """Where a source's next listing starts, and when it was last listed from its start."""

    after: str = ""
    full_at_s: float = 0.0
    version: int = 0


def renew_every_s(settings: Settings) -> float:
    """How often a held object's lease is renewed: a third of the period it lasts."""
    return settings.ledger.claim_renew_s / 3


def marker_doc(source: QueueRef) -> str:
    return f"{MARKER_DOC_PREFIX}{source.name}"


class Markers:
    """Each S3 source's listing marker, in the control store (shared by every replica)."""

    def __init__(self, control: ControlStore) -> None:
        self._control = control

    async def read(self, source: QueueRef) -> Marker:
        doc: Doc | None = (await self._control.get([marker_doc(source)])).get(marker_doc(source))
        if doc is None:
            return Marker()
        return Marker(
            str(doc.body.get("after", "")), float(doc.body.get("full_at_s", 0.0)), doc.version
        )

    async def write(self, source: QueueRef, read: Marker, marker: Marker) -> None:
        """Write over what was read; a replica that wrote meanwhile wins (its marker is as
        safe as this one: each stops before whatever it left behind)."""
        if (marker.after, marker.full_at_s) == (read.after, read.full_at_s):
            return
        body = {"after": marker.after, "full_at_s": marker.full_at_s}
        await self._control.put(marker_doc(source), body, version=read.version, ttl_s=None)


@dataclass
class Walk:
    """One listing pass over a source: where the marker may move to as objects settle."""

    start_after: str
    lag_edge_s: float
    after: str = ""
    blocked: bool = False

    def __post_init__(self) -> None:
        self.after = self.start_after

    def passed(self, listed: Listed, settled: bool) -> None:
        """Note one object, in key order: the marker passes it only when nothing before is left."""
        if self.blocked:
            return
        if settled and listed.last_modified_s <= self.lag_edge_s:
            self.after = listed.key
        else:
            self.blocked = True


async def walk_source(
    s3: Client,
    markers: Markers,
    source: QueueRef,
    settings: Settings,
    *,
    limit: int,
    may_go_on: Callable[[], bool],
    settle: Callable[[Sequence[Listed]], Awaitable[set[str]]],
) -> None:
    """One listing pass over `source` from its marker, ten objects at a time to `settle`
    (which answers the keys it settled); the marker written after. Listing errors propagate."""
    discovery = settings.discovery
    read = await markers.read(source)
    now_s = time.time()
    full = now_s - read.full_at_s >= discovery.s3_full_list_every_s
    walk = Walk("" if full else read.after, now_s - discovery.s3_marker_lag_s)
    cursor = walk.start_after
    remaining = limit
    reached_end = cut = False
    while remaining > 0 and may_go_on():
        page, more = await s3_objects.list_page(s3, source, start_after=cursor, max_keys=remaining)
        if not page:
            reached_end = True
            break
        cursor = page[-1].key
        remaining -= len(page)
        for start in range(0, len(page), RECEIVE_BATCH_MAX):
            if not may_go_on():
                walk.blocked = cut = True
                break
            chunk = page[start : start + RECEIVE_BATCH_MAX]
            settled = await settle(chunk)
            for listed in chunk:
                walk.passed(listed, listed.key in settled)
        if cut or not more:
            reached_end = not cut
            break
    # A pass from the start that reached the end is the full listing; one cut short
    # (budget, a stop, the limit) is not: the full listing is still due.
    full_at_s = now_s if full and reached_end else read.full_at_s
    await markers.write(source, read, Marker(walk.after, full_at_s))


class BucketDrain:
    """Drains S3 sources through a place's Pipeline; one per cycle runner."""

    def __init__(self, settings: Settings, control: ControlStore, objects: Objects) -> None:
        self._settings = settings
        self._markers = Markers(control)
        self._objects = objects

    async def drain(
        self,
        s3: Client,
        source: QueueRef,
        pipeline: Pipeline,
        *,
        limit: int,
        may_go_on: Callable[[], bool],
        on_batch: Callable[[list[Decision]], None],
        on_error: Callable[[str], None] = lambda _: None,
    ) -> int:
        """List up to `limit` objects from the marker and settle them; the objects read.

        Listing errors propagate (every object stays where it is; the marker is kept).
        """
        received = 0

        async def settle(chunk: Sequence[Listed]) -> set[str]:
            nonlocal received
            settled, read_count = await self._batch(
                s3, source, chunk, pipeline, on_batch=on_batch, on_error=on_error
            )
            received += read_count
            return settled

        await walk_source(
            s3,
            self._markers,
            source,
            self._settings,
            limit=limit,
            may_go_on=may_go_on,
            settle=settle,
        )
        return received

    async def _batch(
        self,
        s3: Client,
        source: QueueRef,
        chunk: Sequence[Listed],
        pipeline: Pipeline,
        *,
        on_batch: Callable[[list[Decision]], None],
        on_error: Callable[[str], None],
    ) -> tuple[set[str], int]:
        """Lease, read and settle one chunk; the keys settled (or gone), and how many were read."""
        deadline = act_by(self._settings.drain.visibility_timeout_s)
        ours = await self._objects.lease(source, [listed.key for listed in chunk])
        if not ours:
            return set(), 0
        settled: set[str] = set()
        letters: list[DeadLetter] = []
        async with self._objects.held(source, ours, renew_every_s=renew_every_s(self._settings)):
            mine = set(ours)
            for listed in chunk:
                if listed.key not in mine:
                    continue
                try:
                    letter = await s3_objects.read(s3, source, listed)
                except Exception as exc:  # noqa: BLE001 - this object stays; the others go on
                    # Left where it is (the marker stops before it), and said: a KMS key or
                    # a policy that refuses one object must not stop the whole source.
                    on_error(f"{source.name}: {listed.key}: {classify.from_exception(exc)}")
                    continue
                if letter is None:
                    # Settled by someone else since the listing.
                    settled.add(listed.key)
                else:
                    letters.append(letter)
            if letters:
                decisions = await pipeline.handle(source, letters, deadline)
                settled.update(
                    d.letter.message_id for d in decisions if d.outcome in DELETED_OUTCOMES
                )
                on_batch(decisions)
        return settled, len(letters)
