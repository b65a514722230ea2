"""Opening the ledger's SQLite file while another connection holds its write lock."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

from retryd.control.sqlite import SqliteControlStore
from retryd.ledger.sqlite import open_wal


def _rollback_journal_file(path: Path) -> None:
    """A file as SQLite makes it, in rollback-journal mode, never yet switched to WAL."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE other (x)")
    conn.close()


def _hold_write_lock(path: Path, hold_s: float) -> threading.Thread:
    """Another process's writer: takes the write lock, keeps it `hold_s`, commits."""
    taken = threading.Event()

    def writer() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        taken.set()
        threading.Event().wait(hold_s)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    assert taken.wait(5)
    return thread


def test_the_switch_to_wal_waits_for_a_writer_instead_of_failing_at_once(tmp_path: Path) -> None:
    """SQLite skips the busy handler for the switch; open_wal waits as the busy timeout would."""
    path = tmp_path / "ledger.sqlite3"
    _rollback_journal_file(path)
    writer = _hold_write_lock(path, 0.3)
    try:
        conn = open_wal(path)
    finally:
        writer.join()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_an_operator_command_reads_a_new_file_the_daemon_is_writing(tmp_path: Path) -> None:
    """The control store's read, opened while a write is in progress, waits and succeeds."""
    path = tmp_path / "ledger.sqlite3"
    _rollback_journal_file(path)
    writer = _hold_write_lock(path, 0.3)
    try:
        found = anyio.run(SqliteControlStore(path).get, ["pauses"])
    finally:
        writer.join()
    assert found == {}


def test_a_file_that_is_not_a_database_fails_at_once(tmp_path: Path) -> None:
    """Only a busy file is waited for: other errors are raised, not retried for ten seconds."""
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError, match="not a database"):
        open_wal(path)
