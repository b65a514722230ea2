"""Claims renewed by a live holder; parks claimed and recorded once: rules, properties, backends."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from retryd.ledger import (
    BeginStatus,
    Claim,
    ClaimState,
    LedgerError,
    ParkCopy,
    ParkStatus,
    Record,
    SqliteLedger,
    decide_begin,
    decide_begin_park,
    decide_commit,
    decide_commit_park,
    decide_release,
    decide_renew,
    open_ledger,
)
from retryd.ledger.base import COMMITTED_MEMORY, settle
from retryd.metrics import Metrics
from retryd.settings import LedgerSettings
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.ledger_helpers import CLAIM_S, START_S, TABLE, TTL_S, Backend, FakeClock, claim, run

# -- the pure decisions --------------------------------------------------------------------


def _begun(owner: str, message_id: str = "m1", attempt: int = 1, now_s: float = START_S) -> Record:
    _, record = decide_begin(
        None, Claim("k", message_id, attempt, None), owner=owner, now_s=now_s, claim_s=CLAIM_S
    )
    assert record is not None
    return record


def _parking(owner: str, message_id: str = "m1", attempt: int = 1) -> Record:
    _, record = decide_begin_park(
        None, Claim("k", message_id, attempt, None), owner=owner, now_s=START_S, claim_s=CLAIM_S
    )
    assert record is not None
    return record


def test_renew_pushes_our_claim_one_period_on_from_now() -> None:
    """Our begun claim: True, and only its expiry moves, to now + the period."""
    record = _begun("a")
    now_s = START_S + CLAIM_S * 0.9
    held, renewed = decide_renew(
        record, Claim("k", "m1", 1, None), owner="a", now_s=now_s, claim_s=CLAIM_S
    )
    assert held is True
    assert renewed == replace(record, claim_expires_at_s=now_s + CLAIM_S)


def test_renew_of_a_claim_past_its_expiry_that_nobody_took_is_still_ours() -> None:
    """Lapsed but untouched: no other owner acted on the key, so it is renewed."""
    record = _begun("a")
    now_s = START_S + CLAIM_S * 3
    held, renewed = decide_renew(
        record, Claim("k", "m1", 1, None), owner="a", now_s=now_s, claim_s=CLAIM_S
    )
    assert (held, renewed) == (True, replace(record, claim_expires_at_s=now_s + CLAIM_S))


def test_renew_keeps_a_longer_expiry_written_before_claims_were_renewed() -> None:
    """An old record's claim expiring later than now + period: held, nothing written."""
    record = replace(_begun("a"), claim_expires_at_s=START_S + 10 * CLAIM_S)
    assert decide_renew(
        record, Claim("k", "m1", 1, None), owner="a", now_s=START_S + 1, claim_s=CLAIM_S
    ) == (True, None)


@pytest.mark.parametrize(
    ("record", "owner", "message_id"),
    [
        (None, "a", "m1"),
        (_begun("b"), "a", "m1"),
        (_begun("a", "m2"), "a", "m1"),
        (replace(_begun("a"), claim_state=ClaimState.COMMITTED), "a", "m1"),
        (decide_release(_begun("a"), Claim("k", "m1", 1, None), owner="a")[1], "a", "m1"),
    ],
    ids=["no-record", "other-owner", "other-message", "committed", "released"],
)
def test_renew_of_a_claim_that_is_not_ours_any_more_is_refused(
    record: Record | None, owner: str, message_id: str
) -> None:
    """Taken over, committed, released or never ours: False, and nothing is written."""
    assert decide_renew(
        record, Claim("k", message_id, 1, None), owner=owner, now_s=START_S, claim_s=CLAIM_S
    ) == (False, None)


def test_a_renewed_claim_is_busy_past_its_first_expiry_and_taken_over_once_it_lapses() -> None:
    """A live holder's claim is never taken over; a dead one's is, after one period unrenewed."""
    record = _begun("a")
    one = Claim("k", "m1", 1, None)
    renewed_at_s = START_S + CLAIM_S * 0.8
    _, renewed = decide_renew(record, one, owner="a", now_s=renewed_at_s, claim_s=CLAIM_S)
    assert renewed is not None
    # Past the first expiry, inside the renewed one: busy for the other owner.
    begun, _ = decide_begin(renewed, one, owner="b", now_s=START_S + CLAIM_S + 1, claim_s=CLAIM_S)
    assert begun.status is BeginStatus.BUSY
    # The holder stopped renewing (it died): one period after its last renewal, resumed.
    later_s = renewed_at_s + CLAIM_S + 1
    begun, taken = decide_begin(renewed, one, owner="b", now_s=later_s, claim_s=CLAIM_S)
    assert (begun.status, begun.attempt) == (BeginStatus.RESUMED, 1)
    assert taken is not None
    assert (taken.claim_owner, taken.claim_expires_at_s) == ("b", later_s + CLAIM_S)


def test_begin_park_takes_a_free_key_as_a_parking_claim() -> None:
    """No record: STARTED with the park's attempt; the claim is PARKING, nothing counted."""
    answer, record = decide_begin_park(
        None, Claim("k", "m1", 3, 7.0), owner="a", now_s=START_S, claim_s=CLAIM_S
    )
    assert (answer.status, answer.attempt) == (ParkStatus.STARTED, 3)
    assert record == Record(
        key="k",
        attempts=0,
        first_failed_at_s=7.0,
        last_attempt_at_s=None,
        claim_message_id="m1",
        claim_attempt=3,
        claim_state=ClaimState.PARKING,
        claim_owner="a",
        claim_expires_at_s=START_S + CLAIM_S,
    )


def test_commit_park_records_the_copy_and_frees_the_key() -> None:
    """Our park claim: True; the copy is in `parked`, the key holds no claim."""
    record = _parking("a", attempt=2)
    held, written = decide_commit_park(
        record, ParkCopy(Claim("k", "m1", 2, None), "p-1"), owner="a"
    )
    assert held is True
    assert written is not None
    assert written.parked == (("m1", 2, "p-1"),)
    assert (written.claim_state, written.claim_owner, written.claim_message_id) == (
        None,
        None,
        None,
    )
    assert written.attempts == record.attempts


def test_a_park_commit_after_a_takeover_is_refused_but_still_recorded() -> None:
    """The copy is written whatever the claim: recorded, and the new holder keeps the key."""
    taken = _parking("b")
    held, written = decide_commit_park(taken, ParkCopy(Claim("k", "m1", 1, None), "p-1"), owner="a")
    assert held is False
    assert written == replace(taken, parked=(("m1", 1, "p-1"),))
    assert decide_commit_park(None, ParkCopy(Claim("k", "m1", 1, None), "p-1"), owner="a")[0] is (
        False
    )


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            replace(_begun("z", "m9"), parked=(("m1", 4, "p-1"),)),
            (ParkStatus.PARKED, 4),
        ),
        (replace(_begun("z", "m9"), committed=(("m1", 2),)), (ParkStatus.RESUBMITTED, 2)),
        (_begun("b", "m1", attempt=5), (ParkStatus.BUSY, 5)),
        (_begun("b", "m2", attempt=6), (ParkStatus.BUSY, 6)),
        (_parking("b", "m2", attempt=6), (ParkStatus.BUSY, 6)),
        (_begun("a", "m2", attempt=6), (ParkStatus.BUSY, 6)),
    ],
    ids=[
        "parked",
        "committed",
        "same-message-other-owner",
        "other-message",
        "other-park",
        "our-other-message",
    ],
)
def test_begin_park_answers_without_writing(
    record: Record, expected: tuple[ParkStatus, int]
) -> None:
    """Parked or resubmitted already, or a live claim held: the answer, and no write."""
    answer, written = decide_begin_park(
        record, Claim("k", "m1", 1, None), owner="a", now_s=START_S + 1, claim_s=CLAIM_S
    )
    assert ((answer.status, answer.attempt), written) == (expected, None)


def test_a_park_takes_over_our_own_begun_claim_and_a_lapsed_one() -> None:
    """Our own begun claim on the message (a refused send), or a lapsed one: STARTED."""
    ours = _begun("a")
    answer, written = decide_begin_park(
        ours, Claim("k", "m1", 1, None), owner="a", now_s=START_S + 1, claim_s=CLAIM_S
    )
    assert answer.status is ParkStatus.STARTED
    assert written is not None
    assert written.claim_state is ClaimState.PARKING
    lapsed = _begun("b", "m2", attempt=4)
    answer, written = decide_begin_park(
        lapsed, Claim("k", "m1", 1, None), owner="a", now_s=START_S + CLAIM_S + 1, claim_s=CLAIM_S
    )
    assert answer.status is ParkStatus.STARTED
    assert written is not None
    # m2's resubmission may have reached its target: when it comes back it is resumed.
    assert written.abandoned == (("m2", 4),)


def test_a_parked_message_is_never_resubmitted() -> None:
    """begin of a message with a recorded copy: PARKED with its attempt, nothing written."""
    record = replace(_begun("z", "m9"), parked=(("m1", 3, "p-1"),))
    begun, written = decide_begin(
        record, Claim("k", "m1", 4, None), owner="a", now_s=START_S, claim_s=CLAIM_S
    )
    assert ((begun.status, begun.attempt), written) == ((BeginStatus.PARKED, 3), None)


def test_a_lapsed_park_of_the_message_is_started_not_resumed() -> None:
    """A park that never finished reached no target: its message starts as its own attempt."""
    record = _parking("b", attempt=2)
    begun, written = decide_begin(
        record, Claim("k", "m1", 3, None), owner="a", now_s=START_S + CLAIM_S + 1, claim_s=CLAIM_S
    )
    assert (begun.status, begun.attempt) == (BeginStatus.STARTED, 3)
    assert written is not None
    assert (written.claim_state, written.abandoned) == (ClaimState.BEGUN, ())


def test_a_park_claim_is_busy_for_a_resubmission_of_another_message() -> None:
    """A live park holds its key like a resubmission does."""
    begun, written = decide_begin(
        _parking("b"), Claim("k", "m2", 1, None), owner="a", now_s=START_S + 1, claim_s=CLAIM_S
    )
    assert (begun.status, written) == (BeginStatus.BUSY, None)


def test_release_of_a_park_claim_frees_the_key_and_remembers_nothing() -> None:
    """A copy that failed: the claim goes, and the message is not taken for abandoned."""
    _, released = decide_release(_parking("a"), Claim("k", "m1", 1, None), owner="a")
    assert released is not None
    assert (released.claim_state, released.abandoned, released.parked) == (None, (), ())


def test_the_parked_list_keeps_a_messages_first_copy_and_only_the_latest_ones() -> None:
    """One entry per message (its first copy), at most COMMITTED_MEMORY, newest last."""
    record: Record | None = None
    for n in [0, 0, *range(1, COMMITTED_MEMORY + 2)]:
        copy = ParkCopy(Claim("k", f"m{n}", 1, None), f"p-{n}-{record is not None}")
        _, written = decide_commit_park(record, copy, owner="a")
        record = written or record
    assert record is not None
    assert [entry[0] for entry in record.parked] == [
        f"m{n}" for n in range(2, COMMITTED_MEMORY + 2)
    ]


# -- properties ----------------------------------------------------------------------------

OWNERS = ("a", "b")
MESSAGES = ("m1", "m2", "m3")
ops_st = st.lists(
    st.tuples(
        st.sampled_from(["begin", "begin_park", "commit", "commit_park", "release", "renew"]),
        st.sampled_from(OWNERS),
        st.sampled_from(MESSAGES),
        st.floats(min_value=0, max_value=CLAIM_S * 2),
    ),
    max_size=40,
)


def _apply(
    record: Record | None, action: str, owner: str, one: Claim, now_s: float
) -> tuple[Any, Record | None]:
    if action == "begin":
        return decide_begin(record, one, owner=owner, now_s=now_s, claim_s=CLAIM_S)
    if action == "begin_park":
        return decide_begin_park(record, one, owner=owner, now_s=now_s, claim_s=CLAIM_S)
    if action == "commit":
        return decide_commit(record, one, owner=owner, at_s=now_s)
    if action == "commit_park":
        copy = ParkCopy(one, f"p-{one.message_id}-{now_s}")
        return decide_commit_park(record, copy, owner=owner)
    if action == "release":
        return decide_release(record, one, owner=owner)
    return decide_renew(record, one, owner=owner, now_s=now_s, claim_s=CLAIM_S)


@settings(max_examples=400, deadline=None)
@given(ops_st)
def test_a_holder_that_renews_in_time_is_never_taken_over(
    ops: list[tuple[str, str, str, float]],
) -> None:
    """Owner "h" begins m0 and renews within every period: every other claim stays BUSY.

    Whatever the others do in between (begin, park, commit, release, renew), no other
    owner starts, resumes or parks on the key (messages of theirs recorded done or
    parked are only answered so), and h's renewals all succeed.
    """
    one = Claim("k", "m0", 1, None)
    now_s = START_S
    _, record = decide_begin(None, one, owner="h", now_s=now_s, claim_s=CLAIM_S)
    for action, owner, message_id, wait_s in ops:
        now_s += min(wait_s, CLAIM_S * 0.9)
        held, renewed = decide_renew(record, one, owner="h", now_s=now_s, claim_s=CLAIM_S)
        assert held is True
        record = renewed or record
        other = Claim("k", message_id, 1, None)
        answer, written = _apply(record, action, owner, other, now_s)
        if action in ("begin", "begin_park"):
            assert answer.status.value not in ("started", "resumed")
        if action in ("begin", "begin_park", "release", "renew"):
            assert written is None
        record = written or record
        assert record is not None
        assert (record.claim_owner, record.claim_message_id) == ("h", "m0")


@settings(max_examples=400, deadline=None)
@given(ops_st, st.sampled_from(MESSAGES), st.sampled_from(OWNERS))
def test_a_parked_message_is_only_ever_deleted_after(
    ops: list[tuple[str, str, str, float]], parked_id: str, parker: str
) -> None:
    """After m's park is recorded, begin and begin_park of m only ever say "delete it".

    PARKED with the park's attempt (DONE or RESUBMITTED once a commit of m is recorded
    too), and nothing written. Fewer than COMMITTED_MEMORY other parks follow, so the
    record still remembers it.
    """
    now_s = START_S
    target = Claim("k", parked_id, 2, None)
    _, record = decide_begin_park(None, target, owner=parker, now_s=now_s, claim_s=CLAIM_S)
    _, record = decide_commit_park(record, ParkCopy(target, "p-0"), owner=parker)
    for action, owner, message_id, wait_s in ops:
        now_s += wait_s
        _, written = _apply(record, action, owner, Claim("k", message_id, 1, None), now_s)
        record = written or record
        for decide in (decide_begin, decide_begin_park):
            answer, again = decide(record, target, owner=owner, now_s=now_s, claim_s=CLAIM_S)
            assert again is None
            if answer.status.value == "parked":
                assert answer.attempt == 2
            else:
                assert answer.status.value in ("done", "resubmitted")


@settings(max_examples=300, deadline=None)
@given(ops_st)
def test_renew_only_ever_moves_the_claims_expiry_forward(
    ops: list[tuple[str, str, str, float]],
) -> None:
    """Whatever the record, a renewal changes nothing but claim_expires_at_s, and only later."""
    now_s = START_S
    record: Record | None = None
    for action, owner, message_id, wait_s in ops:
        now_s += wait_s
        one = Claim("k", message_id, 1, None)
        held, renewed = decide_renew(record, one, owner=owner, now_s=now_s, claim_s=CLAIM_S)
        if renewed is not None:
            assert record is not None
            assert held is True
            assert renewed.claim_expires_at_s > record.claim_expires_at_s
            assert replace(renewed, claim_expires_at_s=record.claim_expires_at_s) == record
        _, written = _apply(record, action, owner, one, now_s)
        record = written or record


# -- the backends ----------------------------------------------------------------------------

RENEWED, LOST = [True], [False]


def test_a_renewing_holder_keeps_its_claim_and_a_silent_one_loses_it(
    backend: Backend, clock: FakeClock
) -> None:
    """Renewed within each period: BUSY for the rival past the first expiry; silent: RESUMED."""

    async def body() -> None:
        async with backend.open("a", clock) as a, backend.open("b", clock) as b:
            one = claim("k", "m1", attempt=2)
            await a.begin([one])
            for _ in range(3):
                clock.advance(CLAIM_S * 0.8)
                assert await a.renew([one]) == RENEWED
            [begun] = await b.begin([one])
            assert begun.status is BeginStatus.BUSY
            clock.advance(CLAIM_S + 1)
            [begun] = await b.begin([one])
            assert (begun.status, begun.attempt) == (BeginStatus.RESUMED, 2)
            assert await a.renew([one]) == LOST

    run(body)


def test_park_is_claimed_recorded_and_then_only_deleted(backend: Backend, clock: FakeClock) -> None:
    """begin_park, commit_park with the parking id; afterwards m1 is PARKED for everyone."""

    async def body() -> None:
        async with backend.open("a", clock) as a, backend.open("b", clock) as b:
            one = claim("k", "m1", attempt=3, first_failed_at_s=5.0)
            [answer] = await a.begin_park([one])
            assert (answer.status, answer.attempt) == (ParkStatus.STARTED, 3)
            [answer] = await b.begin_park([one])
            assert answer.status is ParkStatus.BUSY
            assert await a.renew([one]) == RENEWED
            assert await a.commit_park([ParkCopy(one, "parking-1")]) == [True]
            record = (await b.read(["k"]))["k"]
            assert record.parked == (("m1", 3, "parking-1"),)
            assert (record.claim_state, record.attempts, record.first_failed_at_s) == (
                None,
                0,
                5.0,
            )
            [answer] = await b.begin_park([one])
            assert (answer.status, answer.attempt) == (ParkStatus.PARKED, 3)
            [begun] = await b.begin([claim("k", "m1", attempt=4)])
            assert (begun.status, begun.attempt) == (BeginStatus.PARKED, 3)
            # The key is free for another message.
            [begun] = await b.begin([claim("k", "m2", attempt=1)])
            assert begun.status is BeginStatus.STARTED

    run(body)


def test_a_dead_parkers_claim_is_taken_over_and_a_failed_park_released(
    backend: Backend, clock: FakeClock
) -> None:
    """Unrenewed for a period: another owner parks; a released park frees the key at once."""

    async def body() -> None:
        async with backend.open("a", clock) as a, backend.open("b", clock) as b:
            one = claim("k", "m1")
            await a.begin_park([one])
            clock.advance(CLAIM_S + 1)
            [answer] = await b.begin_park([one])
            assert answer.status is ParkStatus.STARTED
            assert await a.commit_park([ParkCopy(one, "late")]) == [False]
            await b.release([one])
            [answer] = await a.begin_park([claim("k2", "m2")])
            await a.release([claim("k2", "m2")])
            [begun] = await b.begin([claim("k2", "m3")])
            assert (answer.status, begun.status) == (ParkStatus.STARTED, BeginStatus.STARTED)

    run(body)


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_renewing_a_batch_costs_one_dynamodb_call(backend: Backend, clock: FakeClock) -> None:
    """A heartbeat of 10 claims is one TransactWriteItems; a park, one call each way."""
    assert backend.world is not None
    counted = {
        operation: backend.world.faults.add(Fault("dynamodb", operation, code=None))
        for operation in ("BatchGetItem", "GetItem", "PutItem", "UpdateItem", "TransactWriteItems")
    }
    claims = [claim(f"batch-{n}", f"m{n}") for n in range(10)]
    parks = [claim(f"park-{n}", f"p{n}") for n in range(10)]

    async def body() -> None:
        async with backend.open("a", clock) as ledger:
            await ledger.begin(claims)
            await ledger.begin_park(parks)
            clock.advance(CLAIM_S / 2)
            assert await ledger.renew(claims + parks) == [True] * 20
            copies = [ParkCopy(one, f"copy-{one.message_id}") for one in parks]
            assert await ledger.commit_park(copies) == [True] * 10

    run(body)
    assert {name: fault.hits for name, fault in counted.items()} == {
        # The first read of the fresh keys (begin and begin_park), nothing after.
        "BatchGetItem": 2,
        "GetItem": 0,
        "PutItem": 0,
        "UpdateItem": 0,
        "TransactWriteItems": 4,
    }


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_dynamodb_stores_parked_copies_as_a_list_of_maps(
    backend: Backend, clock: FakeClock
) -> None:
    """The item's `parked` is [{m: S, a: N, p: S}, ...]; an item without it reads as none."""
    assert backend.world is not None
    dynamodb = backend.world.client("dynamodb")

    async def body() -> None:
        async with backend.open("a", clock) as ledger:
            await ledger.begin([claim("k", "m0")])
            assert (await ledger.read(["k"]))["k"].parked == ()
            await ledger.begin_park([claim("k2", "m1", attempt=2)])
            await ledger.commit_park([ParkCopy(claim("k2", "m1", attempt=2), "p-1")])

    run(body)
    item = dynamodb.get_item(TableName=TABLE, Key={"key": {"S": "k2"}})["Item"]
    assert item["parked"] == {"L": [{"M": {"m": {"S": "m1"}, "a": {"N": "2"}, "p": {"S": "p-1"}}}]}


def test_a_version_3_sqlite_file_gains_the_parked_column(tmp_path: Path, clock: FakeClock) -> None:
    """A file written before parks were recorded opens, reads its rows as parking nothing."""
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            CREATE TABLE ledger (
                key TEXT PRIMARY KEY NOT NULL, attempts INTEGER NOT NULL,
                first_failed_at_s REAL, last_attempt_at_s REAL, claim_message_id TEXT,
                claim_attempt INTEGER NOT NULL, claim_state TEXT, claim_owner TEXT,
                claim_expires_at_s REAL NOT NULL, expires_at REAL NOT NULL,
                committed TEXT NOT NULL DEFAULT '[]', abandoned TEXT NOT NULL DEFAULT '[]'
            ) WITHOUT ROWID;
            INSERT INTO ledger VALUES
                ('k', 1, NULL, 9.0, 'm1', 2, 'begun', 'old', 1e12, 1e12, '[["m0", 1]]', '[]');
            PRAGMA user_version = 3;
            """
        )
    conn.close()

    async def body() -> None:
        ledger = await SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S, owner="a", clock=clock)
        try:
            record = (await ledger.read(["k"]))["k"]
            assert (record.parked, record.committed, record.claim_owner) == (
                (),
                (("m0", 1),),
                "old",
            )
            # The old claim still holds its key until the expiry stored with it.
            [answer] = await ledger.begin_park([claim("k", "m1")])
            assert answer.status is ParkStatus.BUSY
        finally:
            await ledger.aclose()

    run(body)


def test_a_damaged_parked_column_fails_the_read(tmp_path: Path, clock: FakeClock) -> None:
    """A parked column that is not a list of triples is a LedgerError naming the key."""
    path = tmp_path / "ledger.sqlite3"

    async def body() -> None:
        ledger = await SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S, owner="a", clock=clock)
        try:
            await ledger.begin_park([claim("k", "m1")])
            with sqlite3.connect(path) as conn:
                conn.execute("UPDATE ledger SET parked = '[[\"m1\", 1]]'")
            conn.close()
            with pytest.raises(Exception, match="parked column") as raised:
                await ledger.read(["k"])
            assert type(raised.value).__name__ == "LedgerError"
        finally:
            await ledger.aclose()

    run(body)


def test_open_ledger_counts_renewals_and_parks(make_settings: SettingsFactory) -> None:
    """renew, begin-park and commit-park are counted by result, like every operation."""
    registry = CollectorRegistry()
    clock = FakeClock()
    config = make_settings(ledger={"backend": "memory"})

    async def body() -> None:
        async with open_ledger(
            config.ledger, None, Metrics(registry), clock=clock, owner="a"
        ) as ledger:
            await ledger.begin([claim("k", "m1")])
            assert await ledger.renew([claim("k", "m1"), claim("k", "m2")]) == [True, False]
            await ledger.begin_park([claim("k2", "m3")])
            await ledger.commit_park([ParkCopy(claim("k2", "m3"), "p")])

    run(body)

    def count(operation: str, result: str) -> float | None:
        return registry.get_sample_value(
            "retryd_ledger_operations_total",
            {"backend": "memory", "operation": operation, "result": result},
        )

    assert (count("renew", "ok"), count("renew", "lost")) == (1.0, 1.0)
    assert (count("begin-park", "started"), count("commit-park", "ok")) == (1.0, 1.0)


# -- settings ------------------------------------------------------------------------------


def test_claim_s_from_an_older_config_is_read_as_the_renewal_period() -> None:
    """`claim_s` (the former name) sets claim_renew_s; both, disagreeing, is an error."""
    assert LedgerSettings.model_validate({"claim_s": 7}).claim_renew_s == 7
    assert LedgerSettings.model_validate({"claim_s": 7, "claim_renew_s": 7}).claim_renew_s == 7
    assert LedgerSettings().claim_renew_s == 60
    with pytest.raises(ValueError, match="former name"):
        LedgerSettings.model_validate({"claim_s": 7, "claim_renew_s": 8})


def test_claim_s_in_the_environment_is_read_too(
    make_settings: SettingsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RETRYD_LEDGER__CLAIM_S still configures the renewal period."""
    monkeypatch.setenv("RETRYD_LEDGER__CLAIM_S", "9")
    assert make_settings().ledger.claim_renew_s == 9


def test_ledger_settings_apply_the_period_to_every_backend(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """open_ledger gives the backend claim_renew_s as a claim's life."""
    clock = FakeClock()
    config = make_settings(
        ledger={"backend": "sqlite", "path": str(tmp_path / "l.sqlite3"), "claim_renew_s": 12}
    )

    async def body() -> None:
        async with open_ledger(config.ledger, None, clock=clock, owner="a") as ledger:
            await ledger.begin([claim("k", "m1")])
            assert (await ledger.read(["k"]))["k"].claim_expires_at_s == START_S + 12

    run(body)


def test_settle_sees_a_park_and_a_resubmission_of_one_key_in_order() -> None:
    """One call parking m1 then beginning m2 on the same key: the park holds it, m2 is BUSY."""
    decide = partial(decide_begin_park, owner="a", now_s=START_S, claim_s=CLAIM_S)
    answers, changed = settle({}, [Claim("k", "m1", 1, None)], decide)
    begun, _ = decide_begin(
        changed["k"], Claim("k", "m2", 1, None), owner="a", now_s=START_S, claim_s=CLAIM_S
    )
    assert (answers[0].status, begun.status) == (ParkStatus.STARTED, BeginStatus.BUSY)


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ({"claim_state": {"S": "held"}}, "claim_state"),
        ({"attempts": {"S": "two"}}, "attempts"),
        ({"committed": {"L": [{"M": {"m": {"S": "m0"}}}]}}, "committed"),
    ],
)
def test_a_damaged_dynamodb_item_fails_its_key_alone_as_a_ledger_error(
    backend: Backend, clock: FakeClock, damage: dict[str, Any], why: str
) -> None:
    """An item another tool wrote wrong (or a hand edit) fails the calls on its key with a
    LedgerError naming the key and what is wrong; other keys read in the same call do not
    fail, and nothing raises a bare KeyError or ValueError its caller cannot classify."""
    assert backend.world is not None
    dynamodb = backend.world.client("dynamodb")

    async def begin() -> None:
        async with backend.open("a", clock) as ledger:
            await ledger.begin([claim("k", "m0"), claim("fine", "m1")])

    run(begin)
    item = dynamodb.get_item(TableName=TABLE, Key={"key": {"S": "k"}})["Item"]
    dynamodb.put_item(TableName=TABLE, Item={**item, **damage})

    async def body() -> None:
        async with backend.open("a", clock) as ledger:
            with pytest.raises(LedgerError, match=f"'k'.*{why}"):
                await ledger.read(["k", "fine"])
            assert (await ledger.read(["fine"]))["fine"].claim_message_id == "m1"
            with pytest.raises(LedgerError, match=f"'k'.*{why}"):
                await ledger.begin([claim("k", "m2")])

    run(body)
