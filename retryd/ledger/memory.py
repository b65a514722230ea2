"""The in-memory ledger: a dict, for tests.

Nothing survives the process. Two ledgers given the same `MemoryStore` behave
like two replicas sharing one table, which is how tests model several owners.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import anyio.lowlevel

from retryd.ledger.base import (
    Begun,
    Claim,
    Decide,
    ParkBegun,
    ParkCopy,
    R,
    Record,
    decide_begin,
    decide_begin_park,
    decide_commit,
    decide_release,
    decide_renew,
    default_owner,
    park_copies_decide,
    settle,
)


@dataclass
class MemoryStore:
    """Records with the unix second each one expires at."""

    rows: dict[str, tuple[Record, float]] = field(default_factory=dict)


class MemoryLedger:
    """A Ledger over a MemoryStore; every call is atomic because it never awaits midway."""

    backend: str = "memory"

    def __init__(
        self,
        *,
        # How long a claim holds its key after it is taken or last renewed.
        claim_s: float,
        ttl_s: float,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        store: MemoryStore | None = None,
    ) -> None:
        self.owner = owner or default_owner()
        self.store = store if store is not None else MemoryStore()
        self._claim_s = claim_s
        self._ttl_s = ttl_s
        self._clock = clock

    def _live(self, keys: Sequence[str], now_s: float) -> dict[str, Record]:
        found = {}
        for key in keys:
            row = self.store.rows.get(key)
            if row is not None and row[1] > now_s:
                found[key] = row[0]
        return found

    async def _apply(self, claims: Sequence[Claim], now_s: float, decide: Decide[R]) -> list[R]:
        await anyio.lowlevel.checkpoint()
        answers, changed = settle(self._live([c.key for c in claims], now_s), claims, decide)
        for key, record in changed.items():
            self.store.rows[key] = (record, now_s + self._ttl_s)
        return answers

    async def read(self, keys: Sequence[str]) -> dict[str, Record]:
        await anyio.lowlevel.checkpoint()
        return self._live(keys, self._clock())

    async def begin(self, claims: Sequence[Claim]) -> list[Begun]:
        now_s = self._clock()
        decide = partial(decide_begin, owner=self.owner, now_s=now_s, claim_s=self._claim_s)
        return await self._apply(claims, now_s, decide)

    async def commit(self, claims: Sequence[Claim], at_s: float) -> list[bool]:
        decide = partial(decide_commit, owner=self.owner, at_s=at_s)
        return await self._apply(claims, self._clock(), decide)

    async def release(self, claims: Sequence[Claim]) -> None:
        await self._apply(claims, self._clock(), partial(decide_release, owner=self.owner))

    async def renew(self, claims: Sequence[Claim]) -> list[bool]:
        now_s = self._clock()
        decide = partial(decide_renew, owner=self.owner, now_s=now_s, claim_s=self._claim_s)
        return await self._apply(claims, now_s, decide)

    async def begin_park(self, claims: Sequence[Claim]) -> list[ParkBegun]:
        now_s = self._clock()
        decide = partial(decide_begin_park, owner=self.owner, now_s=now_s, claim_s=self._claim_s)
        return await self._apply(claims, now_s, decide)

    async def commit_park(self, copies: Sequence[ParkCopy]) -> list[bool]:
        claims, decide = park_copies_decide(copies, self.owner)
        return await self._apply(claims, self._clock(), decide)

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()
