"""What a cycle saw, for the console's read model: each DLQ's failure groups, the copies parked.

The console never receives a message to show it (control/readmodel.py says why), so
the daemon writes down what it already holds: after a DLQ's drain, the failure groups
of what the drain left in it (grouped by resolve/failure_groups.py, as `retryd
inspect` groups them; an emptied or empty DLQ shows none), and after a safe park, the
parked copy's entry in the index. Memory is bounded by the groups, not the messages:
each batch's leftovers are grouped at once and merged; only a deferred message that may
be judged again in the cycle is remembered by its id (and its group), until its DLQ's
drain ends, so that its count moves to what it becomes. Recording is a side show: a
write error is logged and counted, never raised into a batch or a cycle.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import structlog

from retryd.control.readmodel import DlqView, ParkedCopy, record_dlq, record_parked
from retryd.control.store import ControlError, ControlStore
from retryd.models import DELETED_OUTCOMES, Decision, Job, Outcome, QueueRef
from retryd.resolve.chain import ResolverChain
from retryd.resolve.failure_groups import (
    FailureGroup,
    error_signature,
    failure_group_id,
    group_failures,
)
from retryd.settle.outcome import judged_again

log = structlog.get_logger("retryd.sightings")

# How long recording one DLQ's view may hold off a stop.
RECORD_SHIELD_S = 5.0
# An empty DLQ's view is rewritten only this often: most DLQs are empty most of the
# time, and a thousand unchanged writes a cycle would buy nothing (the view lives a day).
EMPTY_REWRITE_S = 3_600.0


def _uncount(groups: dict[tuple[str, str], FailureGroup], key: tuple[str, str]) -> None:
    """One message less in the group under `key` (gone once none is left)."""
    group = groups.get(key)
    if group is None:
        return
    group.count -= 1
    if group.count <= 0:
        del groups[key]


def _merge(into: dict[tuple[str, str], FailureGroup], groups: Sequence[FailureGroup]) -> None:
    for group in groups:
        key = (group.target, group.signature)
        kept = into.get(key)
        if kept is None:
            into[key] = group
            continue
        kept.count += group.count
        if group.source_attempts_max is not None:
            kept.source_attempts_max = max(kept.source_attempts_max or 0, group.source_attempts_max)
        for stamp in (group.oldest, group.newest):
            if stamp is not None:
                kept.oldest = stamp if kept.oldest is None else min(kept.oldest, stamp)
                kept.newest = stamp if kept.newest is None else max(kept.newest, stamp)


@dataclass
class QueueSighting:
    """One DLQ's drain in one cycle: the failure groups of what it left behind."""

    queue: QueueRef
    chain: ResolverChain
    groups: dict[tuple[str, str], FailureGroup] = field(default_factory=dict)
    parked: list[ParkedCopy] = field(default_factory=list)
    # Messages counted in `groups` that come back to be judged again this cycle (deferrals),
    # by message id: their count moves to whatever they become (bounded by the deferrals).
    judged_again: dict[str, tuple[str, str]] = field(default_factory=dict)


class Sightings:
    """Writes what the cycles saw to the read model; one per Cycle, shared by its workers."""

    def __init__(self, store: ControlStore, *, parked_ttl_s: float) -> None:
        self._store = store
        self._parked_ttl_s = parked_ttl_s
        # DLQ ARN -> when its empty view was last written (bounded by the DLQs drained).
        self._empty_written_s: dict[str, float] = {}
        self.write_errors = 0

    def saw(self, sighting: QueueSighting, decisions: Sequence[Decision]) -> None:
        """Note one batch's decisions: what stays in the DLQ is grouped, what was parked indexed.

        A message deferred earlier in the cycle and decided again now counts as what it
        became: an emptied DLQ shows no groups.
        """
        left = []
        for decision in decisions:
            earlier = sighting.judged_again.pop(decision.letter.message_id, None)
            if earlier is not None:
                _uncount(sighting.groups, earlier)
            if decision.outcome not in DELETED_OUTCOMES:
                left.append(decision)
        rest = []
        for decision in left:
            if not judged_again(decision):
                rest.append(decision.letter)
                continue
            (group,) = group_failures(sighting.chain, [decision.letter])
            _merge(sighting.groups, [group])
            sighting.judged_again[decision.letter.message_id] = (group.target, group.signature)
        if rest:
            _merge(sighting.groups, group_failures(sighting.chain, rest))
        now_s = time.time()
        for decision in decisions:
            if decision.outcome is Outcome.PARKED:
                sighting.parked.append(_parked_copy(sighting.chain, decision, now_s))

    async def record(self, sighting: QueueSighting) -> None:
        """Write the DLQ's view and its parked copies; never raises for a store's error."""
        now_s = time.time()
        groups = sorted(sighting.groups.values(), key=lambda g: (-g.count, g.target, g.signature))
        queue = sighting.queue
        if not groups:
            written_s = self._empty_written_s.get(queue.arn)
            if (
                written_s is not None
                and now_s - written_s < EMPTY_REWRITE_S
                and not sighting.parked
            ):
                return
        view = DlqView(queue.name, queue.url, queue.arn, now_s, [g.to_json() for g in groups])
        with anyio.move_on_after(RECORD_SHIELD_S, shield=True):
            try:
                await record_dlq(self._store, view)
                if sighting.parked:
                    await record_parked(self._store, sighting.parked, ttl_s=self._parked_ttl_s)
            except ControlError as exc:
                self.write_errors += 1
                log.warning(
                    "read-model-not-recorded",
                    queue=queue.name,
                    error=str(exc),
                    why="the console shows this DLQ as an earlier cycle saw it",
                )
                return
        if groups:
            self._empty_written_s.pop(queue.arn, None)
        else:
            self._empty_written_s[queue.arn] = now_s


def _parked_copy(chain: ResolverChain, decision: Decision, now_s: float) -> ParkedCopy:
    """The index entry of a copy parked safely: its failure group as `inspect` would name it."""
    letter = decision.letter
    resolved = chain.resolve(letter)
    if isinstance(resolved, Job):
        target, key = resolved.target.arn, resolved.key
    else:
        target, key = f"unresolved: {resolved.reason.value}", ""
    return ParkedCopy(
        message_id=letter.message_id,
        reason=decision.reason,
        target=decision.target.arn if decision.target else target,
        group=failure_group_id(target, error_signature(letter)),
        source_queue=letter.queue.name,
        key=key,
        error=decision.detail,
        at_s=now_s,
        size_bytes=len(letter.body.encode("utf-8", "surrogatepass")),
    )
