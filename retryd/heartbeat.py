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

The deadline the batch's work runs under is a CancelScope whose deadline the
heartbeat moves (`Heartbeat.scope`); the beat's timing is decided by the pure
`next_lease_s`, so the rules are tested without a clock.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import anyio
import structlog

from retryd.ledger.base import Claim, LedgerError
from retryd.metrics import Metrics
from retryd.models import DeadLetter, QueueRef

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
    ) -> None:
        self._queue = queue
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
        self._scopes: list[anyio.CancelScope] = []
        # How many times the lease was extended, and whether the heartbeat stopped.
        self.extensions = 0
        self.stopped: str | None = None

    @property
    def act_by(self) -> float:
        """By when the batch's work must be done: the lease's end less the delete's margin."""
        return self._leased_until - self._margin_s

    def scope(self, *, shield: bool = False, at_least_s: float = 0.0) -> anyio.CancelScope:
        """A cancel scope for work on the batch, whose deadline follows each extension.

        `at_least_s`: the deadline is never sooner than that from now (the final delete's
        own allowance); `shield`: the scope is shielded from outer cancellation too.
        """
        deadline = self.act_by
        if at_least_s > 0:
            deadline = max(deadline, anyio.current_time() + at_least_s)
        scope = anyio.CancelScope(deadline=deadline, shield=shield)
        self._scopes.append(scope)
        return scope

    async def run(self) -> None:
        """Beat until cancelled (the batch is done), the cap is reached, or a beat fails.

        The lease and the claims beat apart, so a slow ledger never holds up an
        extension, nor a slow SQS a renewal.
        """
        async with anyio.create_task_group() as beats:
            beats.start_soon(self._beat_while, self._lease_due_at, self._extend_lease)
            beats.start_soon(self._beat_while, self._claims_due_at, self._renew_claims)

    async def _beat_while(
        self, due_at: Callable[[], float], step: Callable[[float], Awaitable[None]]
    ) -> None:
        beat_at = anyio.current_time()
        while self.stopped is None:
            beat_at = max(due_at(), beat_at + MIN_BEAT_INTERVAL_S)
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
        for scope in self._scopes:
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
