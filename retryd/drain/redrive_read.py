"""Reading a redrive's sources: receive, keep what the selectors select, hand the rest back.

SQS cannot receive selectively, so each step (and a plan) receives, resolves
each message as a cycle would (a parked copy as if it were still in its
`retryd.source-queue`), keeps what the spec selects and hands the rest back at
once. Also here: the messages retryd itself deferred in a source (handed back
first, counted by a plan), and the canary keys that came back into a DLQ.
Every SQS call goes through retryd.leases.

An S3 source (a bucket prefix of failure records) is read the cycle's way
(retryd.s3_objects, retryd.settle.objects): listed from its first key, each
chunk leased with the ledger's claims before it is read (an object a replica
holds is left to it), the selected kept leased for the step, which renews and
releases them (`holding`), the rest released at once. A plan only reads. The
message id of an object is its key.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field, replace

import anyio
import structlog

from retryd import classify, leases, s3_objects
from retryd.aws import AwsClients
from retryd.control.deferrals import deferral_queue, forget, hidden_in
from retryd.control.store import ControlStore
from retryd.discovery.survey import PEEK_LEASE_S, look_at_objects, peek
from retryd.drain.buckets import renew_every_s
from retryd.drain.redrive_select import as_if_in_source, source_names
from retryd.drain.redrive_spec import PARKING_SOURCE, Picked, PlanCounts, Spec
from retryd.leases import RECEIVE_BATCH_MAX
from retryd.models import (
    DeadLetter,
    Job,
    ParkReason,
    QueueRef,
    SourceKind,
    Target,
    Unresolvable,
    queue_ref_from_url,
)
from retryd.resolve import ResolverChain
from retryd.settings import Settings
from retryd.settle.objects import Objects

log = structlog.get_logger("retryd.redrive")

# How long handing a read's leases back may hold off a stop.
SETTLE_SHIELD_S = 20.0
REDIRECT_TYPE = "redirect-type-mismatch"


@dataclass
class Sources:
    """A redrive's source queues, and how their messages are read and judged."""

    settings: Settings
    clients: AwsClients
    control: ControlStore
    spec: Spec
    chain: ResolverChain
    # Every DLQ retryd drains (by name; S3 sources included), and the queues this job reads.
    dlqs: list[QueueRef]
    sources: list[QueueRef]
    to: Target | None = None
    qualified_deferrals: bool = False
    # The objects of S3 sources, leased in the ledger (None: no S3 client in this place).
    objects: Objects | None = None
    by_name: dict[str, QueueRef] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_name = {queue.name: queue for queue in self.dlqs}

    async def _source_refs(self, letters: Sequence[DeadLetter]) -> dict[str, QueueRef]:
        """The source queues parked copies name, found by name (DLQs already known)."""
        refs = dict(self.by_name)
        for name in source_names(letters) - refs.keys():
            try:
                url = (await self.clients.sqs.get_queue_url(QueueName=name))["QueueUrl"]
                refs[name] = queue_ref_from_url(url, self.clients.sqs.meta.region_name)
            except Exception:  # noqa: BLE001 - a deleted source queue: resolved by its name only
                parsed = self.sources[0].arn.rsplit(":", 1)[0]
                refs[name] = QueueRef(name, "", f"{parsed}:{name}")
        return refs

    def judged(self, resolved: Job | Unresolvable) -> Job | Unresolvable:
        if self.to is None or not isinstance(resolved, Job):
            return resolved
        if resolved.target.type is not self.to.type:
            return Unresolvable(
                resolved.letter,
                ParkReason.UNSUPPORTED_TARGET,
                f"--to {self.to.arn} is a {self.to.type.value} target; this message goes "
                f"to {resolved.target.type.value} ({REDIRECT_TYPE})",
            )
        return replace(resolved, target=self.to)

    async def scan(
        self, queue: QueueRef, want: int | None, skip: set[str], keep: bool
    ) -> tuple[list[Picked], PlanCounts]:
        """Receive until `want` selected (None: all, up to max_messages); unselected handed back.

        With `keep`, the selected stay leased for the caller to settle; without it (a
        plan) everything is handed back.
        """
        if queue.kind is SourceKind.S3:
            return await self._scan_objects(queue, want, skip, keep)
        counts = PlanCounts()
        sqs = self.clients.sqs
        lease_s = self.settings.drain.visibility_timeout_s
        handles: dict[str, str] = {}
        unselected: dict[str, str] = {}
        picked: list[Picked] = []
        limit = self.spec.max_messages
        try:
            while (want is None or len(picked) < want) and len(handles) < limit:
                # The lease starts when SQS hands the messages out: take the time before asking.
                deadline = leases.act_by(lease_s)
                try:
                    letters = await leases.receive(
                        sqs,
                        queue,
                        max_messages=RECEIVE_BATCH_MAX,
                        wait_s=self.settings.drain.receive_wait_s,
                        lease_s=lease_s,
                    )
                except Exception as exc:  # noqa: BLE001 - reported; the job stops this queue
                    counts.errors.append(
                        f"{queue.name}: receive failed: {classify.from_exception(exc)}"
                    )
                    break
                if not letters:
                    break
                refs = await self._source_refs(letters) if self.spec.kind == PARKING_SOURCE else {}
                first_new = len(picked)
                repeated = False
                for letter in letters:
                    if letter.message_id in handles:
                        # Its first lease ran out mid-read: only the newest handle counts.
                        repeated = True
                        self._rehandle(letter, deadline, handles, picked, unselected)
                        continue
                    handles[letter.message_id] = letter.receipt_handle
                    counts.examined += 1
                    view = as_if_in_source(letter, refs) if refs else letter
                    resolved = self.chain.resolve(view)
                    full = want is not None and len(picked) >= want
                    if (
                        full
                        or letter.message_id in skip
                        or not self.spec.selector.selects(letter, resolved)
                    ):
                        counts.unselected += 0 if full or letter.message_id in skip else 1
                        unselected[letter.message_id] = letter.receipt_handle
                        continue
                    picked.append(Picked(queue, view, self.judged(resolved), deadline))
                await self._hooked(picked, first_new)
                if repeated:
                    break
            counts.truncated = len(handles) >= limit
        finally:
            back = dict(unselected)
            if not keep:
                back.update({p.letter.message_id: p.letter.receipt_handle for p in picked})
            with anyio.move_on_after(SETTLE_SHIELD_S, shield=True):
                counts.errors.extend(await leases.release(sqs, queue, back, lease_s))
        return picked, counts

    async def _scan_objects(
        self, queue: QueueRef, want: int | None, skip: set[str], keep: bool
    ) -> tuple[list[Picked], PlanCounts]:
        """`scan` for an S3 source: listed from its first key, each chunk leased (with
        `keep`) before it is read; what is not picked is released at once."""
        counts = PlanCounts()
        s3 = self.clients.s3
        objects = self._objects()
        lease_s = self.settings.drain.visibility_timeout_s
        picked: list[Picked] = []
        leased: list[str] = []
        cursor = ""
        limit = self.spec.max_messages
        try:
            while (want is None or len(picked) < want) and counts.examined < limit:
                page, more = await s3_objects.list_page(
                    s3, queue, start_after=cursor, max_keys=limit - counts.examined
                )
                if not page:
                    break
                cursor = page[-1].key
                for start in range(0, len(page), RECEIVE_BATCH_MAX):
                    if want is not None and len(picked) >= want:
                        break
                    rows = page[start : start + RECEIVE_BATCH_MAX]
                    chunk = [listed for listed in rows if listed.key not in skip]
                    keys = [listed.key for listed in chunk]
                    # Leased before it is read, as a cycle does: one a replica holds is its own.
                    ours = set(await objects.lease(queue, keys) if keep else keys)
                    leased.extend(key for key in keys if key in ours and keep)
                    deadline = leases.act_by(lease_s)
                    first_new = len(picked)
                    for listed in chunk:
                        if listed.key in ours and (want is None or len(picked) < want):
                            await self._read_object(queue, listed, deadline, picked, counts)
                    await self._hooked(picked, first_new)
                counts.truncated = more and counts.examined >= limit
                if not more:
                    break
        except Exception as exc:  # noqa: BLE001 - reported; every object stays where it is
            counts.errors.append(f"{queue.name}: listing failed: {classify.from_exception(exc)}")
        finally:
            kept = {item.letter.message_id for item in picked} if keep else set()
            back = [key for key in leased if key not in kept]
            with anyio.move_on_after(SETTLE_SHIELD_S, shield=True):
                await objects.release(queue, back)
        return picked, counts

    async def _read_object(
        self,
        queue: QueueRef,
        listed: s3_objects.Listed,
        deadline: float,
        picked: list[Picked],
        counts: PlanCounts,
    ) -> None:
        """Read one object, resolve it, and pick it when the selectors select it."""
        try:
            letter = await s3_objects.read(self.clients.s3, queue, listed)
        except Exception as exc:  # noqa: BLE001 - this object stays; the others are read
            counts.errors.append(
                f"{queue.name}: {listed.key}: read failed: {classify.from_exception(exc)}"
            )
            return
        if letter is None:
            # Settled by someone else since the listing.
            return
        counts.examined += 1
        resolved = self.chain.resolve(letter)
        if not self.spec.selector.selects(letter, resolved):
            counts.unselected += 1
            return
        picked.append(Picked(queue, letter, self.judged(resolved), deadline))

    def _objects(self) -> Objects:
        if self.objects is None:
            raise RuntimeError("an S3 source was chosen in a place with no S3 client")
        return self.objects

    def holding(self, queue: QueueRef, keys: Sequence[str]) -> AbstractAsyncContextManager[None]:
        """While a step settles `keys` of `queue`: an S3 source's leases renewed, then
        released; nothing for an SQS queue (its lease is the visibility timeout)."""
        if queue.kind is not SourceKind.S3:
            return nullcontext()
        return self._objects().held(queue, keys, renew_every_s=renew_every_s(self.settings))

    async def _hooked(self, picked: list[Picked], start: int) -> None:
        """Run the `[[hooks]]` rules on the messages picked from `start` on, as a cycle does.

        Selection looks at the message as resolved; what is sent is what a cycle would
        send: transformed, and checked against the rule's schema.
        """
        fresh = picked[start:]
        if not fresh:
            return
        hooked = await self.chain.resolve_all([item.letter for item in fresh])
        for offset, (item, resolved) in enumerate(zip(fresh, hooked, strict=True)):
            picked[start + offset] = replace(item, resolved=self.judged(resolved))

    @staticmethod
    def _rehandle(
        letter: DeadLetter,
        act_by: float,
        handles: dict[str, str],
        picked: list[Picked],
        unselected: dict[str, str],
    ) -> None:
        handles[letter.message_id] = letter.receipt_handle
        for index, item in enumerate(picked):
            if item.letter.message_id == letter.message_id:
                renewed = replace(item.letter, receipt_handle=letter.receipt_handle)
                picked[index] = replace(item, letter=renewed, act_by=act_by)
                return
        unselected[letter.message_id] = letter.receipt_handle

    async def count_deferred(self, queue: QueueRef, total: PlanCounts) -> None:
        # An S3 object is never hidden (a deferred one is left, and judged again).
        if self.spec.kind == PARKING_SOURCE or queue.kind is SourceKind.S3:
            return
        entries = await hidden_in(self.control, self._deferrals(queue))
        if not entries:
            return
        total.deferred += len(entries)
        first, last = entries[0].until_s, entries[-1].until_s
        if total.reappear_s is not None:
            first, last = min(first, total.reappear_s[0]), max(last, total.reappear_s[1])
        total.reappear_s = (first, last)

    def _deferrals(self, queue: QueueRef) -> str:
        return deferral_queue(queue, qualified=self.qualified_deferrals)

    async def unhide(self) -> int:
        """Make the messages retryd deferred in the source DLQs visible now; how many."""
        if self.spec.kind == PARKING_SOURCE:
            return 0
        count = 0
        for queue in self.sources:
            if queue.kind is SourceKind.S3:
                continue
            entries = await hidden_in(self.control, self._deferrals(queue))
            if not entries:
                continue
            handles = {entry.message_id: entry.receipt_handle for entry in entries}
            problems = await leases.release(self.clients.sqs, queue, handles, PEEK_LEASE_S)
            for problem in problems:
                # A handle gone stale (the message came back and was received again).
                log.info("redrive-unhide-skipped", queue=queue.name, problem=problem)
            count += len(handles) - len(problems)
            await forget(self.control, self._deferrals(queue), handles)
        if count:
            log.info("redrive-unhidden", messages=count, why="retryd had deferred them")
        return count

    async def returned(self, keys: set[str]) -> int:
        """Canary keys found back in a DLQ retryd drains (their leases handed back at once)."""
        if not keys or self.chain is None:
            return 0
        found: set[str] = set()
        for queue in self.dlqs:
            if queue.kind is SourceKind.S3:
                found |= await self._returned_objects(queue, keys)
                continue
            async with peek(
                self.clients.sqs,
                queue,
                max_messages=self.spec.max_messages,
                wait_s=0,
            ) as seen:
                for letter in seen.letters:
                    resolved = self.chain.resolve(letter)
                    if isinstance(resolved, Job) and resolved.key in keys:
                        found.add(resolved.key)
        if found:
            log.warning("redrive-canaries-returned", keys=sorted(found)[:10], count=len(found))
        return len(found)

    async def _returned_objects(self, queue: QueueRef, keys: set[str]) -> set[str]:
        """Canary keys among an S3 source's objects (only read: nothing leased)."""

        async def among(letters: list[DeadLetter]) -> set[str]:
            resolved = [self.chain.resolve(letter) for letter in letters]
            return {r.key for r in resolved if isinstance(r, Job) and r.key in keys}

        look = await look_at_objects(
            self.clients.s3, queue, among, max_messages=self.spec.max_messages
        )
        for error in look.errors:
            log.warning("redrive-canary-look-failed", queue=queue.name, error=error)
        return look.finding or set()
