"""Reading a redrive's sources: receive, keep what the selectors select, hand the rest back.

SQS cannot receive selectively, so each step (and a plan) receives, resolves
each message as a cycle would (a parked copy as if it were still in its
`retryd.source-queue`), keeps what the spec selects and hands the rest back at
once. Also here: the messages retryd itself deferred in a source (handed back
first, counted by a plan), and the canary keys that came back into a DLQ.
Every SQS call goes through retryd.leases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import anyio
import structlog

from retryd import classify, leases
from retryd.aws import AwsClients
from retryd.control.deferrals import deferral_queue, forget, hidden_in
from retryd.control.store import ControlStore
from retryd.discovery.survey import PEEK_LEASE_S, peek
from retryd.drain.redrive_select import as_if_in_source, source_names
from retryd.drain.redrive_spec import PARKING_SOURCE, Picked, PlanCounts, Spec
from retryd.leases import RECEIVE_BATCH_MAX
from retryd.models import (
    DeadLetter,
    Job,
    ParkReason,
    QueueRef,
    Target,
    Unresolvable,
    queue_ref_from_url,
)
from retryd.resolve import ResolverChain
from retryd.settings import Settings

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
    # Every DLQ retryd drains (by name), and the queues this job reads.
    dlqs: list[QueueRef]
    sources: list[QueueRef]
    to: Target | None = None
    qualified_deferrals: bool = False
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
        if self.spec.kind == PARKING_SOURCE:
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
