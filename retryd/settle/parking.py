"""The parking queue: where a dead letter goes, with the reason, when it must not go back.

A parked copy is what allows a message to be deleted from its DLQ, so a result
of None from `park` is a promise: the original body and every original
attribute are in the parking queue.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from botocore.exceptions import ClientError

from retryd.aws import Client
from retryd.classify import is_missing_queue, required
from retryd.errors import ParkingQueueMissingError
from retryd.models import DeadLetter, SendError
from retryd.settings import Settings
from retryd.stamps import stamp_for_parking
from retryd.targets.base import unpreparable
from retryd.targets.sqs_queue import (
    MAX_PAYLOAD_BYTES,
    OutgoingMessage,
    read_max_message_bytes,
    send_message_batches_with_ids,
)


@dataclass(frozen=True, slots=True)
class ParkRequest:
    """One dead letter to park, and the verdict to stamp on its copy."""

    letter: DeadLetter
    reason: str
    detail: str
    attempt: int
    # What the source tried before the DLQ (Job.source_attempts): named in the detail.
    source_attempts: int = 0


class Parking:
    """Writes parked copies to one SQS queue (standard or FIFO)."""

    def __init__(
        self,
        client: Client,
        queue_url: str,
        detail_max_bytes: int,
        max_message_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self._client = client
        self.queue_url = queue_url
        self._detail_max_bytes = detail_max_bytes
        # The parking queue's own MaximumMessageSize: a copy over it is not attempted,
        # and its letter stays in its DLQ.
        self.max_message_bytes = max_message_bytes

    @property
    def is_fifo(self) -> bool:
        return self.queue_url.rstrip("/").endswith(".fifo")

    @classmethod
    async def locate(cls, client: Client, queue: str, detail_max_bytes: int) -> Parking:
        """Find the parking queue by name or URL, and its size limit.

        ParkingQueueMissingError if it does not exist. Other AWS errors (no
        permission, throttling) propagate: start-up cannot tell whether the queue
        is there, and must not go on as if it were.
        """
        try:
            if queue.startswith(("https://", "http://")):
                url = queue
            else:
                answer = await client.get_queue_url(QueueName=queue)
                url = required(answer, "QueueUrl", "GetQueueUrl")
            # For a URL, reading an attribute is also what proves the queue exists.
            max_message_bytes = await read_max_message_bytes(client, url)
        except ClientError as exc:
            if is_missing_queue(exc):
                raise ParkingQueueMissingError(queue) from exc
            raise
        return cls(client, url, detail_max_bytes, max_message_bytes)

    async def park(self, items: Sequence[ParkRequest]) -> list[SendError | None]:
        """Copy each letter to the parking queue; one result per item, None when it is safe there.

        Never raises for an AWS or network error: a failed copy is a SendError, and
        the letter stays in its DLQ.
        """
        copies = await self.park_copies(items)
        return [None if isinstance(copy, str) else copy for copy in copies]

    async def park_copies(self, items: Sequence[ParkRequest]) -> list[SendError | str]:
        """`park`, with the parking queue's MessageId of each copy written (for the ledger)."""
        results: list[SendError | str] = [""] * len(items)
        ready: list[int] = []
        messages: list[OutgoingMessage] = []
        for index, item in enumerate(items):
            try:
                messages.append(self._message(item))
            except Exception as exc:  # noqa: BLE001 - one odd letter must not block the others
                results[index] = unpreparable(exc, "parked copy")
                continue
            ready.append(index)
        sent = await send_message_batches_with_ids(
            self._client, self.queue_url, messages, self.max_message_bytes, "parked copy"
        )
        for index, result in zip(ready, sent, strict=True):
            results[index] = result
        return results

    def _message(self, item: ParkRequest) -> OutgoingMessage:
        attributes = stamp_for_parking(
            item.letter,
            item.reason,
            item.detail,
            item.attempt,
            self._detail_max_bytes,
            source_attempts=item.source_attempts,
        )
        if not self.is_fifo:
            return OutgoingMessage(item.letter.body, attributes)
        # Per source queue, parked copies keep their order; the same letter parked twice
        # (a copy made, its DLQ delete lost) lands once within SQS's dedup window.
        return OutgoingMessage(
            item.letter.body,
            attributes,
            group_id=item.letter.queue.name,
            deduplication_id=hashlib.sha256(item.letter.message_id.encode()).hexdigest(),
        )


async def locate_parking(sqs: Client, settings: Settings) -> Parking:
    """The parking queue; ParkingQueueMissingError when it does not exist (it stops a cycle)."""
    return await Parking.locate(sqs, settings.parking.queue, settings.parking.detail_max_bytes)
