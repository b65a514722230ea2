"""Settling messages in their DLQ: delete those whose copy is safe, hide those not due yet.

Both are batch calls on the DLQ the messages were received from, with the
receipt handles of that receive: once a lease has run out, SQS treats a delete
with an old handle as a no-op, so the caller deletes within the lease.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from retryd import classify
from retryd.admission import Defer
from retryd.control.deferrals import Hidden, HiddenBook
from retryd.metrics import Metrics
from retryd.models import DeadLetter, QueueRef

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        DeleteMessageBatchRequestEntryTypeDef,
    )

log = structlog.get_logger("retryd.pipeline")

# SQS DeleteMessageBatch and ChangeMessageVisibilityBatch take at most 10 entries.
DELETE_BATCH_MAX = 10
VISIBILITY_BATCH_MAX = 10
# SQS hides a message for at most 12 hours from when it was received; a minute is
# kept back for the time since this batch was received.
MAX_HIDE_S = 43_200 - 60


class DeadLetterQueues:
    """Deletes and hides received dead letters; never raises for what SQS answers."""

    def __init__(self, sqs: SQSClient, metrics: Metrics, hidden: HiddenBook | None = None) -> None:
        self._sqs = sqs
        self._metrics = metrics
        # Where hidden messages are noted, so that a redrive can hand them back at once.
        self._hidden = hidden

    async def delete(self, queue: QueueRef, letters: Sequence[DeadLetter]) -> None:
        """Delete `letters` from `queue`; one that is not deleted reappears after its lease."""
        for start in range(0, len(letters), DELETE_BATCH_MAX):
            chunk = letters[start : start + DELETE_BATCH_MAX]
            entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
                {"Id": str(i), "ReceiptHandle": letter.receipt_handle}
                for i, letter in enumerate(chunk)
            ]
            try:
                response = await self._sqs.delete_message_batch(QueueUrl=queue.url, Entries=entries)
            except Exception as exc:  # noqa: BLE001 - any failure means the original will reappear
                error = classify.from_exception(exc)
                for letter in chunk:
                    self._delete_failed(queue, letter, str(error))
                continue
            for failed in response.get("Failed", []):
                letter = chunk[int(failed["Id"])]
                self._delete_failed(queue, letter, str(classify.from_batch_failure(failed)))

    def _delete_failed(self, queue: QueueRef, letter: DeadLetter, error: str) -> None:
        # The copy is safe; the original will reappear after its lease and be
        # handled again. Worth a metric: it is where duplicates come from.
        self._metrics.record_delete_failure(queue)
        log.warning("delete-failed", queue=queue.name, message_id=letter.message_id, error=error)

    async def hide(self, defers: Sequence[Defer]) -> None:
        """Hide deferred messages until they are due; they stay in their DLQ either way."""
        hidden = [defer for defer in defers if defer.delay_s > 0]
        for start in range(0, len(hidden), VISIBILITY_BATCH_MAX):
            await self._hide_batch(hidden[start : start + VISIBILITY_BATCH_MAX])

    async def _hide_batch(self, defers: Sequence[Defer]) -> None:
        queue = defers[0].job.letter.queue
        entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
            {
                "Id": str(i),
                "ReceiptHandle": defer.job.letter.receipt_handle,
                "VisibilityTimeout": min(math.ceil(defer.delay_s), MAX_HIDE_S),
            }
            for i, defer in enumerate(defers)
        ]
        try:
            response = await self._sqs.change_message_visibility_batch(
                QueueUrl=queue.url, Entries=entries
            )
            failed = response.get("Failed", [])
            failures = [str(classify.from_batch_failure(f)) for f in failed]
            self._note_hidden(defers, {str(f.get("Id")) for f in failed})
        except Exception as exc:  # noqa: BLE001 - a message not hidden is only seen sooner
            failures = [str(classify.from_exception(exc))]
        if failures:
            log.warning("defer-hide-failed", queue=queue.name, errors=failures[:3])

    def _note_hidden(self, defers: Sequence[Defer], failed_ids: set[str]) -> None:
        if self._hidden is None:
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
            for i, defer in enumerate(defers)
            if str(i) not in failed_ids
        )
