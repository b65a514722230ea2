"""Group commit on DynamoDB: batches in flight share requests, each answered as if alone."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retryd.aws import open_clients
from retryd.ledger import (
    BeginStatus,
    Begun,
    Claim,
    ClaimState,
    DynamoDbLedger,
    LedgerError,
    ParkCopy,
    ParkStatus,
    Record,
    decide_begin,
    decide_commit,
    decide_release,
)
from retryd.ledger.base import settle
from retryd.ledger.dynamodb import CONFLICT_TRIES, Decider, _Call, _Sent, _Writes
from retryd.ledger.transact import item_bytes, pack, together
from retryd.models import ErrorClass
from tests.faults import Fault
from tests.ledger_helpers import CLAIM_S, TABLE, TTL_S, Backend, FakeClock, claim, run

STARTED, BUSY = BeginStatus.STARTED, BeginStatus.BUSY
# A window no test would sit through: only the group's size or a deadline closes it.
FOREVER_S = 3_600.0
CALLS = ("BatchGetItem", "GetItem", "PutItem", "TransactWriteItems")


@asynccontextmanager
async def grouped(
    backend: Backend, owner: str, clock: FakeClock, *, max_ops: int, window_s: float = FOREVER_S
) -> AsyncIterator[DynamoDbLedger]:
    """A DynamoDB ledger whose groups close only when `max_ops` calls (or a deadline) are in."""
    async with (
        open_clients(backend.settings.aws) as clients,
        DynamoDbLedger(
            clients.dynamodb,
            TABLE,
            claim_s=CLAIM_S,
            ttl_s=TTL_S,
            owner=owner,
            clock=clock,
            group_window_s=window_s,
            group_max_ops=max_ops,
        ) as ledger,
    ):
        yield ledger


def counters(backend: Backend) -> dict[str, Fault]:
    """A pass-through fault per DynamoDB call that only counts its hits."""
    assert backend.world is not None
    return {name: backend.world.faults.add(Fault("dynamodb", name, code=None)) for name in CALLS}


def hits(counted: dict[str, Fault], *answered: Fault) -> dict[str, int]:
    """Calls per operation: those passed on by `counted`, and those `answered` (added first)."""
    calls = {name: fault.hits for name, fault in counted.items() if fault.hits}
    for fault in answered:
        if fault.hits:
            calls[fault.operation] = calls.get(fault.operation, 0) + fault.hits
    return calls


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_ten_batches_side_by_side_cost_three_calls_in_all(
    backend: Backend, clock: FakeClock
) -> None:
    """10 batches of 10 (read, begin, commit) in groups of 10: 3 calls, not 30, each as if alone."""
    counted = counters(backend)
    # 100 keys: one request of each kind. (More would send two transactions side by side,
    # which race inside moto: it deep-copies the table while the other one writes it.)
    batches = 10

    async def body() -> tuple[
        list[list[BeginStatus]], list[list[bool]], dict[str, int], dict[str, Record]
    ]:
        statuses: list[list[BeginStatus]] = []
        kept: list[list[bool]] = []
        async with grouped(backend, "a", clock, max_ops=batches) as ledger:

            async def batch(index: int) -> None:
                claims = [claim(f"b{index}-{n}", f"m{index}-{n}") for n in range(10)]
                assert await ledger.read([one.key for one in claims]) == {}
                statuses.append([begun.status for begun in await ledger.begin(claims)])
                kept.append(await ledger.commit(claims, at_s=clock()))

            async with anyio.create_task_group() as tg:
                for index in range(batches):
                    tg.start_soon(batch, index)
            calls = hits(counted)
            with anyio.fail_after(30):
                stored = await ledger.read(["b0-0", "b9-9"])
        return statuses, kept, calls, stored

    statuses, kept, calls, stored = run(body)
    assert statuses == [[STARTED] * 10] * batches
    assert kept == [[True] * 10] * batches
    assert {key: record.attempts for key, record in stored.items()} == {"b0-0": 1, "b9-9": 1}
    # One BatchGetItem for the reads, one TransactWriteItems for the begins, one for the commits.
    assert calls == {"BatchGetItem": 1, "TransactWriteItems": 2}
    assert sum(calls.values()) / batches <= 1.5


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_calls_on_one_key_in_one_group_become_one_item(backend: Backend, clock: FakeClock) -> None:
    """begin(k, m1) and begin(k, m2) together: one Put, answered STARTED then BUSY, as in order."""
    counted = counters(backend)

    async def body() -> list[object]:
        async with grouped(backend, "a", clock, max_ops=2) as ledger:
            got: list[object] = [None, None]

            async def one(index: int, message_id: str) -> None:
                got[index] = [x.status for x in await ledger.begin([claim("k", message_id)])]

            async with anyio.create_task_group() as tg:
                tg.start_soon(one, 0, "m1")
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(one, 1, "m2")

            async def commit() -> None:
                got.append(await ledger.commit([claim("k", "m1")], at_s=clock()))

            async def begin() -> None:
                got.append(await ledger.begin([claim("k", "m2", attempt=2)]))

            # The commit frees the key: the begin riding after it in its group starts.
            async with anyio.create_task_group() as tg:
                tg.start_soon(commit)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(begin)
        return got

    got = run(body)
    assert got[:2] == [[STARTED], [BUSY]]
    assert got[2] == [True]
    assert got[3] == [Begun(STARTED, 2)]
    # One read of the unknown key, then one transaction of one item per group.
    assert hits(counted) == {"BatchGetItem": 1, "TransactWriteItems": 2}


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_a_key_that_lost_its_race_is_read_again_while_the_rest_is_written_at_once(
    backend: Backend, clock: FakeClock
) -> None:
    """Another owner wrote k1 since: its Put fails, k2 beside it is written again at once, alone."""

    async def body() -> tuple[object, object, dict[str, int]]:
        async with (
            grouped(backend, "a", clock, max_ops=2) as a,
            grouped(backend, "b", clock, max_ops=1) as b,
        ):
            with anyio.fail_after(30):
                assert [x.status for x in await a.begin([claim("k1", "m1")])] == [STARTED]
                assert await a.read(["k2"]) == {}
                # A commit of another message, recorded without its claim: k1 moves on.
                assert await b.commit([claim("k1", "m9")], at_s=clock()) == [False]
            counted = counters(backend)
            got: list[object] = [None, None]

            async def commit() -> None:
                got[0] = await a.commit([claim("k1", "m1")], at_s=clock())

            async def begin() -> None:
                got[1] = [x.status for x in await a.begin([claim("k2", "m1")])]

            async with anyio.create_task_group() as tg:
                tg.start_soon(commit)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(begin)
        return got[0], got[1], hits(counted)

    committed, begun, calls = run(body)
    assert committed == [True]
    assert begun == [STARTED]
    # {k1, k2} cancelled (k1: ConditionalCheckFailed, k2: None); then k2 alone beside
    # the read of k1; then k1 on its fresh version.
    assert calls == {"TransactWriteItems": 3, "BatchGetItem": 1}


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_a_failed_request_fails_only_the_calls_whose_items_rode_in_it(
    backend: Backend, clock: FakeClock
) -> None:
    """A 500 on the transaction carrying one call's key: that call fails, its group-mates do not."""
    assert backend.world is not None
    backend.world.faults.add(
        Fault("dynamodb", "TransactWriteItems", "InternalServerError", 500, contains="poison")
    )

    async def body() -> list[object]:
        async with grouped(backend, "a", clock, max_ops=3) as ledger:
            # 100 claims fill one transaction: the poisoned key rides in a second one.
            big = [claim(f"k{n}", "m1") for n in range(100)]
            got: list[object] = [None] * 3

            async def one(index: int) -> None:
                try:
                    if index == 0:
                        got[0] = await ledger.begin(big)
                    elif index == 1:
                        got[1] = await ledger.begin([claim("poison", "m1")])
                    else:
                        got[2] = await ledger.read(["k0", "elsewhere"])
                except LedgerError as exc:
                    got[index] = exc

            async with anyio.create_task_group() as tg:
                for index in range(3):
                    tg.start_soon(one, index)
                    await anyio.wait_all_tasks_blocked()
        return got

    big, poisoned, read = run(body)
    assert isinstance(big, list)
    assert [x.status for x in big] == [STARTED] * 100
    assert isinstance(poisoned, LedgerError)
    assert (poisoned.operation, poisoned.error.error_class) == ("begin", ErrorClass.TRANSIENT)
    # The read rode in the same group: it saw k0 before or after the begin, never an error.
    assert isinstance(read, dict)
    assert set(read) <= {"k0"}


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_the_window_never_holds_a_dynamodb_call_past_its_deadline(
    backend: Backend, clock: FakeClock
) -> None:
    """An hour-long window, a group of 100: a call under a deadline still goes and is answered."""

    async def body() -> tuple[list[BeginStatus], dict[str, Record]]:
        async with grouped(backend, "a", clock, max_ops=100) as ledger:
            with anyio.fail_after(30):
                statuses = [x.status for x in await ledger.begin([claim("k", "m1")])]
                return statuses, await ledger.read(["k"])

    statuses, stored = run(body)
    assert statuses == [STARTED]
    assert stored["k"].claim_message_id == "m1"


# -- packing and merging, pure -------------------------------------------------------------

KEYS = st.text("abcdefgh", min_size=1, max_size=2)


@settings(max_examples=200, deadline=None)
@given(
    calls=st.lists(st.lists(KEYS, min_size=1, max_size=12), min_size=1, max_size=20),
    max_items=st.integers(1, 12),
    max_bytes=st.one_of(st.integers(1, 60), st.just(1_000_000)),
    size_of=st.dictionaries(KEYS, st.integers(1, 30)),
)
def test_packed_transactions_hold_every_key_once_within_the_limits_and_none_spare(
    calls: list[list[str]], max_items: int, max_bytes: int, size_of: dict[str, int]
) -> None:
    """Each key once; limits kept; keys calls join stay together if they fit; no two could merge."""
    keys = list(dict.fromkeys(key for call in calls for key in call))
    sizes = {key: size_of.get(key, 5) for key in keys}
    packed = pack(calls, sizes, max_items=max_items, max_bytes=max_bytes)
    flat = [key for transaction in packed for key in transaction]
    assert sorted(flat) == sorted(keys)

    def over(items: int, used: int) -> bool:
        return items > max_items or used > max_bytes

    for transaction in packed:
        used = sum(sizes[key] for key in transaction)
        assert len(transaction) == 1 or not over(len(transaction), used)
    home = {key: index for index, transaction in enumerate(packed) for key in transaction}
    for joined in together(calls, keys):
        if not over(len(joined), sum(sizes[key] for key in joined)):
            assert len({home[key] for key in joined}) == 1
    for first, one in enumerate(packed):
        for two in packed[first + 1 :]:
            both = one + two
            assert over(len(both), sum(sizes[key] for key in both))
    if max_bytes == 1_000_000:
        # Bytes never bind: first fit leaves at most one transaction half empty or less.
        assert len(packed) <= max(1, math.ceil(2 * len(keys) / max_items))


@settings(max_examples=100, deadline=None)
@given(calls=st.lists(st.lists(KEYS, max_size=6), max_size=12))
def test_keys_joined_by_calls_are_one_set_and_unrelated_keys_are_not(
    calls: list[list[str]],
) -> None:
    """Two keys share a set exactly when a chain of calls, each sharing a key, links them."""
    keys = list(dict.fromkeys(key for call in calls for key in call))
    sets = together(calls, keys)
    assert sorted(key for each in sets for key in each) == sorted(keys)
    where = {key: index for index, each in enumerate(sets) for key in each}
    for call in calls:
        assert len({where[key] for key in call}) <= 1
    # Sets are as small as the calls allow: each is linked within itself (connected).
    for each in sets:
        reached = {each[0]}
        grew = True
        while grew:
            grew = False
            for call in calls:
                if reached & set(call) and not set(call) <= reached:
                    reached |= set(call)
                    grew = True
        assert reached == set(each)


def test_item_bytes_counts_names_strings_numbers_and_lists() -> None:
    """A name and its value count; non-ascii text counts its UTF-8 bytes; lists their entries."""
    assert item_bytes({"key": {"S": "abc"}}) == 6
    assert item_bytes({"k": {"S": "é"}}) == 3
    assert item_bytes({"n": {"N": "12"}}) == 1 + 21
    listed = {"l": {"L": [{"M": {"m": {"S": "x"}}}]}}
    assert item_bytes(listed) == 1 + 3 + 1 + (3 + 1 + 1 + 1)


OWNERS = ("a", "b")
MESSAGES = ("m1", "m2", "m3")


@st.composite
def ledger_calls(draw: st.DrawFn) -> _Call:
    kind = draw(st.sampled_from(["begin", "commit", "release"]))
    owner = draw(st.sampled_from(OWNERS))
    claims = draw(
        st.lists(
            st.builds(
                Claim,
                st.sampled_from(["k1", "k2", "k3"]),
                st.sampled_from(MESSAGES),
                st.integers(1, 3),
                st.none(),
            ),
            min_size=1,
            max_size=4,
        )
    )
    decide: Decider[object]
    if kind == "begin":
        decide = lambda record, one, now_s: decide_begin(  # noqa: E731 - one line each
            record, one, owner=owner, now_s=now_s, claim_s=CLAIM_S
        )
    elif kind == "commit":
        decide = lambda record, one, now_s: decide_commit(record, one, owner=owner, at_s=now_s)  # noqa: E731
    else:
        decide = lambda record, one, _now_s: decide_release(record, one, owner=owner)  # noqa: E731
    return _Call(kind, [one.key for one in claims], claims, decide)


@settings(max_examples=150, deadline=None)
@given(calls=st.lists(ledger_calls(), min_size=1, max_size=8))
def test_a_group_of_calls_answers_and_writes_as_the_calls_one_after_another(
    calls: Sequence[_Call],
) -> None:
    """Merged to one item per key, a group answers and writes as its calls would in order."""
    now_s = 1_700_000_000.0
    records: dict[str, Record] = {}
    expected: list[list[object]] = []
    for call in calls:
        decide = call.decide
        assert decide is not None
        answers, changed = settle(records, call.claims, partial(_at, decide, now_s))
        records.update(changed)
        expected.append(answers)

    writes = _Writes(calls, {})
    written: dict[str, Record] = {}
    for _ in range(3):
        reading, ready = writes.decide(now_s)
        writes.took_reads(dict.fromkeys(reading))
        written.update(ready)
        for key in ready:
            writes.took_write(key, _Sent([key], written=True), _unexpected)
    assert writes.decide(now_s) == ([], {})
    assert [writes.answer(number) for number in range(len(calls))] == [
        (answers, None) for answers in expected
    ]
    assert written == records


def _at(
    decide: Decider[object], now_s: float, record: Record | None, one: Claim
) -> tuple[object, Record | None]:
    return decide(record, one, now_s)


def _unexpected(operation: str, **_: object) -> LedgerError:
    raise AssertionError(f"{operation}: no write is cancelled here")


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_a_release_rides_in_the_transaction_of_another_batch_s_commit(
    backend: Backend, clock: FakeClock
) -> None:
    """A batch's release and another's commit in one group: one TransactWriteItems for both."""

    async def body() -> tuple[dict[str, int], dict[str, Record]]:
        async with grouped(backend, "a", clock, max_ops=2) as ledger:
            with anyio.fail_after(30):
                await ledger.begin([claim("sent", "m1"), claim("failed", "m2")])
            counted = counters(backend)
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(ledger.commit, [claim("sent", "m1")], at_s=clock()))
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(ledger.release, [claim("failed", "m2")])
            made = hits(counted)
            with anyio.fail_after(30):
                stored = await ledger.read(["sent", "failed"])
        return made, stored

    made, stored = run(body)
    assert made == {"TransactWriteItems": 1}
    assert (stored["sent"].attempts, stored["sent"].claim_state) == (1, ClaimState.COMMITTED)
    assert (stored["failed"].attempts, stored["failed"].claim_state) == (0, None)


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_a_key_that_cannot_be_sent_fails_its_own_call_and_not_its_group_mates(
    backend: Backend, clock: FakeClock
) -> None:
    """A lone surrogate in one call's key fails a shared transaction whole: the other goes again."""

    async def body() -> list[object]:
        async with grouped(backend, "a", clock, max_ops=2) as ledger:
            got: list[object] = [None, None]

            async def begin(index: int, key: str) -> None:
                try:
                    got[index] = [x.status for x in await ledger.begin([claim(key, "m1")])]
                except LedgerError as exc:
                    got[index] = exc

            async with anyio.create_task_group() as tg:
                tg.start_soon(begin, 0, "bad-\ud800")
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(begin, 1, "good")
        return got

    bad, good = run(body)
    assert isinstance(bad, LedgerError)
    assert bad.operation == "begin"
    assert good == [STARTED]


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_a_commit_outage_fails_the_commit_but_not_a_release_that_rode_with_it(
    backend: Backend, clock: FakeClock
) -> None:
    """Every transaction with a committed claim fails: the release beside it is written alone."""
    assert backend.world is not None

    async def body() -> tuple[object, object, dict[str, Record]]:
        async with grouped(backend, "a", clock, max_ops=2) as ledger:
            with anyio.fail_after(30):
                await ledger.begin([claim("sent", "m1"), claim("failed", "m2")])
            assert backend.world is not None
            backend.world.faults.add(
                Fault(
                    "dynamodb",
                    "TransactWriteItems",
                    "InternalServerError",
                    500,
                    contains='"committed"',
                )
            )
            got: list[object] = [None, None]

            async def commit() -> None:
                try:
                    got[0] = await ledger.commit([claim("sent", "m1")], at_s=clock())
                except LedgerError as exc:
                    got[0] = exc

            async def release() -> None:
                await ledger.release([claim("failed", "m2")])
                got[1] = "released"

            async with anyio.create_task_group() as tg:
                tg.start_soon(commit)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(release)
            backend.world.faults.clear()
            with anyio.fail_after(30):
                stored = await ledger.read(["failed"])
        return got[0], got[1], stored

    committed, released, stored = run(body)
    assert isinstance(committed, LedgerError)
    assert committed.operation == "commit"
    assert released == "released"
    assert stored["failed"].claim_state is None


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_a_read_that_fails_for_one_call_is_read_again_alone_for_the_others(
    backend: Backend, clock: FakeClock
) -> None:
    """A BatchGetItem failing whenever it holds one key: the read beside it gets its answer."""
    assert backend.world is not None
    backend.world.faults.add(
        Fault("dynamodb", "BatchGetItem", "InternalServerError", 500, contains="poison")
    )

    async def body() -> list[object]:
        async with grouped(backend, "a", clock, max_ops=2) as ledger:
            got: list[object] = [None, None]

            async def read(index: int, key: str) -> None:
                try:
                    got[index] = await ledger.read([key])
                except LedgerError as exc:
                    got[index] = exc

            async with anyio.create_task_group() as tg:
                tg.start_soon(read, 0, "poison")
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(read, 1, "fine")
        return got

    poisoned, fine = run(body)
    assert isinstance(poisoned, LedgerError)
    assert (poisoned.operation, poisoned.error.error_class) == ("read", ErrorClass.TRANSIENT)
    assert fine == {}


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_a_shared_write_that_landed_unheard_is_answered_as_written(
    backend: Backend, clock: FakeClock
) -> None:
    """A transaction lands, its answer lost: each call is answered as won, not as a lost race."""

    async def body() -> tuple[object, object, dict[str, Record]]:
        async with grouped(backend, "a", clock, max_ops=2) as ledger:
            with anyio.fail_after(30):
                parking = await ledger.begin_park([claim("parked", "m1")])
                # Known absent: the begin is decided at once and rides with the commit.
                assert await ledger.read(["fresh"]) == {}
            assert [x.status for x in parking] == [ParkStatus.STARTED]
            assert backend.world is not None
            # The first transaction (both calls' items) is written; its answer is a 500.
            backend.world.faults.add(
                Fault(
                    "dynamodb",
                    "TransactWriteItems",
                    "InternalServerError",
                    500,
                    times=1,
                    landed=True,
                )
            )
            got: list[object] = [None, None]

            async def commit_park() -> None:
                got[0] = await ledger.commit_park([ParkCopy(claim("parked", "m1"), "copy-1")])

            async def begin() -> None:
                got[1] = [x.status for x in await ledger.begin([claim("fresh", "m2")])]

            # No deadline on the group's calls: it would close their window at once.
            async with anyio.create_task_group() as tg:
                tg.start_soon(commit_park)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(begin)
            with anyio.fail_after(30):
                stored = await ledger.read(["parked", "fresh"])
        return got[0], got[1], stored

    parked, begun, stored = run(body)
    assert stored["parked"].parked == (("m1", 1, "copy-1"),)
    assert stored["fresh"].claim_state is ClaimState.BEGUN
    # As if the answer had arrived: the park claim was ours, the begin a first start.
    assert parked == [True]
    assert begun == [STARTED]


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_a_batch_cut_off_mid_flush_does_not_fail_a_group_mate_s_call(
    backend: Backend, clock: FakeClock
) -> None:
    """A leader's work scope ending (its lease) with the group out: a mate's renew still lands."""
    assert backend.world is not None

    async def body() -> object:
        async with grouped(backend, "a", clock, max_ops=2) as ledger:
            with anyio.fail_after(30):
                await ledger.begin([claim("mate", "m0")])
                assert await ledger.read(["lead"]) == {}
            assert backend.world is not None
            # A slow DynamoDB: the group's transaction is out while the leader's scope ends.
            slow = backend.world.faults.add(
                Fault("dynamodb", "TransactWriteItems", code=None, delay_s=3.0)
            )
            got: list[object] = [None]
            # The leader's batch: a work scope like heartbeat.scope(), cut at its lease's end.
            leader_scope = anyio.CancelScope()

            async def leader() -> None:
                with leader_scope:
                    await ledger.begin([claim("lead", "m1")])

            async def mate() -> None:
                try:
                    got[0] = await ledger.renew([claim("mate", "m0")])
                except LedgerError as exc:
                    got[0] = exc

            async with anyio.create_task_group() as tg:
                tg.start_soon(leader)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(mate)
                with anyio.fail_after(30):
                    # Counted in the server's thread: nothing here to wait on but the count.
                    while not slow.hits:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                leader_scope.cancel()
        return got[0]

    renewed = run(body)
    assert renewed == [True]


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_a_begin_whose_caller_left_mid_request_is_resumed_when_its_message_comes_back(
    backend: Backend, clock: FakeClock
) -> None:
    """A caller cut off with its begin out: the begin lands; the message back resumes as begun."""
    assert backend.world is not None

    async def body() -> tuple[bool, list[tuple[BeginStatus, int]], dict[str, Record]]:
        async with grouped(backend, "a", clock, max_ops=1) as ledger:
            assert backend.world is not None
            slow = backend.world.faults.add(
                Fault("dynamodb", "TransactWriteItems", code=None, delay_s=1.0, times=1)
            )
            cut_off = anyio.CancelScope()

            async def batch() -> None:
                with cut_off:
                    await ledger.begin([claim("k", "m1", attempt=3)])

            async with anyio.create_task_group() as tg:
                tg.start_soon(batch)
                with anyio.fail_after(30):
                    while not slow.hits:  # noqa: ASYNC110 - counted in the server's thread
                        await anyio.sleep(0.01)
                # Its lease ran out: the batch stops waiting; its request goes on.
                cut_off.cancel()
            with anyio.fail_after(30):
                # The message reappears and is begun again, by the same process.
                again = await ledger.begin([claim("k", "m1", attempt=4)])
                stored = await ledger.read(["k"])
        return cut_off.cancelled_caught, [(x.status, x.attempt) for x in again], stored

    cancelled, again, stored = run(body)
    assert cancelled
    # The unheard begin landed: the same attempt is sent again, as after a crash.
    assert again == [(BeginStatus.RESUMED, 3)]
    assert (stored["k"].claim_state, stored["k"].claim_attempt) == (ClaimState.BEGUN, 3)


def _cancelled_for(reasons: list[str], *, times: int | None = 1) -> Fault:
    """A TransactWriteItems cancelled with one CancellationReason code per item, in order."""
    return Fault(
        "dynamodb",
        "TransactWriteItems",
        "TransactionCanceledException",
        times=times,
        fields={"CancellationReasons": [{"Code": code} for code in reasons]},
    )


async def _two_begins(ledger: DynamoDbLedger) -> list[object]:
    """begin(k1) then begin(k2), in one group (one transaction, k1 first): what each got."""
    got: list[object] = [None, None]

    async def one(index: int) -> None:
        try:
            got[index] = [x.status for x in await ledger.begin([claim(f"k{index + 1}", "m1")])]
        except LedgerError as exc:
            got[index] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, 0)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(one, 1)
    return got


@pytest.mark.parametrize("reason", ["ThrottlingError", "TransactionConflict"])
@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_an_item_throttled_or_in_another_transaction_is_written_again_not_read_again(
    backend: Backend, clock: FakeClock, reason: str
) -> None:
    """A transaction cancelled for k2 with a passing reason: both begins start, nothing re-read."""
    assert backend.world is not None

    async def body() -> tuple[list[object], dict[str, int]]:
        async with grouped(backend, "a", clock, max_ops=2) as ledger:
            with anyio.fail_after(30):
                # Known absent: both begins are decided and sent without a read.
                assert await ledger.read(["k1", "k2"]) == {}
            assert backend.world is not None
            cancelled = backend.world.faults.add(_cancelled_for(["None", reason]))
            counted = counters(backend)
            got = await _two_begins(ledger)
        return got, hits(counted, cancelled)

    got, calls = run(body)
    assert got == [[STARTED], [STARTED]]
    # Not a race lost: no read of k2, and its claim is not answered from one.
    assert calls == {"TransactWriteItems": 2}


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_an_item_refused_by_its_own_reason_fails_its_call_alone_and_at_once(
    backend: Backend, clock: FakeClock
) -> None:
    """Cancelled with ValidationError for k2: begin(k2) fails so; begin(k1) beside it starts."""
    assert backend.world is not None

    async def body() -> tuple[list[object], dict[str, int], dict[str, Record]]:
        async with grouped(backend, "a", clock, max_ops=2) as ledger:
            with anyio.fail_after(30):
                assert await ledger.read(["k1", "k2"]) == {}
            assert backend.world is not None
            cancelled = backend.world.faults.add(_cancelled_for(["None", "ValidationError"]))
            counted = counters(backend)
            got = await _two_begins(ledger)
            calls = hits(counted, cancelled)
            with anyio.fail_after(30):
                stored = await ledger.read(["k1", "k2"])
        return got, calls, stored

    (started, refused), calls, stored = run(body)
    assert started == [STARTED]
    assert isinstance(refused, LedgerError)
    assert (refused.operation, refused.error.code) == ("begin", "ValidationError")
    assert refused.error.error_class is ErrorClass.PERMANENT
    # k1 written again alone; k2 neither re-read nor sent again.
    assert calls == {"TransactWriteItems": 2}
    assert set(stored) == {"k1"}


@pytest.mark.parametrize("backend", ["dynamodb"], indirect=True)
def test_an_item_throttled_every_time_fails_as_throttled_not_as_contention(
    backend: Backend, clock: FakeClock
) -> None:
    """Every transaction cancelled with ThrottlingError: the call fails transient, as throttled."""
    assert backend.world is not None

    async def body() -> tuple[object, dict[str, int]]:
        async with grouped(backend, "a", clock, max_ops=1) as ledger:
            with anyio.fail_after(30):
                assert await ledger.read(["k"]) == {}
            assert backend.world is not None
            cancelled = backend.world.faults.add(_cancelled_for(["ThrottlingError"], times=None))
            counted = counters(backend)
            try:
                with anyio.fail_after(30):
                    got: object = await ledger.begin([claim("k", "m1")])
            except LedgerError as exc:
                got = exc
        return got, hits(counted, cancelled)

    failed, calls = run(body)
    assert isinstance(failed, LedgerError)
    assert (failed.error.code, failed.error.error_class) == (
        "ThrottlingError",
        ErrorClass.TRANSIENT,
    )
    assert calls == {"TransactWriteItems": CONFLICT_TRIES}
