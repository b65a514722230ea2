"""Group commit: every caller answered once, by the flush it rode in, never past its deadline."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retryd.ledger import BeginStatus, LedgerError, SqliteLedger
from retryd.ledger.group import Answer, GroupCommit
from tests.ledger_helpers import CLAIM_S, TTL_S, FakeClock, claim, run

# A window no test would sit through: only the group's size or a deadline closes it.
FOREVER_S = 3_600.0


class BoomError(Exception):
    """The failure a test's flush gives the calls it is told to fail."""


class Recorder:
    """A flush that doubles each call, fails the negative ones, and remembers its groups."""

    def __init__(self, *, poison: int | None = None) -> None:
        self.groups: list[list[int]] = []
        self._poison = poison

    async def __call__(self, ops: Sequence[int]) -> list[Answer[int]]:
        self.groups.append(list(ops))
        if self._poison is not None and self._poison in ops:
            raise sqlite3.OperationalError("disk I/O error")
        return [(None, BoomError(op)) if op < 0 else (2 * op, None) for op in ops]


def group_of(flush: Recorder, *, window_s: float, max_ops: int) -> GroupCommit[int, int]:
    return GroupCommit(flush, window_s=window_s, max_ops=max_ops, lock=anyio.Lock())


async def outcome(group: GroupCommit[int, int], op: int) -> object:
    try:
        return await group.call(op)
    except Exception as exc:  # noqa: BLE001 - the test compares what each caller got
        return exc


def test_a_caller_is_answered_before_its_deadline_however_long_the_window() -> None:
    """A call under a deadline is flushed and answered before it, with an hour-long window."""

    async def body() -> tuple[int, list[list[int]]]:
        flush = Recorder()
        group = group_of(flush, window_s=FOREVER_S, max_ops=100)
        with anyio.fail_after(30):
            answer = await group.call(21)
        return answer, flush.groups

    assert run(body) == (42, [[21]])


def test_a_later_caller_with_a_nearer_deadline_closes_the_open_window() -> None:
    """A call with no deadline opens the window; one with a deadline joins and both are flushed."""

    async def body() -> tuple[list[object], list[list[int]]]:
        flush = Recorder()
        group = group_of(flush, window_s=FOREVER_S, max_ops=100)
        got: list[object] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _append(got, group, 1))
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(30):
                got.append(await group.call(2))
        return sorted(got, key=str), flush.groups

    assert run(body) == ([2, 4], [[1, 2]])


async def _append(into: list[object], group: GroupCommit[int, int], op: int) -> None:
    into.append(await outcome(group, op))


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(st.integers(-50, 50), min_size=1, max_size=40),
    max_ops=st.integers(1, 12),
    window_s=st.sampled_from([0.0, 0.001, FOREVER_S]),
)
def test_every_caller_gets_its_own_answer_from_exactly_one_flush(
    ops: list[int], max_ops: int, window_s: float
) -> None:
    """Each call is flushed once, in a group of at most max_ops, and gets its own answer."""
    # Every caller has a deadline, so even an hour's window lets the last, partial group go.

    async def body() -> tuple[dict[int, object], list[list[int]]]:
        flush = Recorder()
        group = group_of(flush, window_s=window_s, max_ops=max_ops)
        got: dict[int, object] = {}

        async def one(index: int) -> None:
            with anyio.fail_after(60):
                got[index] = await outcome(group, ops[index])

        async with anyio.create_task_group() as tg:
            for index in range(len(ops)):
                tg.start_soon(one, index)
        assert (group.flushes, group.calls) == (len(flush.groups), len(ops))
        return got, flush.groups

    got, groups = run(body)
    assert sorted(op for each in groups for op in each) == sorted(ops)
    assert all(1 <= len(each) <= max_ops for each in groups)
    assert len(groups) >= math.ceil(len(ops) / max_ops)
    for index, op in enumerate(ops):
        if op < 0:
            failure = got[index]
            assert isinstance(failure, BoomError)
            assert failure.args == (op,)
        else:
            assert got[index] == 2 * op


@settings(max_examples=25, deadline=None)
@given(
    ops=st.lists(st.integers(0, 30), min_size=2, max_size=30, unique=True),
    max_ops=st.integers(1, 6),
)
def test_a_failed_transaction_fails_exactly_the_callers_that_rode_in_it(
    ops: list[int], max_ops: int
) -> None:
    """A flush that raises fails every call of its group, and no call of any other group."""
    poison = ops[len(ops) // 2]

    async def body() -> tuple[dict[int, object], list[list[int]]]:
        flush = Recorder(poison=poison)
        group = group_of(flush, window_s=0.001, max_ops=max_ops)
        got: dict[int, object] = {}

        async def one(op: int) -> None:
            got[op] = await outcome(group, op)

        async with anyio.create_task_group() as tg:
            for op in ops:
                tg.start_soon(one, op)
        return got, flush.groups

    got, groups = run(body)
    for each in groups:
        for op in each:
            if poison in each:
                assert isinstance(got[op], sqlite3.OperationalError)
            else:
                assert got[op] == 2 * op


def test_a_cancelled_leader_still_flushes_the_group_it_opened() -> None:
    """The caller holding the window is cancelled: the others are answered all the same."""

    async def body() -> tuple[list[object], list[list[int]]]:
        flush = Recorder()
        group = group_of(flush, window_s=FOREVER_S, max_ops=3)
        got: list[object] = []
        leader_scope = anyio.CancelScope()

        async def leader() -> None:
            with leader_scope:
                await group.call(1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(leader)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(_append, got, group, 2)
            await anyio.wait_all_tasks_blocked()
            leader_scope.cancel()
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(_append, got, group, 3)
        return sorted(got, key=str), flush.groups

    assert run(body) == ([4, 6], [[1, 2, 3]])


def test_a_caller_cancelled_before_its_flush_is_left_out_of_it() -> None:
    """A waiting caller that gives up before the window closes is not flushed at all."""

    async def body() -> tuple[list[object], list[list[int]]]:
        flush = Recorder()
        group = group_of(flush, window_s=FOREVER_S, max_ops=3)
        got: list[object] = []
        quitter_scope = anyio.CancelScope()

        async def quitter() -> None:
            with quitter_scope:
                await group.call(2)

        async with anyio.create_task_group() as tg:
            tg.start_soon(_append, got, group, 1)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(quitter)
            await anyio.wait_all_tasks_blocked()
            quitter_scope.cancel()
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(_append, got, group, 3)
            tg.start_soon(_append, got, group, 4)
        return sorted(got, key=str), flush.groups

    assert run(body) == ([2, 6, 8], [[1, 3, 4]])


def test_the_sqlite_ledger_puts_concurrent_batches_in_one_transaction(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Ten batches begun side by side ride in fewer transactions, each answered as if alone."""

    async def body() -> tuple[list[BeginStatus], int, int]:
        ledger = await SqliteLedger.open(
            tmp_path / "l.sqlite3", claim_s=CLAIM_S, ttl_s=TTL_S, owner="a", clock=clock
        )
        statuses: list[BeginStatus] = []

        async def batch(index: int) -> None:
            # Batch 0 and batch 1 share a key: whichever comes second finds it busy.
            key = "shared" if index < 2 else f"k{index}"
            [begun] = await ledger.begin([claim(key, f"m{index}")])
            statuses.append(begun.status)

        try:
            async with anyio.create_task_group() as tg:
                for index in range(10):
                    tg.start_soon(batch, index)
        finally:
            await ledger.aclose()
        return statuses, ledger.group.flushes, ledger.group.calls

    statuses, flushes, calls = run(body)
    assert sorted(statuses) == sorted([BeginStatus.STARTED] * 9 + [BeginStatus.BUSY])
    assert calls == 10
    assert flushes < calls


def test_a_damaged_record_fails_its_own_call_and_not_the_others_in_its_transaction(
    tmp_path: Path, clock: FakeClock
) -> None:
    """One call fails on a hand-edited row; the call beside it in the transaction commits."""

    async def body() -> tuple[object, object, int]:
        path = tmp_path / "l.sqlite3"
        ledger = await SqliteLedger.open(
            path,
            claim_s=CLAIM_S,
            ttl_s=TTL_S,
            owner="a",
            clock=clock,
            group_window_s=FOREVER_S,
            group_max_ops=2,
        )
        got: dict[str, object] = {}

        async def begin(key: str) -> None:
            try:
                got[key] = (await ledger.begin([claim(key, "m1")]))[0].status
            except LedgerError as exc:
                got[key] = exc

        try:
            # Alone, under a deadline: each of these goes at once.
            with anyio.fail_after(30):
                await ledger.begin([claim("bad", "m0")])
                await ledger._run(
                    "damage",
                    lambda conn: conn.execute(
                        "UPDATE ledger SET committed = 'x' WHERE key = 'bad'"
                    ),
                )
            flushes_before = ledger.group.flushes
            # No deadline: the two wait for each other (max_ops 2) and ride together.
            async with anyio.create_task_group() as tg:
                tg.start_soon(begin, "bad")
                tg.start_soon(begin, "good")
            flushes = ledger.group.flushes - flushes_before
            with anyio.fail_after(30):
                stored = await ledger.read(["good"])
        finally:
            await ledger.aclose()
        return got["bad"], (got["good"], stored["good"].claim_message_id), flushes

    bad, good, flushes = run(body)
    assert isinstance(bad, LedgerError)
    assert good == (BeginStatus.STARTED, "m1")
    assert flushes == 1


def test_a_group_commit_refuses_an_empty_group_or_a_negative_window() -> None:
    """max_ops below 1 or a negative window is a programming error, said at once."""
    with pytest.raises(ValueError, match="max_ops"):
        GroupCommit(Recorder(), window_s=-1, max_ops=1, lock=anyio.Lock())
    with pytest.raises(ValueError, match="max_ops"):
        GroupCommit(Recorder(), window_s=0, max_ops=0, lock=anyio.Lock())


def test_an_unshielded_leader_cancelled_mid_flush_abandons_its_group_and_hands_the_lead_on() -> (
    None
):
    """The flush is cancelled with its leader: group-mates get `abandoned`, the next group runs."""

    class Hung(Recorder):
        async def __call__(self, ops: Sequence[int]) -> list[Answer[int]]:
            self.groups.append(list(ops))
            if 1 in ops:
                await anyio.sleep_forever()
            return [(2 * op, None) for op in ops]

    async def body() -> tuple[list[object], list[list[int]]]:
        flush = Hung()
        group = GroupCommit(
            flush,
            window_s=FOREVER_S,
            max_ops=2,
            lock=anyio.Lock(),
            abandoned=lambda op: BoomError(f"abandoned {op}"),
        )
        got: list[object] = []
        leader_scope = anyio.CancelScope()

        async def leader() -> None:
            with leader_scope:
                await group.call(1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(leader)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(_append, got, group, 2)
            await anyio.wait_all_tasks_blocked()
            # Both are in the hung flush now: the leader is cancelled, and the flush with it.
            leader_scope.cancel()
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(_append, got, group, 3)
            tg.start_soon(_append, got, group, 4)
        return got, flush.groups

    got, groups = run(body)
    assert [str(each) for each in got[:1]] == ["abandoned 2"]
    assert sorted(got[1:], key=str) == [6, 8]
    assert groups == [[1, 2], [3, 4]]
