"""Group commit: the ledger calls of every batch in flight, gathered into one transaction.

A durable ledger pays per transaction (a hop to its thread and a COMMIT for
SQLite, a round trip for DynamoDB), not per record. With many DLQs' batches
running side by side, each batch's claim, commit and park calls arrive a few
milliseconds apart; a group holds the first of them for a short window
(`window_s`), or until `max_ops` calls wait, and hands them all to one `flush`.
Each caller is answered only once the transaction (or the calls) it rode in
have been answered.

A window never holds a caller past its own deadline: each call brings the
deadline of its cancel scope (a message's lease, a shutdown's grace), and the
window closes one window's length before the earliest of them (at once, if
that is already past).

Who runs the flush is the one difference between the two kinds of group, and
it decides what a caller's cancellation does to the others:

- `GroupCommit` (SQLite): the caller that opened a window (the leader) holds it
  and flushes it, shielded: a transaction in a thread cannot be stopped halfway,
  and is short, so a leader cancelled while it waits does not strand the
  others. The lead then passes to the first caller still waiting.
- `OwnedGroupCommit` (DynamoDB): a task of the ledger's own flushes every group,
  for as long as the ledger is open (`flushing`); each caller waits for its own
  answer under its own cancel scope. A request waits on the network, and no
  caller's deadline may reach into another's: a caller cancelled (its lease, a
  stop's drain timeout) stops waiting at once, and the request its call rode in
  goes on for the others. Its call's outcome is then unknown to it, as for a
  single request cut off by a timeout, which the ledger's protocol copes with (a
  claim begun and unheard is resumed as the same attempt). When the ledger
  closes, a flush still out is cancelled and its callers, and those still
  waiting, are answered with the `abandoned` error: a stop is never held by the
  ledger past its drain timeout.

Either way, a caller cancelled before its call is taken into a flush is removed
from the group; once taken, its call is applied whole or not at all, as when it
ran alone.

`flush` answers each call on its own: SQLite's runs them in order, each in a
savepoint, so a call that fails is rolled back alone and fails only its caller;
DynamoDB's sends again, each call on its own, the calls of a request that failed
whole, so a failure is answered to the call whose request failed. A flush that
raises fails exactly the callers that rode in it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskStatus

Op = TypeVar("Op")
Res = TypeVar("Res")


@dataclass(eq=False, slots=True)
class _Waiter(Generic[Op, Res]):
    """One caller's call, and where its answer (or its failure) is left for it."""

    op: Op
    deadline_s: float
    # When the call joined (anyio's clock): the window of the group it opens counts from it.
    joined_s: float
    # Set once the call is answered, or once its caller is to lead the next group.
    wakeup: anyio.Event = field(default_factory=anyio.Event)
    lead: bool = False
    promoted: bool = False
    taken: bool = False
    answered: bool = False
    result: Res | None = None
    error: BaseException | None = None

    def answer(self, result: Res | None, error: BaseException | None) -> None:
        self.result, self.error, self.answered = result, error, True
        self.wakeup.set()

    def outcome(self) -> Res:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # error None: result set


# What `flush` answers per call, in the order given: its result, or what it failed with.
Answer = tuple[Res | None, BaseException | None]
Flush = Callable[[Sequence[Op]], Awaitable[list[Answer[Res]]]]


class _Window(Generic[Op, Res]):
    """The calls waiting for the next flush, the window that gathers them, and the flush.

    Both kinds of group share this; they differ only in who holds the window and
    runs `flush` (the module's docstring says why).
    """

    def __init__(self, flush: Flush[Op, Res], *, window_s: float, max_ops: int) -> None:
        if window_s < 0 or max_ops < 1:
            raise ValueError("window_s must be >= 0 and max_ops >= 1")
        self._flush = flush
        self._window_s = window_s
        self._max_ops = max_ops
        self._pending: list[_Waiter[Op, Res]] = []
        # Set when a call joins an empty group, the group is full, or a caller with a
        # deadline joined it.
        self._wake = anyio.Event()
        # Flushes and calls so far, for the bench and the tests.
        self.flushes = 0
        self.calls = 0

    def _join(self, op: Op) -> _Waiter[Op, Res]:
        waiter: _Waiter[Op, Res] = _Waiter(
            op, anyio.current_effective_deadline(), anyio.current_time()
        )
        self._pending.append(waiter)
        if (
            len(self._pending) == 1
            or len(self._pending) >= self._max_ops
            or waiter.deadline_s < math.inf
        ):
            self._wake.set()
        return waiter

    def _leave(self, waiter: _Waiter[Op, Res]) -> None:
        """A caller that stopped waiting before its call was taken: its call is left out."""
        if not waiter.taken and waiter in self._pending:
            self._pending.remove(waiter)

    async def _hold_window(self, opened_s: float) -> None:
        while len(self._pending) < self._max_ops:
            earliest_s = min((w.deadline_s for w in self._pending), default=math.inf)
            # A window's length is kept before the earliest deadline for the flush itself.
            close_s = min(opened_s + self._window_s, earliest_s - self._window_s)
            if close_s <= anyio.current_time():
                return
            self._wake = anyio.Event()
            with anyio.move_on_after(close_s - anyio.current_time()):
                await self._wake.wait()

    def _take(self) -> list[_Waiter[Op, Res]]:
        group = self._pending[: self._max_ops]
        del self._pending[: self._max_ops]
        for waiter in group:
            waiter.taken = True
        return group

    async def _run(self, group: list[_Waiter[Op, Res]], cut_off: Callable[[Op], Exception]) -> None:
        """Flush `group` and answer each of its calls; `cut_off` answers them if the flush
        itself is cancelled (what it did is then unknown to all)."""
        self.flushes += 1
        self.calls += len(group)
        answers: list[Answer[Res]]
        try:
            answers = await self._flush([w.op for w in group])
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the group
            answers = [(None, exc)] * len(group)
        except BaseException:
            for waiter in group:
                waiter.answer(None, cut_off(waiter.op))
            raise
        if len(answers) != len(group):
            wrong = RuntimeError(f"flush answered {len(answers)} of {len(group)} calls")
            answers = [(None, wrong)] * len(group)
        for waiter, (result, error) in zip(group, answers, strict=True):
            waiter.answer(result, error)


def _cancelled(op: object) -> Exception:
    return RuntimeError(f"the flush of {op!r} was cancelled")


class GroupCommit(_Window[Op, Res]):
    """Gathers calls for up to `window_s` (or `max_ops` calls); the first caller flushes them.

    `flush` runs one at a time under `lock` (SQLite's hands the group to its worker
    thread), shielded; it answers each call, and raises only when the group as a
    whole failed (then every call in it fails with that). One caller at a time
    leads: it holds the window, flushes, and hands the lead to the first caller
    still waiting.
    """

    def __init__(
        self, flush: Flush[Op, Res], *, window_s: float, max_ops: int, lock: anyio.Lock
    ) -> None:
        super().__init__(flush, window_s=window_s, max_ops=max_ops)
        self._lock = lock
        self._leading = False

    async def call(self, op: Op) -> Res:
        """Run `op` in the next flush; its result once that flush has committed."""
        waiter = self._join(op)
        if not self._leading:
            self._leading = waiter.lead = True
        try:
            if not waiter.lead:
                await waiter.wakeup.wait()
        except BaseException:
            if waiter.lead and not waiter.answered:
                # Promoted as it was cancelled: the group still needs its flush.
                await self._lead(waiter)
            else:
                self._leave(waiter)
            raise
        if waiter.lead and not waiter.answered:
            await self._lead(waiter)
        return waiter.outcome()

    async def _lead(self, leader: _Waiter[Op, Res]) -> None:
        """Hold the window, flush one group, hand the lead on (whatever became of the flush)."""
        with anyio.CancelScope(shield=True):
            try:
                # A caller handed the lead has waited through a whole flush: no window for it.
                await self._hold_window(-math.inf if leader.promoted else anyio.current_time())
                async with self._lock:
                    await self._run(self._take(), _cancelled)
            finally:
                self._leave(leader)
                if self._pending:
                    after = self._pending[0]
                    after.lead = after.promoted = True
                    after.wakeup.set()
                else:
                    self._leading = False


class _State(Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class OwnedGroupCommit(_Window[Op, Res]):
    """Gathers calls for up to `window_s` (or `max_ops` calls); a task of its owner's flushes them.

    The owner (the DynamoDB ledger) keeps `flushing()` open for as long as it is
    open itself. Flushes run one at a time, in that task; each caller waits for
    its own answer under its own cancel scope. `abandoned` is what a call gets
    when the ledger closes before answering it (its flush cancelled, or never run).
    """

    def __init__(
        self,
        flush: Flush[Op, Res],
        *,
        window_s: float,
        max_ops: int,
        abandoned: Callable[[Op], Exception],
    ) -> None:
        super().__init__(flush, window_s=window_s, max_ops=max_ops)
        self._abandoned = abandoned
        self._state = _State.NEW

    async def call(self, op: Op) -> Res:
        """Run `op` in the next flush; its result once that flush was answered.

        Cancelled, the caller stops waiting at once: a call not yet taken is left
        out, and a flush already out goes on for its other calls.
        """
        if self._state is not _State.OPEN:
            if self._state is _State.NEW:
                raise RuntimeError("the group's flushing() is not open: open its ledger first")
            raise self._abandoned(op)
        waiter = self._join(op)
        try:
            await waiter.wakeup.wait()
        except BaseException:
            self._leave(waiter)
            raise
        return waiter.outcome()

    @asynccontextmanager
    async def flushing(self) -> AsyncIterator[None]:
        """Flush groups in a task of this context's own until it is left; then a flush
        still out is cancelled, and every call not yet answered gets `abandoned`."""
        if self._state is not _State.NEW:
            raise RuntimeError("a group flushes for one owner's lifetime only")
        # An error of the owner's body is passed on as it is, not in an exception group:
        # the flushing task raises nothing of its own.
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            await tg.start(self._flush_groups)
            try:
                yield
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
                failure = exc
            finally:
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _flush_groups(self, *, task_status: TaskStatus[None]) -> None:
        self._state = _State.OPEN
        task_status.started()
        try:
            while True:
                while not self._pending:
                    self._wake = anyio.Event()
                    await self._wake.wait()
                # Calls that waited through the last flush have had their window.
                await self._hold_window(self._pending[0].joined_s)
                group = self._take()
                # Empty when every caller of the window gave up before it closed.
                if group:
                    await self._run(group, self._abandoned)
        finally:
            self._state = _State.CLOSED
            left, self._pending = self._pending, []
            for waiter in left:
                waiter.answer(None, self._abandoned(waiter.op))
