"""The attempt ledger: each begin rule, commit and release on all three backends; races; faults."""

from __future__ import annotations

import sqlite3
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from retryd.commands.cli import main
from retryd.ledger import (
    BeginStatus,
    Begun,
    Claim,
    ClaimState,
    Ledger,
    LedgerError,
    Record,
    SqliteLedger,
    create_table,
    decide_begin,
    decide_commit,
    decide_release,
    open_ledger,
)
from retryd.ledger.base import COMMITTED_MEMORY, settle
from retryd.ledger.dynamodb import CONFLICT_TRIES
from retryd.ledger.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from retryd.metrics import Metrics
from retryd.models import ErrorClass
from retryd.settings import Settings
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.ledger_helpers import (
    CLAIM_S,
    START_S,
    TABLE,
    TTL_S,
    Backend,
    FakeClock,
    begin_in_batches,
    claim,
    ledger_settings,
    run,
)
from tests.world import World

STARTED, RESUMED, DONE, BUSY = (
    BeginStatus.STARTED,
    BeginStatus.RESUMED,
    BeginStatus.DONE,
    BeginStatus.BUSY,
)


# -- begin: one test per rule -------------------------------------------------------------


def test_a_key_with_no_record_is_started_and_its_claim_stored(
    backend: Backend, clock: FakeClock
) -> None:
    """No record: STARTED with the claim's attempt; the record shows our BEGUN claim."""

    async def body() -> None:
        async with backend.open("a", clock) as ledger:
            [begun] = await ledger.begin([claim("k", "m1", attempt=3, first_failed_at_s=10.0)])
            assert (begun.status, begun.attempt) == (STARTED, 3)
            record = (await ledger.read(["k", "absent"]))["k"]
        assert record == Record(
            key="k",
            attempts=0,
            first_failed_at_s=10.0,
            last_attempt_at_s=None,
            claim_message_id="m1",
            claim_attempt=3,
            claim_state=ClaimState.BEGUN,
            claim_owner="a",
            claim_expires_at_s=START_S + CLAIM_S,
        )

    run(body)


def test_a_committed_message_is_done_for_any_owner(backend: Backend, clock: FakeClock) -> None:
    """Same message, committed: DONE with the committed attempt, for us and for others."""

    async def body() -> None:
        async with backend.open("a", clock) as a, backend.open("b", clock) as b:
            await a.begin([claim("k", "m1", attempt=2)])
            assert await a.commit([claim("k", "m1", attempt=2)], at_s=START_S + 1) == [True]
            for ledger in (a, b):
                [begun] = await ledger.begin([claim("k", "m1", attempt=5)])
                assert (begun.status, begun.attempt) == (DONE, 2)

    run(body)


def test_our_own_uncommitted_message_resumes_with_its_first_attempt(
    backend: Backend, clock: FakeClock
) -> None:
    """Same message, begun by us and never committed (a crash): RESUMED with the stored attempt."""

    async def body() -> None:
        async with backend.open("a", clock) as ledger:
            await ledger.begin([claim("k", "m1", attempt=2)])
        clock.advance(10)
        async with backend.open("a", clock) as ledger:
            [begun] = await ledger.begin([claim("k", "m1", attempt=3)])
            assert (begun.status, begun.attempt) == (RESUMED, 2)
            record = (await ledger.read(["k"]))["k"]
        # Resuming renews the claim's expiry from now.
        assert record.claim_expires_at_s == clock() + CLAIM_S
        assert (record.claim_state, record.claim_attempt) == (ClaimState.BEGUN, 2)

    run(body)


def test_a_live_claim_of_another_owner_on_the_same_message_is_busy(
    backend: Backend, clock: FakeClock
) -> None:
    """Same message, begun by another owner, not expired: BUSY, and the claim stays theirs."""

    async def body() -> None:
        async with backend.open("a", clock) as a, backend.open("b", clock) as b:
            await a.begin([claim("k", "m1")])
            clock.advance(CLAIM_S - 1)
            assert [x.status for x in await b.begin([claim("k", "m1")])] == [BUSY]
            assert (await b.read(["k"]))["k"].claim_owner == "a"

    run(body)


def test_an_abandoned_claim_on_the_same_message_is_taken_over(
    backend: Backend, clock: FakeClock
) -> None:
    """Same message, begun elsewhere but expired: RESUMED by us; the old owner's commit fails."""

    async def body() -> None:
        async with backend.open("a", clock) as a, backend.open("b", clock) as b:
            await a.begin([claim("k", "m1", attempt=4)])
            clock.advance(CLAIM_S + 1)
            [begun] = await b.begin([claim("k", "m1", attempt=4)])
            assert (begun.status, begun.attempt) == (RESUMED, 4)
            assert await a.commit([claim("k", "m1", attempt=4)], at_s=clock()) == [False]
            assert await b.commit([claim("k", "m1", attempt=4)], at_s=clock()) == [True]
            record = (await a.read(["k"]))["k"]
        assert (record.claim_owner, record.claim_state, record.attempts) == (
            "b",
            ClaimState.COMMITTED,
            4,
        )

    run(body)


def test_an_abandoned_message_is_resumed_as_its_own_attempt_after_a_sibling_committed(
    backend: Backend, clock: FakeClock
) -> None:
    """m1 begun as 1 and abandoned; m2 (same key) takes the expired claim and commits 1; m1
    back is RESUMED as attempt 1, not started as 2, and the count stays 1 once it commits."""

    async def body() -> None:
        async with backend.open("a", clock) as a, backend.open("b", clock) as b:
            await a.begin([claim("k", "m1", attempt=1)])
            clock.advance(CLAIM_S + 1)
            assert [x.status for x in await b.begin([claim("k", "m2", attempt=1)])] == [STARTED]
            assert await b.commit([claim("k", "m2", attempt=1)], at_s=clock()) == [True]
            assert (await b.read(["k"]))["k"].abandoned == (("m1", 1),)
            [begun] = await b.begin([claim("k", "m1", attempt=2)])
            assert (begun.status, begun.attempt) == (RESUMED, 1)
            assert await b.commit([claim("k", "m1", attempt=1)], at_s=clock()) == [True]
            record = (await b.read(["k"]))["k"]
        assert (record.attempts, record.committed, record.abandoned) == (
            1,
            (("m2", 1), ("m1", 1)),
            (),
        )

    run(body)


def test_a_live_claim_of_another_owner_on_another_message_is_busy(
    backend: Backend, clock: FakeClock
) -> None:
    """Different message, same key, live claim elsewhere: BUSY."""

    async def body() -> None:
        async with backend.open("a", clock) as a, backend.open("b", clock) as b:
            await a.begin([claim("k", "m1", attempt=1)])
            [begun] = await b.begin([claim("k", "m2", attempt=1)])
            assert (begun.status, begun.attempt) == (BUSY, 1)

    run(body)


@pytest.mark.parametrize("situation", ["committed", "expired", "ours-committed", "ours-expired"])
def test_another_message_starts_a_new_claim_unless_blocked(
    backend: Backend, clock: FakeClock, situation: str
) -> None:
    """Different message, and the stored claim (ours or not) is committed or expired: STARTED."""

    async def body() -> None:
        async with backend.open("a", clock) as a, backend.open("b", clock) as b:
            await a.begin([claim("k", "m1", attempt=1)])
            if situation.endswith("committed"):
                await a.commit([claim("k", "m1", attempt=1)], at_s=clock())
            else:
                clock.advance(CLAIM_S)
            second = a if situation.startswith("ours") else b
            [begun] = await second.begin([claim("k", "m2", attempt=2)])
            assert (begun.status, begun.attempt) == (STARTED, 2)
            record = (await a.read(["k"]))["k"]
        assert (record.claim_message_id, record.claim_owner) == ("m2", second.owner)
        assert record.attempts == (1 if situation.endswith("committed") else 0)

    run(body)


def test_our_own_live_claim_on_another_message_is_busy(backend: Backend, clock: FakeClock) -> None:
    """Different message, same key, our own live claim: BUSY, and the first claim stays stored."""

    async def body() -> None:
        async with backend.open("a", clock) as ledger:
            answers = await ledger.begin([claim("k", "m1", attempt=1), claim("k", "m2", attempt=1)])
            assert [(x.status, x.attempt) for x in answers] == [(STARTED, 1), (BUSY, 1)]
            clock.advance(CLAIM_S - 1)
            [begun] = await ledger.begin([claim("k", "m2", attempt=1)])
            assert begun.status is BUSY
            record = (await ledger.read(["k"]))["k"]
        assert (record.claim_message_id, record.claim_state) == ("m1", ClaimState.BEGUN)

    run(body)


def test_a_committed_message_stays_done_after_another_message_takes_the_key(
    backend: Backend, clock: FakeClock
) -> None:
    """m1 committed, then m2 on its key begun and committed: m1 back again is DONE as attempt 1."""

    async def body() -> None:
        async with backend.open("a", clock) as a, backend.open("b", clock) as b:
            await a.begin([claim("k", "m1", attempt=1)])
            assert await a.commit([claim("k", "m1", attempt=1)], at_s=clock()) == [True]
            [begun] = await b.begin([claim("k", "m2", attempt=2)])
            assert begun.status is STARTED
            # m1 again while m2's claim is live, and once m2 is committed: DONE both times.
            for ledger in (a, b):
                [again] = await ledger.begin([claim("k", "m1", attempt=2)])
                assert (again.status, again.attempt) == (DONE, 1)
            assert await b.commit([claim("k", "m2", attempt=2)], at_s=clock()) == [True]
            for ledger in (a, b):
                answers = await ledger.begin([claim("k", "m1", attempt=3), claim("k", "m2")])
                assert [(x.status, x.attempt) for x in answers] == [(DONE, 1), (DONE, 2)]
            record = (await a.read(["k"]))["k"]
        assert record.committed == (("m1", 1), ("m2", 2))
        assert (record.claim_message_id, record.attempts) == ("m2", 2)

    run(body)


def test_a_lost_commit_still_makes_its_message_done(backend: Backend, clock: FakeClock) -> None:
    """A commit whose claim was taken over is remembered too: that message is DONE from then."""

    async def body() -> None:
        async with backend.open("a", clock) as a, backend.open("b", clock) as b:
            await a.begin([claim("k", "m1", attempt=1)])
            clock.advance(CLAIM_S + 1)
            await b.begin([claim("k", "m2", attempt=2)])
            # a's copy of m1 did reach the target before its claim ran out.
            assert await a.commit([claim("k", "m1", attempt=1)], at_s=clock()) == [False]
            [begun] = await b.begin([claim("k", "m1", attempt=3)])
            assert (begun.status, begun.attempt) == (DONE, 1)
            record = (await b.read(["k"]))["k"]
        assert (record.claim_message_id, record.claim_owner) == ("m2", "b")
        assert record.committed == (("m1", 1),)

    run(body)


def test_a_key_remembers_only_its_latest_committed_messages(
    backend: Backend, clock: FakeClock
) -> None:
    """After COMMITTED_MEMORY + 1 commits on a key the oldest message is forgotten: STARTED."""
    messages = [f"m{n}" for n in range(COMMITTED_MEMORY + 1)]

    async def body() -> None:
        async with backend.open("a", clock) as ledger:
            for attempt, message in enumerate(messages, start=1):
                await ledger.begin([claim("k", message, attempt=attempt)])
                assert await ledger.commit([claim("k", message, attempt=attempt)], at_s=clock())
            record = (await ledger.read(["k"]))["k"]
            assert (
                record.committed
                == tuple((message, attempt) for attempt, message in enumerate(messages, start=1))[
                    1:
                ]
            )
            answers = await ledger.begin([claim("k", messages[1]), claim("k", messages[0])])
        assert [(x.status, x.attempt) for x in answers] == [(DONE, 2), (STARTED, 1)]

    run(body)


def test_answers_come_in_claim_order_and_same_key_claims_see_each_other(
    backend: Backend, clock: FakeClock
) -> None:
    """One begin over many claims answers each in order; a second claim on a key sees the first."""

    async def body() -> None:
        async with backend.open("a", clock) as a, backend.open("b", clock) as b:
            await b.begin([claim("held", "x")])
            answers = await a.begin(
                [
                    claim("new", "m1", attempt=1),
                    claim("held", "m2", attempt=1),
                    claim("dup", "m3", attempt=1),
                    claim("dup", "m3", attempt=1),
                ]
            )
        assert [x.status for x in answers] == [STARTED, BUSY, STARTED, RESUMED]

    run(body)


# -- commit and release -------------------------------------------------------------------


def test_commit_counts_the_highest_attempt_and_dates_the_last_one(
    backend: Backend, clock: FakeClock
) -> None:
    """attempts = max(stored, claim.attempt); last_attempt_at_s is the commit's at_s."""

    async def body() -> None:
        async with backend.open("a", clock) as ledger:
            await ledger.begin([claim("k", "m1", attempt=3)])
            assert await ledger.commit([claim("k", "m1", attempt=3)], at_s=START_S + 5) == [True]
            await ledger.begin([claim("k", "m2", attempt=2)])
            assert await ledger.commit([claim("k", "m2", attempt=2)], at_s=START_S + 9) == [True]
            # A second commit of the same claim changes nothing and is still ours.
            assert await ledger.commit([claim("k", "m2", attempt=2)], at_s=START_S + 9) == [True]
            record = (await ledger.read(["k"]))["k"]
        assert (record.attempts, record.last_attempt_at_s) == (3, START_S + 9)
        assert (record.claim_message_id, record.claim_state) == ("m2", ClaimState.COMMITTED)

    run(body)


def test_a_commit_without_the_claim_is_refused_but_still_counted(
    backend: Backend, clock: FakeClock
) -> None:
    """A commit for a claim we never held answers False and never lowers or resets the count."""

    async def body() -> None:
        async with backend.open("a", clock) as a, backend.open("b", clock) as b:
            await a.begin([claim("k", "m1", attempt=1)])
            assert await b.commit([claim("k", "m1", attempt=2)], at_s=START_S + 1) == [False]
            assert await b.commit([claim("gone", "m9", attempt=2)], at_s=START_S + 1) == [False]
            records = await a.read(["k", "gone"])
        assert (records["k"].attempts, records["k"].claim_owner) == (2, "a")
        assert records["k"].claim_state is ClaimState.BEGUN
        assert (records["gone"].attempts, records["gone"].claim_state) == (2, None)

    run(body)


def test_release_hands_the_key_back_without_consuming_an_attempt(
    backend: Backend, clock: FakeClock
) -> None:
    """Our released claim frees the key for anyone; a rival's release of it does nothing."""

    async def body() -> None:
        async with backend.open("a", clock) as a, backend.open("b", clock) as b:
            await a.begin([claim("k", "m1", attempt=1, first_failed_at_s=5.0)])
            await b.release([claim("k", "m1")])
            assert (await a.read(["k"]))["k"].claim_owner == "a"
            await a.release([claim("k", "m1")])
            record = (await a.read(["k"]))["k"]
            assert (record.attempts, record.claim_state, record.claim_owner) == (0, None, None)
            assert record.first_failed_at_s == 5.0
            assert [x.status for x in await b.begin([claim("k", "m1")])] == [STARTED]

    run(body)


def test_first_failure_is_the_earliest_ever_reported(backend: Backend, clock: FakeClock) -> None:
    """first_failed_at_s keeps the minimum of what is stored and what each claim says."""

    async def body() -> None:
        async with backend.open("a", clock) as ledger:
            await ledger.begin([claim("k", "m1", first_failed_at_s=50.0)])
            await ledger.commit([claim("k", "m1", first_failed_at_s=40.0)], at_s=clock())
            await ledger.begin([claim("k", "m2", attempt=2, first_failed_at_s=60.0)])
            await ledger.begin([claim("k", "m2", attempt=2, first_failed_at_s=None)])
            assert (await ledger.read(["k"]))["k"].first_failed_at_s == 40.0

    run(body)


# -- expiry of records --------------------------------------------------------------------


def test_every_write_sets_the_expiry_and_an_expired_record_is_gone(
    backend: Backend, clock: FakeClock
) -> None:
    """begin, commit and release each store expires_at = now + ttl_s; past it the key is absent."""

    async def body() -> None:
        async with backend.open("a", clock) as ledger:
            await ledger.begin([claim("k", "m1")])
            assert backend.expires_at("k") == START_S + TTL_S
            clock.advance(100)
            await ledger.commit([claim("k", "m1")], at_s=clock())
            assert backend.expires_at("k") == START_S + 100 + TTL_S
            clock.advance(100)
            await ledger.begin([claim("k", "m2", attempt=2)])
            clock.advance(100)
            await ledger.release([claim("k", "m2", attempt=2)])
            assert backend.expires_at("k") == START_S + 300 + TTL_S
            clock.advance(TTL_S)
            assert await ledger.read(["k"]) == {}
            # A record past its expiry is no record: a new claim starts from nothing.
            [begun] = await ledger.begin([claim("k", "m1", attempt=1)])
            assert begun.status is STARTED
            assert (await ledger.read(["k"]))["k"].attempts == 0

    run(body)


def test_reads_cover_more_keys_than_one_batch_call_takes(
    backend: Backend, clock: FakeClock
) -> None:
    """A read of 250 keys (BatchGetItem takes 100) returns every stored one and no others."""

    async def body() -> None:
        keys = [f"key-{n}" for n in range(250)]
        async with backend.open("a", clock) as ledger:
            await ledger.begin([claim(key, f"m-{key}") for key in keys[::2]])
            records = await ledger.read([*keys, keys[0]])
        assert sorted(records) == sorted(keys[::2])
        assert all(records[key].claim_message_id == f"m-{key}" for key in records)

    run(body)


# -- two owners racing --------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "dynamodb"], indirect=True)
def test_two_owners_racing_begin_start_each_key_exactly_once(
    backend: Backend, clock: FakeClock
) -> None:
    """Two ledgers beginning the same keys at once: exactly one STARTED per key, the other BUSY."""
    keys = [f"race-{n}" for n in range(40)]

    async def body() -> dict[str, list[str]]:
        seen: dict[str, list[str]] = {key: [] for key in keys}

        async def contend(ledger: Ledger, order: list[str]) -> None:
            claims = [claim(key, f"{ledger.owner}-{key}") for key in order]
            for one, status in await begin_in_batches(ledger, claims, batch=4):
                seen[one.key].append(status)

        async with (
            backend.open("a", clock) as a,
            backend.open("b", clock) as b,
            anyio.create_task_group() as group,
        ):
            # Opposite orders: the two meet in the middle, where every key is contested.
            group.start_soon(contend, a, keys)
            group.start_soon(contend, b, keys[::-1])
        return seen

    for key, statuses in run(body).items():
        assert sorted(statuses) == ["busy", "started"], key


@pytest.mark.parametrize("backend", ["sqlite", "dynamodb"], indirect=True)
def test_a_key_that_is_not_valid_unicode_is_a_ledger_error(
    backend: Backend, clock: FakeClock
) -> None:
    """A lone surrogate (a JSON escape can make one) fails as LedgerError, not as a crash."""

    async def body() -> None:
        async with backend.open("a", clock) as ledger:
            await ledger.begin([claim("bad-\ud800", "m1")])

    with pytest.raises(LedgerError) as raised:
        run(body)
    assert raised.value.operation == "begin"


# -- SQLite: restarts and bad paths -------------------------------------------------------


def test_sqlite_ledger_survives_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    """Commits and an in-flight claim are still there after the file is closed and reopened."""
    path = tmp_path / "ledger.sqlite3"

    async def body() -> None:
        first = await SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S, owner="a", clock=clock)
        await first.begin([claim("done", "m1", attempt=2), claim("inflight", "m2", attempt=1)])
        await first.commit([claim("done", "m1", attempt=2)], at_s=clock())
        await first.aclose()
        await first.aclose()
        # A restarted process is a new owner: the dead one's claim holds until it expires.
        second = await SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S, owner="b", clock=clock)
        try:
            assert (await second.read(["done"]))["done"].attempts == 2
            answers = await second.begin([claim("done", "m1"), claim("inflight", "m2")])
            assert [x.status for x in answers] == [DONE, BUSY]
            clock.advance(CLAIM_S)
            [begun] = await second.begin([claim("inflight", "m2", attempt=7)])
            assert (begun.status, begun.attempt) == (RESUMED, 1)
        finally:
            await second.aclose()

    run(body)


def test_sqlite_ledger_writes_ahead_without_an_fsync_per_commit(
    tmp_path: Path, clock: FakeClock
) -> None:
    """WAL with synchronous=NORMAL: a process crash loses nothing, a commit costs no fsync."""

    async def body() -> tuple[str, int]:
        ledger = await SqliteLedger.open(
            tmp_path / "l.sqlite3", claim_s=CLAIM_S, ttl_s=TTL_S, owner="a", clock=clock
        )
        try:
            # The pragmas belong to the ledger's own connection.
            return await ledger._run(
                "inspect",
                lambda conn: (
                    conn.execute("PRAGMA journal_mode").fetchone()[0],
                    conn.execute("PRAGMA synchronous").fetchone()[0],
                ),
            )
        finally:
            await ledger.aclose()

    # synchronous: 1 is NORMAL, 2 FULL (https://sqlite.org/pragma.html#pragma_synchronous).
    assert run(body) == ("wal", 1)


def test_sqlite_ledger_prunes_expired_rows_when_opened(tmp_path: Path, clock: FakeClock) -> None:
    """Rows past their expiry are deleted from the file at the next open."""
    path = tmp_path / "ledger.sqlite3"

    async def body() -> None:
        ledger = await SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S, owner="a", clock=clock)
        await ledger.begin([claim("old", "m1")])
        await ledger.aclose()
        clock.advance(TTL_S)
        ledger = await SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S, owner="a", clock=clock)
        await ledger.aclose()

    run(body)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM ledger").fetchone() == (0,)


# The schema retryd wrote as SQLite ledger version 1, kept here verbatim to test the upgrade.
SCHEMA_V1 = """
CREATE TABLE ledger (
    key TEXT PRIMARY KEY NOT NULL,
    attempts INTEGER NOT NULL,
    first_failed_at_s REAL,
    last_attempt_at_s REAL,
    claim_message_id TEXT,
    claim_attempt INTEGER NOT NULL,
    claim_state TEXT,
    claim_owner TEXT,
    claim_expires_at_s REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX ledger_expires_at ON ledger (expires_at);
INSERT INTO ledger VALUES ('k', 2, 5.0, 9.0, 'm1', 2, 'committed', 'old', 0.0, 1e12);
PRAGMA user_version = 1;
"""


def _file_from(tmp_path: Path, script: str) -> Path:
    """A ledger file as `script` (an earlier release's schema and rows) leaves it."""
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(script)
    conn.close()
    return path


def test_sqlite_ledger_upgrades_a_version_1_file_in_place(tmp_path: Path, clock: FakeClock) -> None:
    """A file from schema 1 gains the committed, abandoned and parked columns on open; its rows
    read and work as before."""
    path = _file_from(tmp_path, SCHEMA_V1)

    async def body() -> None:
        ledger = await SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S, owner="a", clock=clock)
        try:
            record = (await ledger.read(["k"]))["k"]
            assert (record.attempts, record.claim_message_id, record.committed) == (2, "m1", ())
            # The old row's committed claim still answers DONE; a new message starts, commits.
            answers = await ledger.begin([claim("k", "m1", attempt=3), claim("k", "m2", attempt=3)])
            assert [(x.status, x.attempt) for x in answers] == [(DONE, 2), (STARTED, 3)]
            assert await ledger.commit([claim("k", "m2", attempt=3)], at_s=clock()) == [True]
        finally:
            await ledger.aclose()
        # Reopening a file already at the current version changes nothing.
        again = await SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S, owner="a", clock=clock)
        try:
            assert (await again.read(["k"]))["k"].committed == (("m2", 3),)
        finally:
            await again.aclose()

    run(body)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SQLITE_SCHEMA_VERSION,)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(ledger)")]
    conn.close()
    assert SQLITE_SCHEMA_VERSION == 4
    assert columns[-3:] == ["committed", "abandoned", "parked"]


# A file as earlier releases created it (a WITHOUT ROWID table keyed by `key`).
SCHEMA_V4 = """
CREATE TABLE ledger (
    key TEXT PRIMARY KEY NOT NULL, attempts INTEGER NOT NULL,
    first_failed_at_s REAL, last_attempt_at_s REAL, claim_message_id TEXT,
    claim_attempt INTEGER NOT NULL, claim_state TEXT, claim_owner TEXT,
    claim_expires_at_s REAL NOT NULL, expires_at REAL NOT NULL,
    committed TEXT NOT NULL DEFAULT '[]', abandoned TEXT NOT NULL DEFAULT '[]',
    parked TEXT NOT NULL DEFAULT '[]'
) WITHOUT ROWID;
CREATE INDEX ledger_expires_at ON ledger (expires_at);
INSERT INTO ledger VALUES
    ('busy', 1, 4.0, 9.0, 'm1', 2, 'begun', 'old', 1e12, 1e12, '[["m0", 1]]', '[]', '[]'),
    ('parked', 3, NULL, 8.0, 'm5', 3, 'committed', 'old', 0.0, 1e12, '[]', '[["m4", 2]]',
     '[["m5", 3, "p-5"]]'),
    ('gone', 1, NULL, 1.0, 'm9', 1, 'committed', 'old', 0.0, 1.0, '[["m9", 1]]', '[]', '[]');
PRAGMA user_version = 4;
"""


def _table_sql(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        sql: str = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'ledger'"
        ).fetchone()[0]
    conn.close()
    return sql


def test_a_file_keyed_by_key_from_an_earlier_release_is_used_as_it_is(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A WITHOUT ROWID file is not rebuilt (that would hold the write lock against every
    other process for as long as the copy took): it reads, begins and commits as before."""
    path = _file_from(tmp_path, SCHEMA_V4)

    async def body() -> None:
        ledger = await SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S, owner="a", clock=clock)
        try:
            records = await ledger.read(["busy", "parked", "gone"])
            assert set(records) == {"busy", "parked"}
            busy, parked = records["busy"], records["parked"]
            assert (busy.attempts, busy.first_failed_at_s, busy.claim_owner) == (1, 4.0, "old")
            assert busy.committed == (("m0", 1),)
            assert (parked.abandoned, parked.parked) == ((("m4", 2),), (("m5", 3, "p-5"),))
            # The old live claim still holds its key; a new key and an expired one start.
            answers = await ledger.begin(
                [claim("busy", "m2"), claim("new", "m3"), claim("gone", "m8")]
            )
            assert [x.status for x in answers] == [BUSY, STARTED, STARTED]
            claims = [claim("new", "m3"), claim("gone", "m8")]
            assert await ledger.commit(claims, at_s=clock()) == [True, True]
            assert (await ledger.read(["gone"]))["gone"].committed == (("m8", 1),)
        finally:
            await ledger.aclose()

    run(body)
    assert "WITHOUT ROWID" in _table_sql(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SQLITE_SCHEMA_VERSION,)
        # busy, parked, new, and gone (pruned on open, begun again): one row each.
        assert conn.execute("SELECT count(*), count(DISTINCT key) FROM ledger").fetchone() == (
            4,
            4,
        )
    conn.close()


# How the previous release wrote a record, verbatim: a rollback runs it on a new file.
EARLIER_UPSERT = (
    "INSERT OR REPLACE INTO ledger (key, attempts, first_failed_at_s, last_attempt_at_s, "
    "claim_message_id, claim_attempt, claim_state, claim_owner, claim_expires_at_s, committed, "
    "abandoned, parked, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def test_a_new_file_is_a_rowid_table_an_earlier_release_still_writes(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A new file's rows are ordered by rowid, the key unique; the previous release's write
    replaces a record in it (one row per key) and this one reads it back."""
    path = tmp_path / "ledger.sqlite3"

    async def begin() -> None:
        ledger = await SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S, owner="a", clock=clock)
        try:
            await ledger.begin([claim("k", "m1")])
        finally:
            await ledger.aclose()

    run(begin)
    assert "WITHOUT ROWID" not in _table_sql(path)
    expires_at = clock() + TTL_S
    with sqlite3.connect(path) as conn:
        row = ("k", 2, None, clock(), "m1", 2, "committed", "old", 0.0, '[["m1", 2]]', "[]", "[]")
        conn.execute(EARLIER_UPSERT, (*row, expires_at))
        assert conn.execute("SELECT count(*) FROM ledger WHERE key = 'k'").fetchone() == (1,)
    conn.close()

    async def read() -> None:
        ledger = await SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S, owner="a", clock=clock)
        try:
            record = (await ledger.read(["k"]))["k"]
            assert (record.attempts, record.claim_owner, record.committed) == (
                2,
                "old",
                (("m1", 2),),
            )
        finally:
            await ledger.aclose()

    run(read)


def test_a_commit_updates_its_row_where_begin_wrote_it(tmp_path: Path, clock: FakeClock) -> None:
    """An upsert, not a delete and insert: the row keeps its rowid through begin, commit and
    a later begin, so a transaction writes only the pages its keys' rows are on."""
    path = tmp_path / "ledger.sqlite3"

    def rowids() -> dict[str, int]:
        with sqlite3.connect(path) as conn:
            found = dict(conn.execute("SELECT key, rowid FROM ledger").fetchall())
        conn.close()
        return found

    async def body() -> None:
        ledger = await SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S, owner="a", clock=clock)
        try:
            await ledger.begin([claim("k1", "m1"), claim("k2", "m2")])
            begun = rowids()
            await ledger.commit([claim("k1", "m1"), claim("k2", "m2")], at_s=clock())
            assert rowids() == begun
            clock.advance(1.0)
            await ledger.begin([claim("k2", "m3", attempt=2)])
            assert rowids() == begun
        finally:
            await ledger.aclose()

    run(body)


def test_sqlite_ledger_refuses_a_file_from_a_newer_retryd(tmp_path: Path) -> None:
    """A file whose schema version is above ours is a LedgerError, and is left untouched."""
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SQLITE_SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(LedgerError, match="newer retryd"):
        run(lambda: SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SQLITE_SCHEMA_VERSION + 1,)
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
    conn.close()


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("""committed = '[["m1", "one"]]'""", "'k' has a committed column"),
        # A claim state retryd never writes: never a bare ValueError its caller cannot classify.
        ("claim_state = 'held'", "'k' has a claim_state 'held'"),
    ],
)
def test_a_damaged_column_fails_the_calls_on_its_key(
    tmp_path: Path, clock: FakeClock, damage: str, why: str
) -> None:
    """A column retryd cannot have written (a hand edit) is a LedgerError naming the key, for
    a read and a begin alike."""
    path = tmp_path / "ledger.sqlite3"

    async def body() -> None:
        ledger = await SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S, owner="a", clock=clock)
        try:
            await ledger.begin([claim("k", "m1")])
            with sqlite3.connect(path) as conn:
                conn.execute(f"UPDATE ledger SET {damage}")  # noqa: S608 - the test's own SQL
            conn.close()
            with pytest.raises(LedgerError, match=why):
                await ledger.read(["k"])
            with pytest.raises(LedgerError, match=why):
                await ledger.begin([claim("k", "m2")])
        finally:
            await ledger.aclose()

    run(body)


def test_sqlite_ledger_in_a_missing_directory_fails_naming_the_path(tmp_path: Path) -> None:
    """An unopenable file is a LedgerError that says which file."""
    path = tmp_path / "no-such-dir" / "ledger.sqlite3"
    with pytest.raises(LedgerError) as raised:
        run(lambda: SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S))
    assert str(path) in str(raised.value)
    assert raised.value.operation == "open"


# -- DynamoDB: faults, contention, the table ----------------------------------------------


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
@pytest.mark.parametrize(
    ("operation", "call"),
    [("BatchGetItem", "read"), ("BatchGetItem", "begin"), ("TransactWriteItems", "begin")],
)
def test_a_dynamodb_failure_is_a_transient_ledger_error(
    backend: Backend, clock: FakeClock, operation: str, call: str
) -> None:
    """A 500 from DynamoDB surfaces as LedgerError (transient): the caller leaves messages alone."""
    assert backend.world is not None
    backend.world.faults.add(
        Fault(service="dynamodb", operation=operation, code="InternalServerError", status=500)
    )

    async def body() -> None:
        async with backend.open("a", clock) as ledger:
            if call == "read":
                await ledger.read(["k"])
            else:
                await ledger.begin([claim("k", "m1")])

    with pytest.raises(LedgerError) as raised:
        run(body)
    assert (raised.value.backend, raised.value.operation) == ("dynamodb", call)
    assert raised.value.error.error_class is ErrorClass.TRANSIENT


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_a_lost_conditional_write_is_decided_again_on_fresh_state(
    backend: Backend, clock: FakeClock
) -> None:
    """One cancelled write is re-read and retried; a key that never settles is an error."""
    assert backend.world is not None
    backend.world.faults.add(
        Fault(
            service="dynamodb",
            operation="TransactWriteItems",
            code="TransactionCanceledException",
            contains="once",
            times=1,
        )
    )
    backend.world.faults.add(
        Fault(
            service="dynamodb",
            operation="TransactWriteItems",
            code="TransactionCanceledException",
            contains="always",
        )
    )

    async def body() -> None:
        async with backend.open("a", clock) as ledger:
            assert [x.status for x in await ledger.begin([claim("once", "m1")])] == [STARTED]
            with pytest.raises(LedgerError) as raised:
                await ledger.begin([claim("always", "m1")])
            assert raised.value.error.code == "retryd.LedgerContention"
            assert f"{CONFLICT_TRIES} conditional writes" in str(raised.value)

    run(body)


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_a_batch_of_ten_costs_three_dynamodb_calls(backend: Backend, clock: FakeClock) -> None:
    """read, begin and commit of 10 claims: one BatchGetItem and two TransactWriteItems."""
    assert backend.world is not None
    counted = {
        operation: backend.world.faults.add(Fault("dynamodb", operation, code=None))
        for operation in ("BatchGetItem", "GetItem", "PutItem", "TransactWriteItems")
    }
    claims = [claim(f"batch-{n}", f"m{n}") for n in range(10)]

    async def body() -> None:
        async with backend.open("a", clock) as ledger:
            assert await ledger.read([one.key for one in claims]) == {}
            assert {x.status for x in await ledger.begin(claims)} == {STARTED}
            assert await ledger.commit(claims, at_s=clock()) == [True] * 10

    run(body)
    assert {name: fault.hits for name, fault in counted.items()} == {
        "BatchGetItem": 1,
        "GetItem": 0,
        "PutItem": 0,
        "TransactWriteItems": 2,
    }


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_a_done_answer_from_a_remembered_version_is_checked_first(
    backend: Backend, clock: FakeClock
) -> None:
    """A version this ledger wrote, then another owner committed over: BUSY is re-read as DONE."""

    async def body() -> None:
        async with backend.open("a", clock) as a, backend.open("b", clock) as b:
            await b.begin([claim("k", "m2", attempt=2)])
            await a.commit([claim("k", "m1", attempt=1)], at_s=clock())
            [begun] = await b.begin([claim("k", "m1", attempt=3)])
            assert (begun.status, begun.attempt) == (DONE, 1)

    run(body)


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_dynamodb_stores_committed_messages_as_a_list_of_maps(
    backend: Backend, clock: FakeClock
) -> None:
    """The item's `committed` is [{m: S, a: N}, ...], newest last; absent before any commit."""
    assert backend.world is not None
    dynamodb = backend.world.client("dynamodb")

    def item() -> dict[str, Any]:
        found: dict[str, Any] = dynamodb.get_item(TableName=TABLE, Key={"key": {"S": "k"}})["Item"]
        return found

    async def body() -> None:
        async with backend.open("a", clock) as ledger:
            await ledger.begin([claim("k", "m1", attempt=1)])
            assert "committed" not in item()
            await ledger.commit([claim("k", "m1", attempt=1)], at_s=clock())
            await ledger.begin([claim("k", "m2", attempt=2)])
            await ledger.commit([claim("k", "m2", attempt=2)], at_s=clock())

    run(body)
    assert item()["committed"] == {
        "L": [
            {"M": {"m": {"S": "m1"}, "a": {"N": "1"}}},
            {"M": {"m": {"S": "m2"}, "a": {"N": "2"}}},
        ]
    }


def test_a_missing_table_says_how_to_create_it(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Using a table that does not exist names the create-table command."""
    config = ledger_settings(make_settings, "dynamodb", tmp_path / "unused")
    backend = Backend("dynamodb", config, world)
    with pytest.raises(LedgerError) as raised:
        run(lambda: _read_one(backend))
    assert "retryd ledger create-table" in str(raised.value)


async def _read_one(backend: Backend) -> None:
    async with backend.open("a", FakeClock()) as ledger:
        await ledger.read(["k"])


CONFIG = f"""
[discovery]
queue_prefixes = ["retry-"]
[guards]
allow_any_target = true
[ledger]
backend = "dynamodb"
table = "{TABLE}"
[http]
enabled = false
"""


def test_create_table_command_is_idempotent_and_turns_ttl_on(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`retryd ledger create-table` makes the table with TTL on expires_at; a rerun only checks."""
    path = tmp_path / "retryd.toml"
    path.write_text(CONFIG)
    assert main(["ledger", "create-table", "--config", str(path)]) == 0
    assert f"created DynamoDB table {TABLE}" in capsys.readouterr().out
    assert main(["ledger", "create-table", "--config", str(path)]) == 0
    assert "already exists; TTL on expires_at was already on" in capsys.readouterr().out
    dynamodb = world.client("dynamodb")
    table = dynamodb.describe_table(TableName=TABLE)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "key", "KeyType": "HASH"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = dynamodb.describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")


def test_create_table_turns_ttl_on_for_an_existing_table_without_it(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """An existing table with TTL off gets it turned on, and the line says so."""
    world.client("dynamodb").create_table(
        TableName=TABLE,
        AttributeDefinitions=[{"AttributeName": "key", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "key", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    config = ledger_settings(make_settings, "dynamodb", tmp_path / "unused")
    line = run(lambda: create_table(config))
    assert line == f"DynamoDB table {TABLE} already exists; TTL on expires_at turned on"


def test_create_table_refuses_a_table_keyed_differently(
    world: World, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A same-named table with another key schema is an error, not silently used."""
    world.client("dynamodb").create_table(
        TableName=TABLE,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    config = ledger_settings(make_settings, "dynamodb", tmp_path / "unused")
    with pytest.raises(LedgerError, match=r"choose another ledger\.table"):
        run(lambda: create_table(config))


# -- metrics ------------------------------------------------------------------------------


def test_open_ledger_counts_operations_and_failures(
    make_settings: SettingsFactory, tmp_path: Path, clock: FakeClock
) -> None:
    """With Metrics, each begin result, commit, release and read is counted; failures too."""
    config: Settings = ledger_settings(make_settings, "sqlite", tmp_path / "ledger.sqlite3")
    registry = CollectorRegistry()
    metrics = Metrics(registry)

    async def body() -> None:
        async with open_ledger(config.ledger, None, metrics, clock=clock, owner="a") as ledger:
            assert (ledger.backend, ledger.owner) == ("sqlite", "a")
            await ledger.read(["k"])
            await ledger.begin([claim("k", "m1"), claim("k", "m1")])
            await ledger.commit([claim("k", "m1"), claim("j", "m2")], at_s=clock())
            await ledger.release([claim("k", "m1")])
            inner = ledger.inner  # type: ignore[attr-defined]
            await inner.aclose()
            with pytest.raises(LedgerError):
                await ledger.read(["k"])

    run(body)

    def ops(operation: str, result: str) -> float | None:
        return registry.get_sample_value(
            "retryd_ledger_operations_total",
            {"backend": "sqlite", "operation": operation, "result": result},
        )

    assert ops("read", "ok") == 1
    assert (ops("begin", "started"), ops("begin", "resumed")) == (1, 1)
    assert (ops("commit", "ok"), ops("commit", "lost")) == (1, 1)
    assert ops("release", "ok") == 1
    errors = registry.get_sample_value(
        "retryd_ledger_errors_total", {"backend": "sqlite", "operation": "read"}
    )
    assert errors == 1


def test_open_ledger_memory_backend_needs_no_clients(make_settings: SettingsFactory) -> None:
    """The memory backend opens from settings alone and keeps state for its lifetime."""
    config = make_settings()

    async def body() -> None:
        async with open_ledger(config.ledger, None) as ledger:
            assert ledger.backend == "memory"
            await ledger.begin([claim("k", "m1")])
            assert "k" in await ledger.read(["k"])

    run(body)


def test_open_ledger_dynamodb_without_clients_is_refused(make_settings: SettingsFactory) -> None:
    """Asking for the DynamoDB ledger with no AWS clients is a clear error."""
    config = make_settings(ledger={"backend": "dynamodb"})

    async def body() -> None:
        async with open_ledger(config.ledger, None):
            pass

    with pytest.raises(ValueError, match="needs AwsClients"):
        run(body)


# -- the decision function against a model ------------------------------------------------

OWNERS = ("a", "b", "c")
KEYS = ("k1", "k2")
MESSAGES = ("m1", "m2")

claims_st = st.builds(
    Claim,
    key=st.sampled_from(KEYS),
    message_id=st.sampled_from(MESSAGES),
    attempt=st.integers(1, 6),
    first_failed_at_s=st.none() | st.floats(0, 1000),
)
steps_st = st.lists(
    st.tuples(
        # "settle": commit or release what this owner was last granted on the key, as the
        # pipeline does; "commit"/"release" use arbitrary claims, as a confused caller might.
        st.sampled_from(("begin", "commit", "release", "settle", "wait")),
        st.sampled_from(OWNERS),
        claims_st,
        st.floats(0, CLAIM_S * 1.5),
    ),
    min_size=5,
    max_size=60,
)


class Model:
    """What the decision functions promise, tracked from the outside."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self.now_s = START_S
        # (owner, key, message) -> (granted at, attempt) for claims begun and not yet settled.
        self.grants: dict[tuple[str, str, str], tuple[float, int]] = {}
        # (key, message) -> attempt of every commit made, held or lost: the first one counts.
        self.committed: dict[tuple[str, str], int] = {}
        # (key, message) -> attempt of claims begun, never settled, and taken over by another
        # message: resumed under that attempt (issue 12, defect 3).
        self.abandoned: dict[tuple[str, str], int] = {}
        self.max_attempt: dict[str, int] = {}
        self.first_failed: dict[str, float] = {}

    def _note_first_failed(self, one: Claim) -> None:
        if one.first_failed_at_s is not None:
            known = self.first_failed.get(one.key, one.first_failed_at_s)
            self.first_failed[one.key] = min(known, one.first_failed_at_s)

    def begin(self, owner: str, one: Claim) -> None:
        def decide(record: Record | None, c: Claim) -> tuple[Begun, Record | None]:
            return decide_begin(record, c, owner=owner, now_s=self.now_s, claim_s=CLAIM_S)

        [begun], changed = settle(self.records, [one], decide)
        self.records.update(changed)
        # Two messages and a memory of COMMITTED_MEMORY: every commit is remembered here.
        if (one.key, one.message_id) in self.committed:
            assert begun.status is DONE, f"{one.message_id} was committed, yet {begun.status}"
        if begun.status is DONE:
            assert self.committed.get((one.key, one.message_id)) == begun.attempt
        if begun.status is RESUMED:
            earlier = {
                attempt
                for (_, key, message), (_, attempt) in self.grants.items()
                if (key, message) == (one.key, one.message_id)
            }
            earlier.update(
                attempt
                for (key, message), attempt in self.abandoned.items()
                if (key, message) == (one.key, one.message_id)
            )
            assert begun.attempt in earlier
        abandoned = self.abandoned.get((one.key, one.message_id))
        if abandoned is not None and begun.status in (STARTED, RESUMED):
            # An abandoned resubmission comes back as itself, never as a new attempt.
            assert (begun.status, begun.attempt) == (RESUMED, abandoned)
        if begun.status in (STARTED, RESUMED):
            # Only our own claim on this very message may be live: it is being resumed.
            rivals = [
                (who, message)
                for (who, key, message), (at_s, _) in self.grants.items()
                if key == one.key
                and (who, message) != (owner, one.message_id)
                and at_s + CLAIM_S > self.now_s
            ]
            assert not rivals, f"{owner} got {begun.status} while {rivals} hold a live claim"
            self._note_first_failed(one)
            # The key now protects this claim only: earlier ones on it are superseded, and
            # those of other messages are abandoned.
            for grant in [grant for grant in self.grants if grant[1] == one.key]:
                _, attempt = self.grants.pop(grant)
                if grant[2] != one.message_id and (one.key, grant[2]) not in self.committed:
                    self.abandoned.setdefault((one.key, grant[2]), attempt)
            self.abandoned.pop((one.key, one.message_id), None)
            self.grants[(owner, one.key, one.message_id)] = (self.now_s, begun.attempt)

    def commit(self, owner: str, one: Claim) -> None:
        def decide(record: Record | None, c: Claim) -> tuple[bool, Record | None]:
            return decide_commit(record, c, owner=owner, at_s=self.now_s)

        [held], changed = settle(self.records, [one], decide)
        self.records.update(changed)
        grant = self.grants.pop((owner, one.key, one.message_id), None)
        if held and grant is not None:
            self.committed.setdefault((one.key, one.message_id), grant[1])
        elif held:
            # A repeated commit of a claim already committed by the same owner.
            assert (one.key, one.message_id) in self.committed
        else:
            # The claim was lost, but the resubmission happened: its message is done.
            self.committed.setdefault((one.key, one.message_id), one.attempt)
        self.abandoned.pop((one.key, one.message_id), None)
        self.max_attempt[one.key] = max(self.max_attempt.get(one.key, 0), one.attempt)
        self._note_first_failed(one)

    def settle_granted(self, owner: str, key: str, *, commit: bool) -> None:
        granted = [
            (message, attempt)
            for (who, granted_key, message), (_, attempt) in self.grants.items()
            if (who, granted_key) == (owner, key)
        ]
        for message, attempt in granted:
            one = Claim(key, message, attempt, None)
            if commit:
                self.commit(owner, one)
            else:
                self.release(owner, one)

    def release(self, owner: str, one: Claim) -> None:
        def decide(record: Record | None, c: Claim) -> tuple[None, Record | None]:
            return decide_release(record, c, owner=owner)

        _, changed = settle(self.records, [one], decide)
        self.records.update(changed)
        grant = self.grants.pop((owner, one.key, one.message_id), None)
        if grant is not None and grant[1] <= self.max_attempt.get(one.key, 0):
            # Resumed below the count and released: it comes back as that attempt again.
            self.abandoned.setdefault((one.key, one.message_id), grant[1])

    def check(self) -> None:
        for key, record in self.records.items():
            assert record.attempts == self.max_attempt.get(key, 0)
            assert record.first_failed_at_s == self.first_failed.get(key)
            assert dict(record.committed) == {
                message: attempt
                for (committed_key, message), attempt in self.committed.items()
                if committed_key == key
            }
            assert dict(record.abandoned) == {
                message: attempt
                for (abandoned_key, message), attempt in self.abandoned.items()
                if abandoned_key == key
            }
            if record.claim_state is None:
                assert (record.claim_message_id, record.claim_owner) == (None, None)


@settings(max_examples=300, deadline=None)
@given(steps_st)
# Issue 12, defect 3: m1 begun and abandoned, m2 takes the key and commits, m1 comes back.
@example(
    [
        ("begin", "a", Claim("k1", "m1", 1, None), 0.0),
        ("wait", "a", Claim("k1", "m1", 1, None), CLAIM_S * 1.5),
        ("begin", "b", Claim("k1", "m2", 1, None), 0.0),
        ("settle", "b", Claim("k1", "m2", 1, None), 0.0),
        ("begin", "a", Claim("k1", "m1", 2, None), 0.0),
    ]
)
def test_decisions_never_let_two_claims_hold_a_key(
    steps: list[tuple[str, str, Claim, float]],
) -> None:
    """Any sequence of begins, commits, releases and waits keeps the ledger's promises.

    Never two live claims on one key (not even two of one owner's, for two messages);
    RESUMED only for a message begun before, with its attempt, and always for one whose
    begun claim was abandoned and taken over by another message; DONE exactly for the
    messages committed before (held or lost), with the first committed attempt;
    attempts is the highest committed; first failure the earliest.
    """
    model = Model()
    for action, owner, one, wait_s in steps:
        if action == "wait":
            model.now_s += wait_s
        elif action == "settle":
            model.settle_granted(owner, one.key, commit=wait_s < CLAIM_S)
        else:
            getattr(model, action)(owner, one)
        model.check()


commits_st = st.lists(
    st.tuples(st.sampled_from([f"m{n}" for n in range(COMMITTED_MEMORY * 2)]), st.booleans()),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(commits_st)
# A held commit pushed out of memory by later lost ones: still DONE, as the key's claim.
@example([("m0", True), *((f"m{n}", False) for n in range(1, COMMITTED_MEMORY + 1)), ("m0", True)])
def test_a_key_remembers_its_latest_committed_messages_in_order(
    commits: list[tuple[str, bool]],
) -> None:
    """Commits on one key, held or lost: the newest COMMITTED_MEMORY messages, each once
    under its first attempt, are remembered and answered DONE (as is the key's committed
    claim); older ones are not."""
    records: dict[str, Record] = {}
    expected: list[tuple[str, int]] = []
    # The key's claim: the last held commit, a message DONE even once out of memory.
    claimed: dict[str, int] = {}

    def begin(owner: str, one: Claim, *, write: bool = True) -> Begun:
        [begun], changed = settle(
            records, [one], partial(decide_begin, owner=owner, now_s=START_S, claim_s=CLAIM_S)
        )
        if write:
            records.update(changed)
        return begun

    for attempt, (message, held) in enumerate(commits, start=1):
        one = Claim("k", message, attempt, None)
        known = claimed | dict(expected)
        if held:
            begun = begin("a", one)
            if message in known:
                assert (begun.status, begun.attempt) == (DONE, known[message])
                continue
            assert begun.status is STARTED
        # "b" never begins: its commits are always of a claim it does not hold.
        committer = "a" if held else "b"
        [ok], changed = settle(
            records, [one], partial(decide_commit, owner=committer, at_s=START_S)
        )
        records.update(changed)
        assert ok is held
        if message not in dict(expected):
            expected = [*expected, (message, attempt)][-COMMITTED_MEMORY:]
        if held:
            claimed = {message: attempt}
        assert records["k"].committed == tuple(expected)
    known = claimed | dict(expected)
    for message in {message for message, _ in commits}:
        begun = begin("c", Claim("k", message, 99, None), write=False)
        if message in known:
            assert (begun.status, begun.attempt) == (DONE, known[message])
        else:
            assert begun.status is STARTED
