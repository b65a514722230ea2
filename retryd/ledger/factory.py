"""The ledger the settings name, opened and instrumented: one backend per run, every call counted.

`open_ledger` picks the backend named by `ledger.backend` (memory, sqlite,
dynamodb) and, given Metrics, counts every operation and failure.
`create_table` makes the DynamoDB table for `retryd ledger create-table`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from botocore.exceptions import BotoCoreError, ClientError

from retryd.classify import from_exception
from retryd.ledger.base import (
    Begun,
    Claim,
    Ledger,
    LedgerError,
    ParkBegun,
    ParkCopy,
    Record,
    default_owner,
)
from retryd.ledger.dynamodb import DynamoDbLedger, ensure_table
from retryd.ledger.memory import MemoryLedger
from retryd.ledger.sqlite import SqliteLedger
from retryd.metrics import Metrics
from retryd.settings import LedgerSettings, Settings

if TYPE_CHECKING:
    from retryd.aws import AwsClients

# The `result` label of a commit (or renewal) whose claim another owner had taken over.
COMMIT_LOST = "lost"


class InstrumentedLedger:
    """A Ledger that counts each operation's results and failures on Metrics.

    `read` counts once per call; `begin` once per claim with its BeginStatus;
    `commit` once per claim, "ok" or "lost"; `release` once per claim; `renew`
    once per claim, "ok" or "lost"; `begin-park` once per claim with its
    ParkStatus; `commit-park` once per copy, "ok" or "lost".
    """

    def __init__(self, inner: Ledger, metrics: Metrics) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.owner = inner.owner
        self._metrics = metrics

    @contextmanager
    def _failures_counted(self, operation: str) -> Iterator[None]:
        try:
            yield
        except Exception:
            self._metrics.record_ledger_error(self.backend, operation)
            raise

    def _count(self, operation: str, result: str, times: int = 1) -> None:
        if times:
            self._metrics.record_ledger_op(self.backend, operation, result, times)

    def _count_each(self, operation: str, results: Iterable[str]) -> None:
        # One increment per result, not per claim: a batch's ten claims mostly share one.
        for result, times in Counter(results).items():
            self._count(operation, result, times)

    def _count_held(self, operation: str, held: Iterable[bool]) -> None:
        self._count_each(operation, ("ok" if ok else COMMIT_LOST for ok in held))

    async def read(self, keys: Sequence[str]) -> dict[str, Record]:
        with self._failures_counted("read"):
            records = await self.inner.read(keys)
        self._count("read", "ok")
        return records

    async def begin(self, claims: Sequence[Claim]) -> list[Begun]:
        with self._failures_counted("begin"):
            answers = await self.inner.begin(claims)
        self._count_each("begin", (answer.status.value for answer in answers))
        return answers

    async def commit(self, claims: Sequence[Claim], at_s: float) -> list[bool]:
        with self._failures_counted("commit"):
            held = await self.inner.commit(claims, at_s)
        self._count_held("commit", held)
        return held

    async def release(self, claims: Sequence[Claim]) -> None:
        with self._failures_counted("release"):
            await self.inner.release(claims)
        self._count("release", "ok", len(claims))

    async def renew(self, claims: Sequence[Claim]) -> list[bool]:
        with self._failures_counted("renew"):
            held = await self.inner.renew(claims)
        self._count_held("renew", held)
        return held

    async def begin_park(self, claims: Sequence[Claim]) -> list[ParkBegun]:
        with self._failures_counted("begin-park"):
            answers = await self.inner.begin_park(claims)
        self._count_each("begin-park", (answer.status.value for answer in answers))
        return answers

    async def commit_park(self, copies: Sequence[ParkCopy]) -> list[bool]:
        with self._failures_counted("commit-park"):
            held = await self.inner.commit_park(copies)
        self._count_held("commit-park", held)
        return held

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def _opened_backend(
    settings: LedgerSettings,
    clients: AwsClients | None,
    clock: Callable[[], float],
    owner: str,
) -> AsyncIterator[Ledger]:
    if settings.backend == "memory":
        yield MemoryLedger(
            claim_s=settings.claim_renew_s, ttl_s=settings.ttl_s, owner=owner, clock=clock
        )
    elif settings.backend == "sqlite":
        yield await SqliteLedger.open(
            Path(settings.path),
            claim_s=settings.claim_renew_s,
            ttl_s=settings.ttl_s,
            owner=owner,
            clock=clock,
        )
    elif clients is None:
        raise ValueError("the dynamodb ledger needs AwsClients; none were given")
    else:
        # Its flushing task lives in this context: the length of the run.
        async with DynamoDbLedger(
            clients.dynamodb,
            settings.table,
            claim_s=settings.claim_renew_s,
            ttl_s=settings.ttl_s,
            owner=owner,
            clock=clock,
        ) as ledger:
            yield ledger


@asynccontextmanager
async def open_ledger(
    settings: LedgerSettings,
    clients: AwsClients | None,
    metrics: Metrics | None = None,
    *,
    clock: Callable[[], float] = time.time,
    owner: str | None = None,
) -> AsyncIterator[Ledger]:
    """The configured ledger for the length of a run; closed (even when cancelled) at its end."""
    async with _opened_backend(settings, clients, clock, owner or default_owner()) as ledger:
        try:
            yield InstrumentedLedger(ledger, metrics) if metrics is not None else ledger
        finally:
            with anyio.CancelScope(shield=True):
                await ledger.aclose()


async def create_table(settings: Settings) -> str:
    """Create `ledger.table` with TTL on, or check an existing one; a line saying which."""
    from retryd.aws import open_clients  # noqa: PLC0415 - see dynamodb.py's import of Client

    async with open_clients(settings.aws) as clients:
        try:
            return await ensure_table(clients.dynamodb, settings.ledger.table)
        except (BotoCoreError, ClientError) as exc:
            raise LedgerError("dynamodb", "create-table", from_exception(exc)) from exc
