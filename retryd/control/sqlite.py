"""Operator state in the ledger's SQLite file: a `control_docs` table beside the ledger's.

Each call opens its own short connection in a worker thread: operator state is
read once per cycle and written by commands, so there is no connection worth
keeping, and nothing to close. `BEGIN IMMEDIATE` makes the version check and the
write one step between processes, as the ledger's writes are.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio.to_thread

from retryd.control.readmodel import ReadModel
from retryd.control.readmodel_sqlite import SqliteReadModel
from retryd.control.store import Body, ControlError, Doc
from retryd.ledger.sqlite import open_wal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS control_docs (
    name TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    expires_at REAL
) WITHOUT ROWID
"""


class SqliteControlStore:
    """A ControlStore in one SQLite file (the ledger's)."""

    backend = "sqlite"

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock

    def _connect(self) -> sqlite3.Connection:
        conn = open_wal(self.path)
        try:
            conn.execute(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _get(self, names: Sequence[str], now_s: float) -> dict[str, Doc]:
        conn = self._connect()
        try:
            rows = conn.execute(
                "SELECT name, version, body FROM control_docs WHERE name IN "
                "(SELECT value FROM json_each(?)) AND (expires_at IS NULL OR expires_at > ?)",
                (json.dumps(list(names)), now_s),
            ).fetchall()
        finally:
            conn.close()
        return {name: Doc(json.loads(body), version) for name, version, body in rows}

    def _put(
        self, name: str, body: Body, version: int, expires_at: float | None, now_s: float
    ) -> bool:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                "SELECT version FROM control_docs WHERE name = ? "
                "AND (expires_at IS NULL OR expires_at > ?)",
                (name, now_s),
            ).fetchone()
            if (row[0] if row else 0) != version:
                conn.execute("ROLLBACK")
                return False
            conn.execute(
                "INSERT OR REPLACE INTO control_docs (name, version, body, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (name, version + 1, json.dumps(body), expires_at),
            )
            conn.execute("COMMIT")
            return True
        finally:
            conn.close()

    async def get(self, names: Sequence[str]) -> dict[str, Doc]:
        if not names:
            return {}
        try:
            return await anyio.to_thread.run_sync(self._get, names, self._clock())
        except (sqlite3.Error, OSError, ValueError) as exc:
            raise ControlError(f"cannot read operator state from {self.path}: {exc}") from exc

    async def put(self, name: str, body: Body, *, version: int, ttl_s: float | None) -> bool:
        now_s = self._clock()
        expires_at = now_s + ttl_s if ttl_s is not None else None
        try:
            return await anyio.to_thread.run_sync(self._put, name, body, version, expires_at, now_s)
        except (sqlite3.Error, OSError, ValueError) as exc:
            raise ControlError(f"cannot write operator state to {self.path}: {exc}") from exc

    def read_model(self) -> ReadModel:
        return SqliteReadModel(self.path, self._clock)
