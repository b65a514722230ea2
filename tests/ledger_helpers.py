"""Ledger backends for the protocol tests: open one as any owner, read what it stored raw.

Every backend is opened the way retryd opens it (`open_ledger`), except that
memory ledgers share one MemoryStore, so that two owners see one ledger as two
replicas see one table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from retryd.aws import open_clients
from retryd.ledger import Claim, Ledger, MemoryLedger, MemoryStore, open_ledger
from retryd.settings import Settings
from tests.world import World

T = TypeVar("T")

CLAIM_S = 300.0
TTL_S = 86_400
START_S = 1_700_000_000.0
TABLE = "retryd-ledger-test"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now_s: float = START_S) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run one async test body to completion."""
    return anyio.run(work)


def claim(
    key: str, message_id: str, attempt: int = 1, first_failed_at_s: float | None = None
) -> Claim:
    return Claim(key, message_id, attempt, first_failed_at_s)


@dataclass
class Backend:
    """One ledger backend under test, and a way to see its stored expiry."""

    name: str
    settings: Settings
    world: World | None = None
    store: MemoryStore = field(default_factory=MemoryStore)

    @asynccontextmanager
    async def open(self, owner: str, clock: FakeClock) -> AsyncIterator[Ledger]:
        """A ledger for `owner` on this backend's shared storage."""
        if self.name == "memory":
            yield MemoryLedger(
                claim_s=CLAIM_S, ttl_s=TTL_S, owner=owner, clock=clock, store=self.store
            )
        elif self.name == "sqlite":
            async with open_ledger(self.settings.ledger, None, clock=clock, owner=owner) as ledger:
                yield ledger
        else:
            async with (
                open_clients(self.settings.aws) as clients,
                open_ledger(self.settings.ledger, clients, clock=clock, owner=owner) as ledger,
            ):
                yield ledger

    def expires_at(self, key: str) -> float | None:
        """The expiry stored with a key's record, read behind the ledger's back."""
        if self.name == "memory":
            row = self.store.rows.get(key)
            return row[1] if row else None
        if self.name == "sqlite":
            with sqlite3.connect(self.settings.ledger.path) as conn:
                found = conn.execute(
                    "SELECT expires_at FROM ledger WHERE key = ?", (key,)
                ).fetchone()
            return float(found[0]) if found else None
        assert self.world is not None
        item: dict[str, Any] | None = (
            self.world.client("dynamodb")
            .get_item(TableName=TABLE, Key={"key": {"S": key}})
            .get("Item")
        )
        return float(item["expires_at"]["N"]) if item else None


def ledger_settings(
    make_settings: Callable[..., Settings], backend: str, sqlite_path: Path
) -> Settings:
    return make_settings(
        ledger={
            "backend": backend,
            "path": str(sqlite_path),
            "table": TABLE,
            "claim_s": CLAIM_S,
            "ttl_s": TTL_S,
        }
    )


async def begin_in_batches(
    ledger: Ledger, claims: Sequence[Claim], batch: int
) -> list[tuple[Claim, str]]:
    """Begin `claims` a few at a time, yielding between batches so rivals interleave."""
    answers = []
    for start in range(0, len(claims), batch):
        chunk = claims[start : start + batch]
        for one, begun in zip(chunk, await ledger.begin(chunk), strict=True):
            answers.append((one, begun.status.value))
        await anyio.lowlevel.checkpoint()
    return answers
