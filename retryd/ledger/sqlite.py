"""The SQLite ledger: the embedded default for a single replica; it survives restarts.

The ledger calls of every batch in flight are gathered into one transaction
(group commit, `group.py`): the calls that come while a transaction is out run
whole in the next one, in a worker thread through `anyio.to_thread.run_sync` on
one connection, each in a savepoint of its own, and each caller is answered once
that transaction has committed. `BEGIN IMMEDIATE` takes the database's write lock
before reading, so two processes pointed at one file (a rolling restart, a stray
`retryd once`) still read-decide-write one at a time; WAL mode keeps readers from
blocking that writer.

Why not aiosqlite: it is built on asyncio futures, while retryd runs on anyio;
and it hops between the event loop and its thread once per statement, where a
whole read-decide-write transaction here is a single hop. The stdlib module in
a worker thread does the same job with no extra dependency.

The file's schema version is SQLite's `user_version`. Opening a file written by
an older retryd upgrades it, step by step, inside the same transaction that
opens it, so a failed upgrade leaves the file as it was.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from retryd.classify import from_exception
from retryd.ledger.base import (
    Begun,
    Claim,
    ClaimState,
    Decide,
    LedgerError,
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
from retryd.ledger.group import Answer, GroupCommit
from retryd.models import ErrorClass, SendError

T = TypeVar("T")

# 1: the first schema. 2: the `committed` column (JSON) of recently committed messages.
# 3: the `abandoned` column (JSON) of begun claims abandoned and taken over.
# 4: the `parked` column (JSON) of recently parked messages. The version names the columns
# and what they mean, not how the table is laid out on disk (see _SCHEMA).
SCHEMA_VERSION = 4
# How long a transaction waits for another process's write lock before failing.
BUSY_TIMEOUT_MS = 10_000
# Expired rows are deleted on open and then at most this often, inside a write.
PRUNE_INTERVAL_S = 3_600.0
# Group commit: how long the first call of a transaction waits for others to ride with
# it, and the most calls one transaction takes. Not at all: the calls that come while a
# transaction is in its thread ride in the next, and that is the grouping there is when
# the CPU is the limit. A window of 2 ms cost each call that waited it out alone a
# timer, a wakeup and a cancellation; it saved ledger CPU only with 32 batches in
# flight (15 %), and cost 20 to 40 % at 1 to 4, where a CPU-bound process runs
# (bench.ledger). GroupCommit still takes a window for a caller that wants one.
GROUP_WINDOW_S = 0.0
GROUP_MAX_OPS = 64

# What a ledger call can fail with; a key that is not valid Unicode (a lone
# surrogate from a JSON escape) cannot be bound, which is a UnicodeError, and an
# integer past SQLite's 64 bits an OverflowError.
_FAILURES = (sqlite3.Error, OSError, UnicodeError, OverflowError)

_COLUMNS = (
    "key",
    "attempts",
    "first_failed_at_s",
    "last_attempt_at_s",
    "claim_message_id",
    "claim_attempt",
    "claim_state",
    "claim_owner",
    "claim_expires_at_s",
    "committed",
    "abandoned",
    "parked",
)
# One statement however many keys: they travel as one JSON array parameter,
# so there is no bound-variable limit to chunk around.
_SELECT_LIVE = (
    f"SELECT {', '.join(_COLUMNS)} FROM ledger "  # noqa: S608 - fixed column names
    "WHERE key IN (SELECT value FROM json_each(?)) AND expires_at > ?"
)
# An upsert, not INSERT OR REPLACE: REPLACE deletes the row and inserts it again under a
# new rowid, moving it (and its key's index entry); an UPDATE leaves both where they are
# (SQLite 3.24 and later, https://sqlite.org/lang_upsert.html).
_UPSERT = (
    f"INSERT INTO ledger ({', '.join(_COLUMNS)}, expires_at) "  # noqa: S608 - fixed columns
    f"VALUES ({', '.join('?' for _ in _COLUMNS)}, ?) ON CONFLICT (key) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in (*_COLUMNS[1:], "expires_at"))
)


# A new file's table. Keys are hashes, so a table ordered by key (a WITHOUT ROWID table
# keyed by `key`, as files created by earlier releases have) puts each row of a transaction
# on a page of its own, and COMMIT writes each of those pages to the WAL whole. Ordered by
# rowid, new rows go to the end of the table and the upsert updates a row where it is, so
# a batch's begin and commit touch the few pages its rows share (and the key index, when a
# key is new): COMMIT wrote half as much, and the ledger thread used a quarter less CPU
# (docs/performance.md). Both layouts answer the same statements, so an older file is left
# as it is: rebuilding it would hold the write lock for seconds per 100,000 keys, against
# every other process on the file, and a retryd of an earlier release opens either.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    attempts INTEGER NOT NULL,
    first_failed_at_s REAL,
    last_attempt_at_s REAL,
    claim_message_id TEXT,
    claim_attempt INTEGER NOT NULL,
    claim_state TEXT,
    claim_owner TEXT,
    claim_expires_at_s REAL NOT NULL,
    expires_at REAL NOT NULL,
    committed TEXT NOT NULL DEFAULT '[]',
    abandoned TEXT NOT NULL DEFAULT '[]',
    parked TEXT NOT NULL DEFAULT '[]'
)""",
    "CREATE INDEX IF NOT EXISTS ledger_expires_at ON ledger (expires_at)",
)
# The statement that takes a file from version N to N + 1. Rows written before a
# column existed get its default: no record had messages to remember there.
_UPGRADES = {
    1: "ALTER TABLE ledger ADD COLUMN committed TEXT NOT NULL DEFAULT '[]'",
    2: "ALTER TABLE ledger ADD COLUMN abandoned TEXT NOT NULL DEFAULT '[]'",
    3: "ALTER TABLE ledger ADD COLUMN parked TEXT NOT NULL DEFAULT '[]'",
}

Row = tuple[
    str,
    int,
    float | None,
    float | None,
    str | None,
    int,
    str | None,
    str | None,
    float,
    str,
    str,
    str,
]


# An empty list column, by far the most common (most keys abandon and park nothing): read
# and written without the JSON module, which cost a tenth of the ledger's time per call.
_EMPTY = "[]"


def _json_list(items: tuple[tuple[object, ...], ...]) -> str:
    return json.dumps([list(item) for item in items]) if items else _EMPTY


def _pairs(text: str, key: str, column: str) -> tuple[tuple[str, int], ...]:
    """The `committed` or `abandoned` column: a JSON array of [message id, attempt] pairs."""
    if text == _EMPTY:
        return ()
    try:
        pairs = json.loads(text)
    except ValueError:
        pairs = None
    if isinstance(pairs, list) and all(_is_pair(pair) for pair in pairs):
        return tuple((pair[0], pair[1]) for pair in pairs)
    # A hand-edited or damaged row: fail the call, never read it as "nothing there".
    raise sqlite3.DataError(
        f"key {key!r} has a {column} column that is not a JSON list of "
        f"[message id, attempt] pairs: {text[:200]!r}"
    )


def _is_pair(pair: object) -> bool:
    match pair:
        case [str(), int() as attempt] if not isinstance(attempt, bool):
            return True
    return False


def _copies(text: str, key: str) -> tuple[tuple[str, int, str], ...]:
    """The `parked` column: a JSON array of [message id, attempt, parking message id]."""
    if text == _EMPTY:
        return ()
    try:
        copies = json.loads(text)
    except ValueError:
        copies = None
    if isinstance(copies, list) and all(_is_copy(copy) for copy in copies):
        return tuple((copy[0], copy[1], copy[2]) for copy in copies)
    raise sqlite3.DataError(
        f"key {key!r} has a parked column that is not a JSON list of "
        f"[message id, attempt, parking message id]: {text[:200]!r}"
    )


def _is_copy(copy: object) -> bool:
    match copy:
        case [str(), int() as attempt, str()] if not isinstance(attempt, bool):
            return True
    return False


def _claim_state(state: str | None, key: str) -> ClaimState | None:
    if state is None:
        return None
    try:
        return ClaimState(state)
    except ValueError:
        # As for a damaged list column: fail the call, naming the key, never guess.
        raise sqlite3.DataError(
            f"key {key!r} has a claim_state {state!r} retryd never writes"
        ) from None


def _record(row: Row) -> Record:
    return Record(
        key=row[0],
        attempts=row[1],
        first_failed_at_s=row[2],
        last_attempt_at_s=row[3],
        claim_message_id=row[4],
        claim_attempt=row[5],
        claim_state=_claim_state(row[6], row[0]),
        claim_owner=row[7],
        claim_expires_at_s=row[8],
        committed=_pairs(row[9], row[0], "committed"),
        abandoned=_pairs(row[10], row[0], "abandoned"),
        parked=_copies(row[11], row[0]),
    )


def _row(record: Record, expires_at: float) -> tuple[object, ...]:
    return (
        record.key,
        record.attempts,
        record.first_failed_at_s,
        record.last_attempt_at_s,
        record.claim_message_id,
        record.claim_attempt,
        record.claim_state.value if record.claim_state is not None else None,
        record.claim_owner,
        record.claim_expires_at_s,
        _json_list(record.committed),
        _json_list(record.abandoned),
        _json_list(record.parked),
        expires_at,
    )


def _select_live(conn: sqlite3.Connection, keys: Sequence[str], now_s: float) -> dict[str, Record]:
    rows = conn.execute(_SELECT_LIVE, (json.dumps(list(dict.fromkeys(keys))), now_s)).fetchall()
    return {row[0]: _record(row) for row in rows}


def open_wal(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Connect to the ledger's file (the control store's too), switched to WAL mode.

    The switch happens once in the file's life, but every connection asks for it,
    since any of them may be the first. SQLite takes an exclusive lock for it and,
    where waiting could deadlock (another connection holds the write lock), fails
    at once with SQLITE_BUSY instead of calling the busy handler
    (https://sqlite.org/c3ref/busy_handler.html). Two processes opening a new file
    together, or a command opening it while the daemon writes, meet exactly that;
    so the switch is retried here for as long as the busy timeout would have waited.
    """
    # isolation_level=None: transactions are begun explicitly, as BEGIN IMMEDIATE.
    conn = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=check_same_thread,
    )
    give_up_at = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause_s = 0.005
    try:
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() >= give_up_at:
                    raise
            else:
                return conn
            time.sleep(pause_s)
            pause_s = min(pause_s * 2, 0.1)
    except BaseException:
        conn.close()
        raise


def _connect(path: Path, now_s: float) -> sqlite3.Connection:
    # check_same_thread=False: anyio's worker threads take turns, under the ledger's lock.
    conn = open_wal(path, check_same_thread=False)
    try:
        # NORMAL under WAL: a commit is not fsynced, the WAL is at checkpoints
        # (https://sqlite.org/pragma.html#pragma_synchronous). A process crash (kill,
        # OOM, deploy) loses nothing; a power loss or kernel crash can roll back the
        # last seconds of commits, never corrupting the file. Then a message still in
        # its DLQ may be resubmitted once more (retryd is at-least-once anyway) and a
        # key's count may be one short. It spares an fsync per call, 3 per batch.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        _create_schema(conn, path)
        conn.execute("DELETE FROM ledger WHERE expires_at <= ?", (now_s,))
        conn.execute("COMMIT")
    except BaseException:
        # Closing rolls back whatever the failed step left open.
        conn.close()
        raise
    return conn


def _create_schema(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"{path} has ledger schema {version}, written by a newer retryd "
            f"(this one knows {SCHEMA_VERSION})"
        )
    if version == 0:
        # A new file (or one that never got as far as a schema): today's schema, whole.
        for statement in _SCHEMA:
            conn.execute(statement)
    else:
        for from_version in range(version, SCHEMA_VERSION):
            conn.execute(_UPGRADES[from_version])
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class _Call:
    """One ledger call waiting for its transaction: its work, and whether it writes."""

    __slots__ = ("now_s", "work", "writes")

    def __init__(
        self, work: Callable[[sqlite3.Connection], object], *, now_s: float, writes: bool
    ) -> None:
        self.work = work
        self.now_s = now_s
        self.writes = writes


class SqliteLedger:
    """A Ledger in one SQLite file, one connection, one transaction per group of calls."""

    backend: str = "sqlite"

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        path: Path,
        claim_s: float,
        ttl_s: float,
        owner: str,
        clock: Callable[[], float],
        pruned_at_s: float,
        group_window_s: float = GROUP_WINDOW_S,
        group_max_ops: int = GROUP_MAX_OPS,
    ) -> None:
        self.owner = owner
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._claim_s = claim_s
        self._ttl_s = ttl_s
        self._clock = clock
        self._pruned_at_s = pruned_at_s
        # One connection is not safe for two threads at once.
        self._lock = anyio.Lock()
        self.group: GroupCommit[_Call, object] = GroupCommit(
            self._flush_in_thread, window_s=group_window_s, max_ops=group_max_ops, lock=self._lock
        )

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        claim_s: float,
        ttl_s: float,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
        group_window_s: float = GROUP_WINDOW_S,
        group_max_ops: int = GROUP_MAX_OPS,
    ) -> SqliteLedger:
        """Open (creating if needed) the ledger file, its schema, and prune expired rows."""
        now_s = clock()
        try:
            conn = await anyio.to_thread.run_sync(_connect, path, now_s)
        except _FAILURES as exc:
            raise cls._error("open", exc, path) from exc
        return cls(
            conn,
            path=path,
            claim_s=claim_s,
            ttl_s=ttl_s,
            owner=owner or default_owner(),
            clock=clock,
            pruned_at_s=now_s,
            group_window_s=group_window_s,
            group_max_ops=group_max_ops,
        )

    @staticmethod
    def _error(operation: str, exc: BaseException, path: Path) -> LedgerError:
        error = from_exception(exc)
        return LedgerError(
            "sqlite",
            operation,
            SendError(error.error_class, error.code, f"{path}: {error.message}"),
        )

    def _closed(self, operation: str) -> LedgerError:
        return LedgerError(
            self.backend,
            operation,
            SendError(ErrorClass.TRANSIENT, "retryd.LedgerClosed", "the ledger is closed"),
        )

    async def _run(
        self,
        operation: str,
        work: Callable[[sqlite3.Connection], T],
        *,
        now_s: float | None = None,
        writes: bool = True,
    ) -> T:
        if self._conn is None:
            raise self._closed(operation)
        if now_s is None:
            now_s = self._clock()
        try:
            # A call taken into a transaction is applied whole or not at all, whether or
            # not its caller, cancelled meanwhile, still waits for the answer.
            result = await self.group.call(_Call(work, now_s=now_s, writes=writes))
        except _FAILURES as exc:
            raise self._error(operation, exc, self.path) from exc
        return result  # type: ignore[return-value]  # what `work` returned, for this call

    async def _flush_in_thread(self, calls: Sequence[_Call]) -> list[Answer[object]]:
        # The whole transaction is one hop to a worker thread, not one per call.
        return await anyio.to_thread.run_sync(self._flush, calls)

    def _flush(self, calls: Sequence[_Call]) -> list[Answer[object]]:
        """One transaction for a group of calls, each in a savepoint: one failing fails alone."""
        conn = self._conn
        if conn is None:
            raise self._closed("flush")
        # A group of reads alone need not wait for another process's write lock.
        conn.execute("BEGIN IMMEDIATE" if any(call.writes for call in calls) else "BEGIN")
        answers: list[Answer[object]] = []
        try:
            now_s = max(call.now_s for call in calls)
            if now_s - self._pruned_at_s >= PRUNE_INTERVAL_S:
                conn.execute("DELETE FROM ledger WHERE expires_at <= ?", (now_s,))
                self._pruned_at_s = now_s
            for call in calls:
                conn.execute("SAVEPOINT call")
                try:
                    result = call.work(conn)
                except Exception as exc:  # noqa: BLE001 - the answer of this call alone
                    conn.execute("ROLLBACK TO call")
                    answers.append((None, exc))
                else:
                    answers.append((result, None))
                conn.execute("RELEASE call")
            conn.execute("COMMIT")
        except BaseException:
            # Left open, the transaction would make every later BEGIN fail.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return answers

    def _transaction(
        self, claims: Sequence[Claim], now_s: float, decide: Decide[R], conn: sqlite3.Connection
    ) -> list[R]:
        current = _select_live(conn, [claim.key for claim in claims], now_s)
        answers, changed = settle(current, claims, decide)
        expires_at = now_s + self._ttl_s
        conn.executemany(_UPSERT, [_row(record, expires_at) for record in changed.values()])
        return answers

    async def _apply(
        self, operation: str, claims: Sequence[Claim], now_s: float, decide: Decide[R]
    ) -> list[R]:
        if not claims:
            return []
        work = partial(self._transaction, claims, now_s, decide)
        return await self._run(operation, work, now_s=now_s)

    async def read(self, keys: Sequence[str]) -> dict[str, Record]:
        if not keys:
            return {}
        now_s = self._clock()
        return await self._run(
            "read", lambda conn: _select_live(conn, keys, now_s), now_s=now_s, writes=False
        )

    async def begin(self, claims: Sequence[Claim]) -> list[Begun]:
        now_s = self._clock()
        decide = partial(decide_begin, owner=self.owner, now_s=now_s, claim_s=self._claim_s)
        return await self._apply("begin", claims, now_s, decide)

    async def commit(self, claims: Sequence[Claim], at_s: float) -> list[bool]:
        decide = partial(decide_commit, owner=self.owner, at_s=at_s)
        return await self._apply("commit", claims, self._clock(), decide)

    async def release(self, claims: Sequence[Claim]) -> None:
        decide = partial(decide_release, owner=self.owner)
        await self._apply("release", claims, self._clock(), decide)

    async def renew(self, claims: Sequence[Claim]) -> list[bool]:
        now_s = self._clock()
        decide = partial(decide_renew, owner=self.owner, now_s=now_s, claim_s=self._claim_s)
        return await self._apply("renew", claims, now_s, decide)

    async def begin_park(self, claims: Sequence[Claim]) -> list[ParkBegun]:
        now_s = self._clock()
        decide = partial(decide_begin_park, owner=self.owner, now_s=now_s, claim_s=self._claim_s)
        return await self._apply("begin-park", claims, now_s, decide)

    async def commit_park(self, copies: Sequence[ParkCopy]) -> list[bool]:
        claims, decide = park_copies_decide(copies, self.owner)
        return await self._apply("commit-park", claims, self._clock(), decide)

    async def aclose(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await anyio.to_thread.run_sync(conn.close)
