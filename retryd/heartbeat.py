"""A batch's heartbeat: keep its lease and its ledger claims alive while work on it is in flight.

A received batch is leased for `drain.visibility_timeout_s`, and its ledger claims
hold their keys for `ledger.claim_renew_s`. Work on the batch (a ledger write, a
rate-limit wait, a target call, a parking write, a delete) may take longer than
either on a slow target or a starved CPU. Cutting the work off at the lease's end
would cancel calls that may already have reached their target, and the next
receiver would send them again. So, like a robust SQS consumer, the batch beats:
before the lease runs out it is extended (ChangeMessageVisibilityBatch for the
messages whose fate is still being carried out) and the claims of work in flight
are renewed, until `drain.max_lease_s` after the receive. Only at that cap is the
work cut off; then, as without a heartbeat, its messages stay in their DLQ.

A beat that fails (a throttled queue, a lost receipt handle, an unreachable
ledger) stops the heartbeat and says so: the batch then ends at the lease it
has, which is what it did before there were heartbeats. It never loses a message.

The batch's work runs under `Heartbeat.scope`, cut off at the cap while the
heartbeat beats and at the lease it has once it stops; the writes that must not be
cut short run under `Heartbeat.shielded`, which follows each extension. How much
to extend is decided by the pure `next_lease_s`, so the rule is tested without a
clock.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
import structlog

from retryd.ledger.base import Claim, LedgerError
from retryd.metrics import Metrics
from retryd.models import DeadLetter, QueueRef
from retryd.settings import Settings

log = structlog.get_logger("retryd.pipeline")

# A lease is extended once less than this share of it is left before the batch's
# deadline: the rest is time for the extension's own call, even on a starved CPU.
EXTEND_AT_LEFT_SHARE = 0.5
# A claim is renewed once this share of its period has passed since the last renewal.
RENEW_AT_SHARE = 1 / 3
# Beats never come closer together than this.
MIN_BEAT_INTERVAL_S = 0.5
# An extension shorter than this beyond the delete's margin is not worth a call.
MIN_EXTENSION_S = 1


@dataclass(frozen=True, slots=True)
class Leasing:
    """How a batch is leased: each lease, the cap on extending it, its claims' period."""

    lease_s: int
    cap_s: int
    claim_renew_s: float

    @classmethod
    def for_settings(cls, settings: Settings) -> Leasing:
        drain = settings.drain
        return cls(drain.visibility_timeout_s, drain.lease_cap_s, settings.ledger.claim_renew_s)


def brief_shield(allowance_s: float) -> anyio.CancelScope:
    """A scope shielded from cancellation for `allowance_s` (no heartbeat to follow)."""
    return anyio.CancelScope(shield=True, deadline=anyio.current_time() + allowance_s)


def shielded_until(allowance_s: float, lease_end: Callable[[], float] | None) -> float:
    """The deadline of a write that must not be cut short (a commit, the final delete).

    Being cancelled (a stop, the cap reached): `allowance_s` from now, so that a
    second signal still means "now". Otherwise as long as the batch's lease holds
    (`lease_end()`, moved on by its heartbeat), and at least `allowance_s`: a slow
    ledger or a slow delete finishes while its messages are still leased.
    """
    floor = anyio.current_time() + allowance_s
    if lease_end is None or _being_cancelled():
        return floor
    return max(floor, lease_end())


def _being_cancelled() -> bool:
    # anyio's effective deadline is -inf inside a scope that has been cancelled.
    return anyio.current_effective_deadline() == -math.inf


def _next_beat_at(due_at: float, last_beat_at: float) -> float:
    """When a beat due at `due_at` comes: never closer than MIN_BEAT_INTERVAL_S to the last."""
    return max(due_at, last_beat_at + MIN_BEAT_INTERVAL_S)


class VisibilityFailure(Protocol):
    """A message whose lease could not be extended (retryd.leases' LeaseFailure)."""

    @property
    def message_id(self) -> str: ...

    @property
    def error(self) -> str: ...

    # The whole call failed, not this message's entry alone.
    @property
    def call_failed(self) -> bool: ...


# Give these letters a fresh lease of so many seconds from now; the ones SQS refused.
Extend = Callable[[Sequence[DeadLetter], int], Awaitable[Sequence[VisibilityFailure]]]
# Renew these claims; for each, whether it is still ours. LedgerError when the ledger fails.
Renew = Callable[[Sequence[Claim]], Awaitable[list[bool]]]


def next_lease_s(*, now: float, cap_at: float, lease_s: int, margin_s: float) -> int | None:
    """Seconds of lease to ask for at `now`; None when the cap leaves no room for more work.

    A full lease while the cap is further than that; then what is left up to the cap,
    rounded down. Less than MIN_EXTENSION_S beyond the delete's margin is no room.
    """
    left_s = math.floor(cap_at - now)
    seconds = min(lease_s, left_s)
    if seconds - margin_s < MIN_EXTENSION_S:
        return None
    return seconds


class Heartbeat:
    """Keeps one batch's messages leased and its claims held, up to a cap, while it works.

    `held()` names the letters whose fate is still being carried out (undecided, or
    decided for deletion and not deleted yet); a message decided to stay (deferred
    and hidden, failed) is never extended, or its hide would be undone. `claims()`
    names the ledger claims of work in flight (begun and not yet committed or
    released). All times are the anyio clock's.
    """

    def __init__(
        self,
        *,
        queue: QueueRef,
        received_at: float,
        lease_s: int,
        cap_s: int,
        claim_renew_s: float,
        margin_s: float,
        extend: Extend,
        renew: Renew,
        held: Callable[[], Sequence[DeadLetter]],
        claims: Callable[[], Sequence[Claim]],
        metrics: Metrics | None = None,
        beating: bool = True,
    ) -> None:
        self._queue = queue
        # False: `run` is never started (no leasing configured); work ends at act_by.
        self._beating = beating
        self._lease_s = lease_s
        self._cap_at = received_at + cap_s
        self._margin_s = margin_s
        self._claim_renew_s = claim_renew_s
        self._extend = extend
        self._renew = renew
        self._held = held
        self._claims = claims
        self._metrics = metrics
        # The lease as SQS holds it now: taken before the receive, so never later than SQS's.
        self._leased_until = received_at + lease_s
        self._renewed_at = received_at
        # Messages SQS would not extend (a handle gone stale): not asked about again.
        self._refused: set[str] = set()
        # Scopes of the batch's work (cut off at the cap, or at act_by once stopped) and
        # of the writes that must not be cut short (following each extension).
        self._work_scopes: list[anyio.CancelScope] = []
        self._shielded_scopes: list[anyio.CancelScope] = []
        # How many times the lease was extended, and whether the heartbeat stopped.
        self.extensions = 0
        self.stopped: str | None = None

    @property
    def act_by(self) -> float:
        """By when the batch's work must be done: the lease's end less the delete's margin."""
        return self._leased_until - self._margin_s

    def scope(self) -> anyio.CancelScope:
        """A cancel scope for work on the batch: cut off at the cap while the heartbeat beats.

        Not at the lease's end: a loop starved past a beat (a busy CPU) must not cancel
        its own work while the lease can still be kept; a message whose lease was lost
        meanwhile is guarded by its ledger claim, which is renewed too. Once the
        heartbeat stops (a failed beat, the cap), the deadline is the lease it has.
        """
        scope = anyio.CancelScope(deadline=self._work_deadline())
        self._work_scopes.append(scope)
        return scope

    def _work_deadline(self) -> float:
        if self._beating and self.stopped is None:
            return self._cap_at - self._margin_s
        return self.act_by

    def shielded(self, allowance_s: float) -> anyio.CancelScope:
        """A scope for a write that must not be cut short (see `shielded_until`).

        Unless it is being cancelled, its deadline follows the lease's extensions.
        """
        scope = anyio.CancelScope(
            shield=True, deadline=shielded_until(allowance_s, lambda: self.act_by)
        )
        if not _being_cancelled():
            self._shielded_scopes.append(scope)
        return scope

    async def run(self) -> None:
        """Beat until cancelled (the batch is done), the cap is reached, or a beat fails.

        The lease and the claims beat apart, so a slow ledger never holds up an
        extension, nor a slow SQS a renewal. A bug here stops the heartbeat, never
        the batch it keeps.
        """
        try:
            started_at = anyio.current_time()
            # Most batches are settled long before their first beat is due: until then
            # this task waits alone, and the beats' own task group and two tasks (80 us
            # of CPU, more than the rest of a batch's bookkeeping) are made only for a
            # batch that lives to need them. Nothing else moves a due time meanwhile.
            await anyio.sleep_until(
                min(
                    _next_beat_at(self._lease_due_at(), started_at),
                    _next_beat_at(self._claims_due_at(), started_at),
                )
            )
            async with anyio.create_task_group() as beats:
                beats.start_soon(
                    self._beat_while, self._lease_due_at, self._extend_lease, started_at
                )
                beats.start_soon(
                    self._beat_while, self._claims_due_at, self._renew_claims, started_at
                )
        except Exception:
            log.exception("heartbeat-failed", queue=self._queue.name, step="internal")
            self._stop("heartbeat-failed", None, error="internal")

    async def _beat_while(
        self,
        due_at: Callable[[], float],
        step: Callable[[float], Awaitable[None]],
        started_at: float,
    ) -> None:
        beat_at = started_at
        while self.stopped is None:
            beat_at = _next_beat_at(due_at(), beat_at)
            await anyio.sleep_until(beat_at)
            if self.stopped is None:
                await step(anyio.current_time())

    def _lease_due_at(self) -> float:
        return self._leased_until - self._margin_s - self._lease_s * EXTEND_AT_LEFT_SHARE

    def _claims_due_at(self) -> float:
        return self._renewed_at + self._claim_renew_s * RENEW_AT_SHARE

    async def beat(self, now: float) -> None:
        """One beat at `now`: renew the claims and extend the lease, each if it is due."""
        if now >= self._claims_due_at():
            await self._renew_claims(now)
        if self.stopped is None and now >= self._lease_due_at():
            await self._extend_lease(now)

    async def _extend_lease(self, now: float) -> None:
        letters = [x for x in self._held() if x.message_id not in self._refused]
        if not letters:
            # Nothing held needs the lease now; looked at again at the next beat.
            return
        seconds = next_lease_s(
            now=now, cap_at=self._cap_at, lease_s=self._lease_s, margin_s=self._margin_s
        )
        if seconds is None:
            self._stop(
                "lease-cap-reached",
                None,
                why="drain.max_lease_s after the receive: the work in flight is cut off at "
                "the end of this lease and its messages stay in their DLQ",
            )
            return
        failures = await self._extend(letters, seconds)
        whole = [failure for failure in failures if failure.call_failed]
        if whole:
            self._stop("heartbeat-failed", "visibility", error=whole[0].error)
            return
        for failure in failures:
            self._refused.add(failure.message_id)
            log.warning(
                "lease-not-extended",
                queue=self._queue.name,
                message_id=failure.message_id,
                error=failure.error,
            )
        extended = len(letters) - len(failures)
        self._leased_until = now + seconds
        self.extensions += 1
        for scope in self._shielded_scopes:
            scope.deadline = max(scope.deadline, self.act_by)
        if self._metrics is not None and extended:
            self._metrics.record_lease_extensions(self._queue, extended)
        log.info(
            "lease-extended",
            queue=self._queue.name,
            messages=extended,
            lease_s=seconds,
            extension=self.extensions,
        )

    async def _renew_claims(self, now: float) -> None:
        claims = list(self._claims())
        self._renewed_at = now
        if not claims:
            return
        try:
            held = await self._renew(claims)
        except LedgerError as exc:
            self._stop("heartbeat-failed", "claims", error=str(exc))
            return
        for claim, ours in zip(claims, held, strict=True):
            if not ours:
                log.warning(
                    "ledger-claim-lost",
                    key=claim.key,
                    message_id=claim.message_id,
                    why="another holder took the claim over while this one worked (it did "
                    f"not renew it within ledger.claim_renew_s = {self._claim_renew_s}s)",
                )

    def _stop(self, event: str, step: str | None, **fields: str) -> None:
        self.stopped = event
        # No longer kept: the work ends with the lease it has (now, if that has passed).
        for scope in self._work_scopes:
            scope.deadline = min(scope.deadline, self.act_by)
        if step is not None and self._metrics is not None:
            self._metrics.record_heartbeat_failure(self._queue, step)
        log.warning(
            event,
            queue=self._queue.name,
            step=step,
            extensions=self.extensions,
            act_by_in_s=round(self.act_by - anyio.current_time(), 3),
            **fields,
        )
