"""Settling S3 failure records: each object's lease (a ledger claim), and its delete or tag.

An SQS message is leased by its visibility timeout; an S3 object has none, so it
is leased with the claims replicas already share: a claim per object, under a key
of its own (`s3-object/<bucket>/<key>`, apart from every idempotency key), taken
before the object is read, renewed while its batch works and released after. A
replica that dies holds its objects only until `ledger.claim_renew_s` lapses;
another replica then takes them (the claim answers RESUMED). The resubmission
itself is claimed under its idempotency key as for any message, so even an object
whose lease lapsed mid-send is answered DONE, and only settled, elsewhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import structlog

from retryd import s3_objects
from retryd.leases import LeaseFailure
from retryd.ledger.base import BeginStatus, Claim, Ledger, LedgerError
from retryd.models import DeadLetter, QueueRef

log = structlog.get_logger("retryd.pipeline")

# The ledger key prefix of object leases: never an idempotency key (those are hashes
# or the producer's own keys, which the ledger only reads for the message judged).
LEASE_KEY_PREFIX = "s3-object/"
# Lease answers that make the object ours.
_OURS = frozenset({BeginStatus.STARTED, BeginStatus.RESUMED})


def lease_claim(source: QueueRef, key: str) -> Claim:
    """The ledger claim that leases one object of `source`."""
    bucket, _ = s3_objects.bucket_and_prefix(source)
    return Claim(f"{LEASE_KEY_PREFIX}{bucket}/{key}", key, 1, None)


class Objects:
    """The objects of S3 sources: leased through the ledger, deleted or tagged once safe."""

    @classmethod
    def of(cls, s3: Any | None, ledger: Ledger | None, *, settle: str) -> Objects | None:
        """A place's S3 objects, leased in `ledger`; None without an S3 client (S3 sources
        are then not read)."""
        return None if s3 is None else cls(s3, ledger, settle=settle)

    def __init__(self, s3: Any, ledger: Ledger | None, *, settle: str = "delete") -> None:
        """`ledger` None: one process alone, every object it lists is its own."""
        self._s3 = s3
        self._ledger = ledger
        self._settle = settle

    async def lease(self, source: QueueRef, keys: Sequence[str]) -> list[str]:
        """The keys now leased to this process; the rest are another's, or the ledger failed."""
        if self._ledger is None or not keys:
            return list(keys)
        try:
            begun = await self._ledger.begin([lease_claim(source, key) for key in keys])
        except LedgerError as exc:
            # Not leased: left where they are, for the next cycle.
            log.warning("object-lease-failed", source=source.name, error=str(exc))
            return []
        return [key for key, answer in zip(keys, begun, strict=True) if answer.status in _OURS]

    async def renew(self, source: QueueRef, keys: Sequence[str]) -> None:
        """Keep the leases one renewal period more (a lost one is only logged: the
        resubmission's own claim still keeps the copy single)."""
        if self._ledger is None or not keys:
            return
        try:
            kept = await self._ledger.renew([lease_claim(source, key) for key in keys])
        except LedgerError as exc:
            log.warning("object-lease-renew-failed", source=source.name, error=str(exc))
            return
        lost = [key for key, ok in zip(keys, kept, strict=True) if not ok]
        if lost:
            log.warning("object-lease-lost", source=source.name, keys=lost[:3], count=len(lost))

    async def release(self, source: QueueRef, keys: Sequence[str]) -> None:
        """Hand the leases back (the object is settled, or left for a later cycle)."""
        if self._ledger is None or not keys:
            return
        try:
            await self._ledger.release([lease_claim(source, key) for key in keys])
        except LedgerError as exc:
            # Each lapses by itself within ledger.claim_renew_s.
            log.warning("object-lease-release-failed", source=source.name, error=str(exc))

    @asynccontextmanager
    async def held(
        self, source: QueueRef, keys: Sequence[str], *, renew_every_s: float
    ) -> AsyncIterator[None]:
        """Keep the leases of `keys` while the block runs, and hand them back after it,
        however it ends: a stop still releases them (shielded), so another replica need
        not wait for them to lapse."""
        try:
            async with anyio.create_task_group() as renewing:
                renewing.start_soon(self._keep, source, keys, renew_every_s)
                try:
                    yield
                finally:
                    renewing.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The group is only how the renewal is run: the caller sees the block's own
            # error, as it would without leases to keep.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from group
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self.release(source, keys)

    async def _keep(self, source: QueueRef, keys: Sequence[str], every_s: float) -> None:
        while True:
            await anyio.sleep(every_s)
            await self.renew(source, keys)

    async def settle(self, source: QueueRef, letters: Sequence[DeadLetter]) -> list[LeaseFailure]:
        """Delete (or tag) the objects whose copies are safe; those S3 did not settle."""
        keys = [letter.message_id for letter in letters]
        if not keys:
            return []
        if self._settle == "tag":
            return await s3_objects.tag(self._s3, source, keys, "safe")
        return await s3_objects.delete(self._s3, source, keys)
