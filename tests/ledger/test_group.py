"""Group commit: every caller answered once, by the flush it rode in, never past its deadline."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retryd.ledger import BeginStatus, LedgerError, SqliteLedger
from retryd.ledger.group import Answer, GroupCommit, OwnedGroupCommit
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


def abandoned(op: int) -> BoomError:
    return BoomError(f"abandoned {op}")


def owned_of(flush: Recorder, *, window_s: float, max_ops: int) -> OwnedGroupCommit[int, int]:
    return OwnedGroupCommit(flush, window_s=window_s, max_ops=max_ops, abandoned=abandoned)


# Both kinds of group: led by its first caller (SQLite's), or flushed by its owner's task.
KINDS = ["led", "owned"]


@asynccontextmanager
async def opened(
    kind: str, flush: Recorder, *, window_s: float, max_ops: int
) -> AsyncIterator[GroupCommit[int, int] | OwnedGroupCommit[int, int]]:
    """A group of `kind`, flushing for the length of the context."""
    if kind == "led":
        yield group_of(flush, window_s=window_s, max_ops=max_ops)
        return
    group = owned_of(flush, window_s=window_s, max_ops=max_ops)
    async with group.flushing():
        yield group


class Held(Recorder):
    """A flush that waits for `release` (forever for a group holding `hang`)."""

    def __init__(self, *, hang: int | None = None) -> None:
        super().__init__()
        self.release = anyio.Event()
        self.out = anyio.Event()
        self._hang = hang

    async def __call__(self, ops: Sequence[int]) -> list[Answer[int]]:
        self.groups.append(list(ops))
        self.out.set()
        if self._hang in ops:
            await anyio.sleep_forever()
        await self.release.wait()
        return [(2 * op, None) for op in ops]


async def outcome(group: GroupCommit[int, int] | OwnedGroupCommit[int, int], op: int) -> object:
    try:
        return await group.call(op)
    except Exception as exc:  # noqa: BLE001 - the test compares what each caller got
        return exc


@pytest.mark.parametrize("kind", KINDS)
def test_a_caller_is_answered_before_its_deadline_however_long_the_window(kind: str) -> None:
    """A call under a deadline is flushed and answered before it, with an hour-long window."""

    async def body() -> tuple[int, list[list[int]]]:
        flush = Recorder()
        async with opened(kind, flush, window_s=FOREVER_S, max_ops=100) as group:
            with anyio.fail_after(30):
                answer = await group.call(21)
        return answer, flush.groups

    assert run(body) == (42, [[21]])


@pytest.mark.parametrize("kind", KINDS)
def test_a_later_caller_with_a_nearer_deadline_closes_the_open_window(kind: str) -> None:
    """A call with no deadline opens the window; one with a deadline joins and both are flushed."""

    async def body() -> tuple[list[object], list[list[int]]]:
        flush = Recorder()
        got: list[object] = []
        async with (
            opened(kind, flush, window_s=FOREVER_S, max_ops=100) as group,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(lambda: _append(got, group, 1))
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(30):
                got.append(await group.call(2))
        return sorted(got, key=str), flush.groups

    assert run(body) == ([2, 4], [[1, 2]])


async def _append(
    into: list[object], group: GroupCommit[int, int] | OwnedGroupCommit[int, int], op: int
) -> None:
    into.append(await outcome(group, op))


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(st.integers(-50, 50), min_size=1, max_size=40),
    max_ops=st.integers(1, 12),
    window_s=st.sampled_from([0.0, 0.001, FOREVER_S]),
    kind=st.sampled_from(KINDS),
)
def test_every_caller_gets_its_own_answer_from_exactly_one_flush(
    ops: list[int], max_ops: int, window_s: float, kind: str
) -> None:
    """Each call is flushed once, in a group of at most max_ops, and gets its own answer."""
    # Every caller has a deadline, so even an hour's window lets the last, partial group go.

    async def body() -> tuple[dict[int, object], list[list[int]]]:
        flush = Recorder()
        got: dict[int, object] = {}
        async with opened(kind, flush, window_s=window_s, max_ops=max_ops) as group:

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
    kind=st.sampled_from(KINDS),
)
def test_a_failed_transaction_fails_exactly_the_callers_that_rode_in_it(
    ops: list[int], max_ops: int, kind: str
) -> None:
    """A flush that raises fails every call of its group, and no call of any other group."""
    poison = ops[len(ops) // 2]

    async def body() -> tuple[dict[int, object], list[list[int]]]:
        flush = Recorder(poison=poison)
        got: dict[int, object] = {}
        async with opened(kind, flush, window_s=0.001, max_ops=max_ops) as group:

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


@pytest.mark.parametrize("kind", KINDS)
def test_a_caller_cancelled_before_its_flush_is_left_out_of_it(kind: str) -> None:
    """A waiting caller that gives up before the window closes is not flushed at all."""

    async def body() -> tuple[list[object], list[list[int]]]:
        flush = Recorder()
        got: list[object] = []
        quitter_scope = anyio.CancelScope()
        async with (
            opened(kind, flush, window_s=FOREVER_S, max_ops=3) as group,
            anyio.create_task_group() as tg,
        ):

            async def quitter() -> None:
                with quitter_scope:
                    await group.call(2)

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


def test_an_owned_group_flushes_only_while_its_owner_holds_it_open() -> None:
    """A call before `flushing()` is a programming error; one after it closed is abandoned."""

    async def body() -> tuple[object, object, object]:
        group = owned_of(Recorder(), window_s=0.0, max_ops=1)
        before = await outcome(group, 1)
        async with group.flushing():
            during = await outcome(group, 2)
        after = await outcome(group, 3)
        with pytest.raises(RuntimeError, match="one owner"):
            async with group.flushing():
                pass
        return before, during, after

    before, during, after = run(body)
    assert isinstance(before, RuntimeError)
    assert during == 4
    assert str(after) == "abandoned 3"


def test_an_owner_s_error_leaves_its_flushing_context_as_it_was_raised() -> None:
    """The owner's own error comes out of `flushing()` itself, not in an exception group."""

    async def body() -> None:
        async with owned_of(Recorder(), window_s=0.0, max_ops=1).flushing():
            raise BoomError("the owner's")

    with pytest.raises(BoomError, match="the owner's"):
        run(body)


def test_one_caller_cancelled_mid_flush_does_not_fail_its_group_mate() -> None:
    """Two calls ride one flush; one caller's scope ends while it is out: the other is answered."""

    async def body() -> tuple[list[object], bool, list[list[int]]]:
        flush = Held()
        got: list[object] = []
        quitter_scope = anyio.CancelScope()
        group = owned_of(flush, window_s=FOREVER_S, max_ops=2)

        async def quitter() -> None:
            with quitter_scope:
                await group.call(1)

        async with group.flushing(), anyio.create_task_group() as tg:
            tg.start_soon(quitter)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(_append, got, group, 2)
            with anyio.fail_after(30):
                await flush.out.wait()
            # Its batch's lease, a stop's drain timeout: the quitter stops waiting at once.
            quitter_scope.cancel()
            await anyio.wait_all_tasks_blocked()
            assert got == []
            flush.release.set()
        return got, quitter_scope.cancelled_caught, flush.groups

    assert run(body) == ([4], True, [[1, 2]])


def test_a_waiter_leaves_at_its_own_deadline_while_an_earlier_flush_is_out() -> None:
    """A flush is out and stays out: a caller waiting behind it is let go at its deadline."""

    async def body() -> tuple[bool, list[list[int]], list[object]]:
        flush = Held()
        group = owned_of(flush, window_s=FOREVER_S, max_ops=1)
        got: list[object] = []
        async with group.flushing(), anyio.create_task_group() as tg:
            tg.start_soon(_append, got, group, 1)
            with anyio.fail_after(30):
                await flush.out.wait()
            # The flush is released only once this caller is back: had the group held it
            # past its deadline, the test would stop at fail_after instead.
            with anyio.fail_after(30), anyio.move_on_after(0.05) as waited:
                await group.call(2)
            flush.release.set()
        return waited.cancelled_caught, flush.groups, got

    # The caller behind was never flushed: it left before its call was taken.
    assert run(body) == (True, [[1]], [2])


def test_an_owner_closing_mid_flush_cancels_it_and_abandons_every_call_left() -> None:
    """The owner closes with a flush hung and a call waiting: both answered `abandoned` at once."""

    async def body() -> tuple[list[str], list[list[int]]]:
        flush = Held(hang=1)
        group = owned_of(flush, window_s=FOREVER_S, max_ops=2)
        got: list[object] = []
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(30):
                async with group.flushing():
                    tg.start_soon(_append, got, group, 1)
                    tg.start_soon(_append, got, group, 2)
                    await flush.out.wait()
                    # Taken into no flush: the one out never returns.
                    tg.start_soon(_append, got, group, 3)
                    await anyio.wait_all_tasks_blocked()
        return sorted(str(each) for each in got), flush.groups

    assert run(body) == (["abandoned 1", "abandoned 2", "abandoned 3"], [[1, 2]])
