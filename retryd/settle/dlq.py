"""Settling messages in their DLQ: delete those whose copy is safe, hide those not due yet.

Both are batch calls (retryd.leases) on the DLQ the messages were received from,
with the receipt handles of that receive: once a lease has run out, SQS treats a delete
with an old handle as a no-op, so the caller deletes within the lease.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from retryd import leases
from retryd.admission.verdicts import Defer
from retryd.control.deferrals import Hidden, HiddenBook
from retryd.leases import DELETE_BATCH_MAX, MAX_HIDE_S, VISIBILITY_BATCH_MAX, Held
from retryd.metrics import Metrics
from retryd.models import DeadLetter, QueueRef, SourceKind
from retryd.settle.objects import Objects

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = structlog.get_logger("retryd.pipeline")

__all__ = ["DELETE_BATCH_MAX", "VISIBILITY_BATCH_MAX", "DeadLetterQueues"]


class DeadLetterQueues:
    """Deletes and hides received dead letters; never raises for what SQS answers."""

    def __init__(
        self,
        sqs: SQSClient,
        metrics: Metrics,
        hidden: HiddenBook | None = None,
        objects: Objects | None = None,
    ) -> None:
        self._sqs = sqs
        # S3 sources' objects (None: no S3 source is drained through this pipeline).
        self._objects = objects
        self._metrics = metrics
        # Where hidden messages are noted, so that a redrive can hand them back at once.
        self._hidden = hidden

    async def delete(self, queue: QueueRef, letters: Sequence[DeadLetter]) -> None:
        """Delete `letters` from `queue`; one that is not deleted reappears after its lease."""
        if queue.kind is SourceKind.S3:
            failures = await self._s3().settle(queue, letters)
        else:
            failures = await leases.delete(self._sqs, queue, [Held.of(x) for x in letters])
        for failure in failures:
            # The copy is safe; the original will reappear after its lease and be
            # handled again. Worth a metric: it is where duplicates come from.
            self._metrics.record_delete_failure(queue)
            log.warning(
                "delete-failed",
                queue=queue.name,
                message_id=failure.message_id,
                error=failure.error,
            )

    async def extend(
        self, queue: QueueRef, letters: Sequence[DeadLetter], lease_s: int
    ) -> list[leases.LeaseFailure]:
        """A fresh lease of `lease_s` from now for `letters` (a heartbeat); those not extended.

        An S3 object has no visibility to extend: its lease is a ledger claim, renewed
        by the drain that took it (drain/buckets.py).
        """
        if queue.kind is SourceKind.S3:
            return []
        return await leases.extend(self._sqs, queue, [Held.of(x) for x in letters], lease_s)

    async def hide(self, defers: Sequence[Defer]) -> None:
        """Hide deferred messages until they are due; they stay in their DLQ either way."""
        by_queue: dict[QueueRef, list[Defer]] = {}
        for defer in defers:
            # An S3 object cannot be hidden: it is left, and judged again next cycle
            # (its backoff is the ledger's, so it is deferred again until due).
            if defer.delay_s > 0 and defer.job.letter.queue.kind is SourceKind.SQS:
                by_queue.setdefault(defer.job.letter.queue, []).append(defer)
        for queue, hidden in by_queue.items():
            failures = await leases.hide(
                self._sqs, queue, [(Held.of(d.job.letter), d.delay_s) for d in hidden]
            )
            failed_ids = {failure.message_id for failure in failures}
            self._note_hidden([d for d in hidden if d.job.letter.message_id not in failed_ids])
            if failures:
                errors = list(dict.fromkeys(failure.error for failure in failures))
                log.warning("defer-hide-failed", queue=queue.name, errors=errors[:3])

    def _s3(self) -> Objects:
        if self._objects is None:
            raise RuntimeError("an S3 source's batch reached a pipeline with no S3 client")
        return self._objects

    def _note_hidden(self, defers: Sequence[Defer]) -> None:
        if self._hidden is None or not defers:
            return
        now_s = time.time()
        self._hidden.note(
            Hidden(
                self._hidden.key(defer.job.letter.queue),
                defer.job.letter.message_id,
                defer.job.letter.receipt_handle,
                now_s + min(math.ceil(defer.delay_s), MAX_HIDE_S),
                defer.reason.value,
            )
            for defer in defers
        )
