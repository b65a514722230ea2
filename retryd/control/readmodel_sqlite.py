"""The console's read model in the ledger's SQLite file: indexed tables, not documents.

A thousand DLQs and a hundred thousand parked copies are too many to decode per
request (a page would take seconds), so SQLite keeps them as rows:
- `view_dlqs`: one row per DLQ (its view as JSON; the read is one bounded query);
- `view_parked`: one row per parked copy, indexed by time, reason, target, source
  queue and failure group, so the overview's counts are indexed GROUP BYs and a
  search walks the time index newest first; the text search reads a `haystack`
  column (error, id and key, case-folded) with instr(), a scan of the window's
  rows and no decoding;
- `view_parked_hours`: how many copies each hour's bound left out.
The writer deletes what expired as it writes (the daemon writes every cycle it parks
or sees a DLQ change), so there is no sweeper; a reader also ignores what expired.
Each call opens a short connection in a worker thread, as the control store does.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread

from retryd.control.readmodel import (
    DLQ_VIEW_TTL_S,
    DLQS_KEEP,
    GROUPS_PER_DLQ_KEEP,
    PARKED_BUCKET_S,
    PARKED_PER_HOUR,
    Cursor,
    DlqView,
    ParkedCopy,
    ParkedCounts,
    ParkedPage,
    ParkingQuery,
)
from retryd.control.store import ControlError
from retryd.ledger.sqlite import open_wal

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS view_dlqs (
        arn TEXT PRIMARY KEY NOT NULL,
        name TEXT NOT NULL,
        at_s REAL NOT NULL,
        body TEXT NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS view_dlqs_at ON view_dlqs (at_s)",
    """CREATE TABLE IF NOT EXISTS view_parked (
        message_id TEXT NOT NULL,
        at_s REAL NOT NULL,
        hour INTEGER NOT NULL,
        reason TEXT NOT NULL,
        target TEXT NOT NULL,
        group_id TEXT NOT NULL,
        source_queue TEXT NOT NULL,
        key TEXT NOT NULL,
        error TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        haystack TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS view_parked_time ON view_parked (at_s, message_id)",
    "CREATE INDEX IF NOT EXISTS view_parked_reason ON view_parked (reason, at_s)",
    "CREATE INDEX IF NOT EXISTS view_parked_target ON view_parked (target, at_s)",
    "CREATE INDEX IF NOT EXISTS view_parked_queue ON view_parked (source_queue, at_s)",
    "CREATE INDEX IF NOT EXISTS view_parked_group ON view_parked (group_id, at_s)",
    "CREATE INDEX IF NOT EXISTS view_parked_hour ON view_parked (hour)",
    "CREATE INDEX IF NOT EXISTS view_parked_expires ON view_parked (expires_at)",
    """CREATE TABLE IF NOT EXISTS view_parked_hours (
        hour INTEGER PRIMARY KEY NOT NULL,
        dropped INTEGER NOT NULL,
        expires_at REAL NOT NULL
    )""",
)
# A separator no case-folded text search can match across: control characters are
# not searched for.
_SEPARATOR = "\x1f"
_COPY_COLUMNS = "message_id, reason, target, group_id, source_queue, key, error, at_s, size_bytes"


def haystack(copy: ParkedCopy) -> str:
    """What the text search looks in: the error, the message id and the key, case-folded."""
    return _SEPARATOR.join(part.casefold() for part in (copy.error, copy.message_id, copy.key))


def _where(query: ParkingQuery, since_s: float, clock_s: float) -> tuple[str, list[Any]]:
    """The query's filters as SQL (each one the same test as ParkingQuery.matches), within
    the window from `since_s` and not expired by the store's clock."""
    clauses = ["at_s >= ?", "expires_at > ?"]
    params: list[Any] = [since_s, clock_s]
    if query.reason:
        clauses.append("reason = ?")
        params.append(query.reason)
    if query.group:
        clauses.append("group_id = ?")
        params.append(query.group)
    if query.target:
        clauses.append("instr(target, ?) > 0")
        params.append(query.target)
    if query.source_queue:
        clauses.append("instr(source_queue, ?) > 0")
        params.append(query.source_queue)
    if query.since_s is not None:
        clauses.append("at_s >= ?")
        params.append(query.since_s)
    if query.until_s is not None:
        clauses.append("at_s <= ?")
        params.append(query.until_s)
    if query.text:
        clauses.append("instr(haystack, ?) > 0")
        params.append(query.text.casefold())
    return " AND ".join(clauses), params


def _copy(row: Sequence[Any]) -> ParkedCopy:
    return ParkedCopy(
        message_id=row[0],
        reason=row[1],
        target=row[2],
        group=row[3],
        source_queue=row[4],
        key=row[5],
        error=row[6],
        at_s=row[7],
        size_bytes=row[8],
    )


def _counted(conn: sqlite3.Connection, column: str, where: str, params: list[Any]) -> list[Any]:
    # Ties in the order the overview always showed them: the newest first.
    return conn.execute(
        f"SELECT {column}, COUNT(*) AS n FROM view_parked WHERE {where} "  # noqa: S608 - column is ours
        f"GROUP BY {column} ORDER BY n DESC, MAX(at_s) DESC, {column}",
        params,
    ).fetchall()


class SqliteReadModel:
    """The ReadModel in the ledger's SQLite file."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self.path = path
        self._clock = clock

    def _connect(self) -> sqlite3.Connection:
        conn = open_wal(self.path)
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _run(self, what: str, work: Callable[[sqlite3.Connection], Any]) -> Any:
        def in_thread() -> Any:
            conn = self._connect()
            try:
                return work(conn)
            finally:
                conn.close()

        try:
            return await anyio.to_thread.run_sync(in_thread)
        except (sqlite3.Error, OSError, ValueError) as exc:
            raise ControlError(
                f"cannot {what} the console's read model in {self.path}: {exc}"
            ) from exc

    # -- writing (the daemon) -------------------------------------------------------

    async def record_dlq(self, view: DlqView) -> None:
        now_s = self._clock()
        body = json.dumps(
            DlqView(
                view.name,
                view.url,
                view.arn,
                view.at_s,
                view.groups[:GROUPS_PER_DLQ_KEEP],
                view.feeds,
                view.route,
                view.sampled,
            ).to_json()
        )

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM view_dlqs WHERE expires_at <= ?", (now_s,))
            conn.execute(
                "INSERT OR REPLACE INTO view_dlqs (arn, name, at_s, body, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (view.arn, view.name, view.at_s, body, now_s + DLQ_VIEW_TTL_S),
            )
            # The newest DLQS_KEEP stay; a count first, so the common case deletes nothing.
            (count,) = conn.execute("SELECT COUNT(*) FROM view_dlqs").fetchone()
            if count > DLQS_KEEP:
                conn.execute(
                    "DELETE FROM view_dlqs WHERE arn IN "
                    "(SELECT arn FROM view_dlqs ORDER BY at_s, arn LIMIT ?)",
                    (count - DLQS_KEEP,),
                )
            conn.execute("COMMIT")

        await self._run("write", write)

    async def record_parked(self, copies: Sequence[ParkedCopy], *, ttl_s: float) -> None:
        if not copies:
            return
        now_s = self._clock()
        expires_at = now_s + ttl_s
        # In _COPY_COLUMNS' order, then hour, haystack, expires_at.
        rows = [
            (
                c.message_id,
                c.reason,
                c.target,
                c.group,
                c.source_queue,
                c.key,
                c.error,
                c.at_s,
                c.size_bytes,
                int(c.at_s // PARKED_BUCKET_S),
                haystack(c),
                expires_at,
            )
            for c in (copy.clipped() for copy in copies)
        ]
        hours = sorted({row[9] for row in rows})

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM view_parked WHERE expires_at <= ?", (now_s,))
            conn.execute("DELETE FROM view_parked_hours WHERE expires_at <= ?", (now_s,))
            conn.executemany(
                f"INSERT INTO view_parked ({_COPY_COLUMNS}, hour, haystack, expires_at) "  # noqa: S608 - ours
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            for hour in hours:
                _bound_hour(conn, hour, expires_at)
            conn.execute("COMMIT")

        await self._run("write", write)

    # -- reading (the console) ------------------------------------------------------

    async def dlqs(self) -> list[DlqView]:
        now_s = self._clock()

        def read(conn: sqlite3.Connection) -> list[str]:
            return [
                body
                for (body,) in conn.execute(
                    "SELECT body FROM view_dlqs WHERE expires_at > ? ORDER BY name, arn LIMIT ?",
                    (now_s, DLQS_KEEP),
                )
            ]

        bodies: list[str] = await self._run("read", read)
        return [DlqView.from_json(json.loads(body)) for body in bodies]

    async def parked(
        self,
        query: ParkingQuery,
        *,
        since_s: float,
        now_s: float,
        page_size: int,
        offset: int = 0,
        after: Cursor | None = None,
    ) -> ParkedPage:
        # Expiry goes by the store's clock (as the writer set it); the window by the reader's.
        clock_s = self._clock()
        where, params = _where(query, since_s, clock_s)

        def read(conn: sqlite3.Connection) -> ParkedPage:
            (total,) = conn.execute(
                f"SELECT COUNT(*) FROM view_parked WHERE {where}",  # noqa: S608 - ours
                params,
            ).fetchone()
            page_where, page_params = where, list(params)
            skip = offset
            if after is not None:
                page_where += " AND (at_s < ? OR (at_s = ? AND message_id > ?))"
                page_params += [after.at_s, after.at_s, after.message_id]
                skip = 0
            # One more than a page, to know whether another follows.
            rows = conn.execute(
                f"SELECT {_COPY_COLUMNS} FROM view_parked "  # noqa: S608 - ours
                f"WHERE {page_where} ORDER BY at_s DESC, message_id LIMIT ? OFFSET ?",
                [*page_params, page_size + 1, skip],
            ).fetchall()
            shown = [_copy(row) for row in rows[:page_size]]
            more = len(rows) > page_size
            cursor = Cursor(shown[-1].at_s, shown[-1].message_id) if shown and more else None
            return ParkedPage(shown, total, _not_indexed(conn, since_s, clock_s), cursor)

        page: ParkedPage = await self._run("read", read)
        return page

    async def parked_counts(self, *, since_s: float, now_s: float) -> ParkedCounts:
        clock_s = self._clock()
        where, params = _where(ParkingQuery(), since_s, clock_s)

        def read(conn: sqlite3.Connection) -> ParkedCounts:
            by_reason = _counted(conn, "reason", where, params)
            by_target = _counted(conn, "target", where, params)
            return ParkedCounts(
                sum(n for _, n in by_reason),
                _not_indexed(conn, since_s, clock_s),
                [(name, n) for name, n in by_reason],
                [(name, n) for name, n in by_target],
            )

        counts: ParkedCounts = await self._run("read", read)
        return counts


def _bound_hour(conn: sqlite3.Connection, hour: int, expires_at: float) -> None:
    """Keep the hour's newest PARKED_PER_HOUR copies (the last written), count the rest."""
    (count,) = conn.execute("SELECT COUNT(*) FROM view_parked WHERE hour = ?", (hour,)).fetchone()
    excess = count - PARKED_PER_HOUR
    if excess <= 0:
        return
    conn.execute(
        "DELETE FROM view_parked WHERE rowid IN "
        "(SELECT rowid FROM view_parked WHERE hour = ? ORDER BY rowid LIMIT ?)",
        (hour, excess),
    )
    conn.execute(
        "INSERT INTO view_parked_hours (hour, dropped, expires_at) VALUES (?, ?, ?) "
        "ON CONFLICT (hour) DO UPDATE SET dropped = dropped + excluded.dropped, "
        "expires_at = excluded.expires_at",
        (hour, excess, expires_at),
    )


def _not_indexed(conn: sqlite3.Connection, since_s: float, clock_s: float) -> int:
    (dropped,) = conn.execute(
        "SELECT COALESCE(SUM(dropped), 0) FROM view_parked_hours "
        "WHERE hour >= ? AND expires_at > ?",
        (int(since_s // PARKED_BUCKET_S), clock_s),
    ).fetchone()
    return int(dropped)
