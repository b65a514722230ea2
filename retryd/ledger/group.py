"""Group commit: the ledger calls of every batch in flight, gathered into one transaction.

A durable ledger pays per transaction (a hop to its thread and a COMMIT for
SQLite, a round trip for DynamoDB), not per record. With many DLQs' batches
running side by side, each batch's claim, commit and park calls arrive a few
milliseconds apart; `GroupCommit` holds the first of them for a short window
(`window_s`), or until `max_ops` calls wait, and hands them all to one `flush`.
Each caller is answered only once the transaction (or the calls) it rode in
have been answered.

A window never holds a caller past its own deadline: each call brings the
deadline of its cancel scope (a message's lease, a shutdown's grace), and the
window closes one window's length before the earliest of them (at once, if
that is already past).

The one who opened a window (the leader) flushes it with the whole group's
fate in its hands. SQLite's flush is shielded (a transaction in a thread
cannot be stopped halfway, and is short): a leader cancelled while it waits
does not strand the others. DynamoDB's waits on the network, and a stop must
not wait for it past its drain deadline: a leader cancelled with its group's
requests out cancels them, and its group-mates are answered with the
`abandoned` error (their outcome unknown, as for a failed request); the lead
passes to the next caller either way. A caller cancelled before its call is taken
into a flush is removed from the group; once taken, its call is applied whole
or not at all, as when it ran alone.

`flush` answers each call on its own: SQLite's runs them in order, each in a
savepoint, so a call that fails is rolled back alone and fails only its caller;
DynamoDB's sends again, each call on its own, the calls of a request that failed
whole, so a failure is answered to the call whose request failed. A flush that
raises fails exactly the callers that rode in it.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

Op = TypeVar("Op")
Res = TypeVar("Res")


@dataclass(eq=False, slots=True)
class _Waiter(Generic[Op, Res]):
    """One caller's call, and where its answer (or its failure) is left for it."""

    op: Op
    deadline_s: float
    # Set once the call is answered, or once its caller is to lead the next group.
    wakeup: anyio.Event = field(default_factory=anyio.Event)
    lead: bool = False
    promoted: bool = False
    taken: bool = False
    answered: bool = False
    result: Res | None = None
    error: BaseException | None = None


# What `flush` answers per call, in the order given: its result, or what it failed with.
Answer = tuple[Res | None, BaseException | None]
Flush = Callable[[Sequence[Op]], Awaitable[list[Answer[Res]]]]


class GroupCommit(Generic[Op, Res]):
    """Gathers calls for up to `window_s` (or `max_ops` calls) and runs them as one flush.

    `flush` runs one at a time under `lock` (SQLite's hands the group to its worker
    thread); it answers each call, and raises only when the group as a whole failed
    (then every call in it fails with that). One caller at a time leads: it holds the
    window, flushes, and hands the lead to the first caller still waiting.
    """

    def __init__(
        self,
        flush: Flush[Op, Res],
        *,
        window_s: float,
        max_ops: int,
        lock: anyio.Lock,
        abandoned: Callable[[Op], Exception] | None = None,
    ) -> None:
        if window_s < 0 or max_ops < 1:
            raise ValueError("window_s must be >= 0 and max_ops >= 1")
        self._flush = flush
        # None: the flush is shielded. Else what a group's callers get when its leader is
        # cancelled while the flush is out (the flush is cancelled with it).
        self._abandoned = abandoned
        self._window_s = window_s
        self._max_ops = max_ops
        self._lock = lock
        self._pending: list[_Waiter[Op, Res]] = []
        # Set when the group is full, or a caller with a deadline joined it.
        self._wake = anyio.Event()
        self._leading = False
        # Flushes and calls so far, for the bench and the tests.
        self.flushes = 0
        self.calls = 0

    async def call(self, op: Op) -> Res:
        """Run `op` in the next flush; its result once that flush has committed."""
        waiter: _Waiter[Op, Res] = _Waiter(op, anyio.current_effective_deadline())
        self._pending.append(waiter)
        if len(self._pending) >= self._max_ops or waiter.deadline_s < math.inf:
            self._wake.set()
        if not self._leading:
            self._leading = waiter.lead = True
        try:
            if not waiter.lead:
                await waiter.wakeup.wait()
        except BaseException:
            if waiter.lead and not waiter.answered:
                # Promoted as it was cancelled: the group still needs its flush.
                await self._lead(waiter)
            elif not waiter.taken:
                self._pending.remove(waiter)
            raise
        if waiter.lead and not waiter.answered:
            await self._lead(waiter)
        if waiter.error is not None:
            raise waiter.error
        return waiter.result  # type: ignore[return-value]  # error None: result set

    async def _lead(self, leader: _Waiter[Op, Res]) -> None:
        """Hold the window, flush one group, hand the lead on (whatever became of the flush)."""
        with anyio.CancelScope(shield=self._abandoned is None):
            try:
                # A caller handed the lead has waited through a whole flush: no window for it.
                await self._hold_window(-math.inf if leader.promoted else anyio.current_time())
                async with self._lock:
                    group = self._pending[: self._max_ops]
                    del self._pending[: self._max_ops]
                    await self._run(group)
            finally:
                if not leader.taken and leader in self._pending:
                    # Cancelled before its group was taken: its call is left out.
                    self._pending.remove(leader)
                if self._pending:
                    after = self._pending[0]
                    after.lead = after.promoted = True
                    after.wakeup.set()
                else:
                    self._leading = False

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

    async def _run(self, group: list[_Waiter[Op, Res]]) -> None:
        for waiter in group:
            waiter.taken = True
        self.flushes += 1
        self.calls += len(group)
        answers: list[Answer[Res]]
        try:
            answers = await self._flush([w.op for w in group])
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the group
            answers = [(None, exc)] * len(group)
        except BaseException:
            # The leader was cancelled with the flush out: what it did is unknown to all.
            for waiter in group:
                waiter.error = (
                    self._abandoned(waiter.op) if self._abandoned else RuntimeError("cancelled")
                )
                waiter.answered = True
                waiter.wakeup.set()
            raise
        if len(answers) != len(group):
            wrong = RuntimeError(f"flush answered {len(answers)} of {len(group)} calls")
            answers = [(None, wrong)] * len(group)
        for waiter, (result, error) in zip(group, answers, strict=True):
            waiter.result, waiter.error, waiter.answered = result, error, True
            waiter.wakeup.set()
