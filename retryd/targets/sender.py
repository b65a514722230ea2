"""Sending the jobs the guards let through: tokens, ledger claim, resubmit, then account for it.

Per target, in this order:
1. the rate limit: wait for tokens, but only for part of the lease; jobs that get
   none in time are deferred (nothing is consumed);
2. the ledger: `begin` claims each job's key under this DLQ message, so that a
   crash, a lost lease or a second replica can never resubmit it twice unseen;
3. the resubmitter, which passes the key on where the target can deduplicate;
4. each answer, the moment it is in (one job's, or one batch call's), is handed to
   the caller to decide, and then the circuit breaker hears of every success and
   transient failure, and the ledger of every success (`commit`) and failure
   (`release`). A slow call holds back its own job only.

The delete comes later, in the pipeline, and only for what is safe.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import anyio
import structlog

from retryd.admission import Defer, DeferReason, Go, Guards, Hold
from retryd.admission.ratelimit import RateLimits
from retryd.ledger.base import BeginStatus, Begun, Claim, Ledger, LedgerError
from retryd.models import ErrorClass, FailReason, Job, Target
from retryd.targets import Delivery, TargetRouter

log = structlog.get_logger("retryd.sending")

# Reason of the RESUBMITTED outcome for a message whose resubmission the ledger
# had already committed (its delete was lost): it is only deleted now.
ALREADY_RESUBMITTED = "already-resubmitted"
# How long the ledger commit after a send may hold off a cancellation.
ACCOUNT_SHIELD_S = 10.0
# Share of the time left on a lease that may be spent waiting for rate-limit
# tokens; the rest is for the target's answer and the delete.
TOKEN_WAIT_SHARE = 0.5


@dataclass
class Sent:
    """What happened to a group of Go verdicts."""

    deliveries: list[Delivery] = field(default_factory=list)
    already_done: list[Job] = field(default_factory=list)
    deferred: list[Defer] = field(default_factory=list)
    held: list[Hold] = field(default_factory=list)

    def extend(self, other: Sent) -> None:
        self.deliveries.extend(other.deliveries)
        self.already_done.extend(other.already_done)
        self.deferred.extend(other.deferred)
        self.held.extend(other.held)


def _first_failed_s(job: Job) -> float | None:
    first_s = job.first_failed_at_s
    return first_s if first_s is not None else job.letter.sent_at_s


def _claim(go: Go) -> Claim:
    return Claim(go.job.key, go.job.letter.message_id, go.attempt, _first_failed_s(go.job))


def _sent_claim(job: Job) -> Claim:
    """The claim `job` was sent under (its attempt as the ledger began it)."""
    return Claim(job.key, job.letter.message_id, job.next_attempt, _first_failed_s(job))


class Sender:
    """Sends Go verdicts, target by target, within a deadline."""

    def __init__(
        self,
        *,
        targets: TargetRouter,
        guards: Guards,
        rates: RateLimits | None,
        ledger: Ledger | None,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self._targets = targets
        self._guards = guards
        self._rates = rates
        self._ledger = ledger
        self._clock_s = clock_s

    async def send(
        self, gos: Sequence[Go], act_by: float, on_group: Callable[[Sent], None] | None = None
    ) -> Sent:
        """Every Go ends up in exactly one of the result's lists.

        `on_group` hears each part of the result the moment it is known (the jobs
        deferred or held before sending, then each target answer), before the ledger
        is told: a caller that decides there keeps what a target accepted even if the
        rest of the batch is then cancelled (a lease running out, a stop).
        """
        groups: dict[Target, list[Go]] = defaultdict(list)
        for go in gos:
            groups[go.job.target].append(go)
        sent = Sent()
        tokens_by = (
            anyio.current_time() + max(0.0, act_by - anyio.current_time()) * TOKEN_WAIT_SHARE
        )

        def heard(result: Sent) -> None:
            sent.extend(result)
            if on_group is not None:
                on_group(result)

        async with anyio.create_task_group() as tasks:
            for target, group in groups.items():
                tasks.start_soon(self._send_group, target, group, tokens_by, heard)
        return sent

    async def _send_group(
        self, target: Target, group: list[Go], tokens_by: float, heard: Callable[[Sent], None]
    ) -> None:
        # Breaker permits taken by `assess` that no call used go back, whatever happens
        # here (a cancelled group included): a leaked half-open permit would wedge it.
        unused_permits = len(group)
        # One assess call gave every Go of a target its permit in the same episode.
        episode = group[0].breaker_episode if group else None
        # Begun in the ledger and not answered yet, by DLQ message id.
        unanswered: dict[str, Job] = {}

        async def on_answer(deliveries: Sequence[Delivery]) -> None:
            nonlocal unused_permits
            answered = [d for d in deliveries if unanswered.pop(d.job.letter.message_id, None)]
            if not answered:
                return
            unused_permits -= len(answered)
            # Decided first, so that nothing after this (a lease running out, a stop)
            # can undo what the target took.
            heard(Sent(deliveries=answered))
            # The copies are out: telling the breaker and the ledger must not be cut
            # short, or a committed resubmission would look begun and be sent again.
            with anyio.move_on_after(ACCOUNT_SHIELD_S, shield=True):
                await self._account(target, [d.job for d in answered], answered, episode)

        try:
            before = Sent()
            granted = await self._tokens(target, len(group), tokens_by)
            for go in group[granted:]:
                before.deferred.append(
                    Defer(
                        go.job,
                        DeferReason.RATE_LIMITED,
                        0.0,
                        f"rate limit of {target.arn} reached; it waits for the next cycle",
                        go.job.attempt,
                    )
                )
            to_send = await self._begin(group[:granted], before)
            heard(before)
            if to_send:
                unanswered.update((job.letter.message_id, job) for job in to_send)
                deliveries = await self._targets.submit(to_send, on_answer)
                # A router that answers only at the end is heard here.
                await on_answer(deliveries)
        except Exception:
            # A resubmitter turns whatever the wire returns into a Delivery, so this is
            # a bug in retryd. It stays with this target: its unanswered jobs fail and
            # hand their claims back (or every replica would defer them for claim_s),
            # and the batch's other targets go on.
            log.exception("target-group-failed", target=target.arn, unanswered=len(unanswered))
            failed = list(unanswered.values())
            unanswered.clear()
            detail = "retryd failed while sending to this target (a bug; see the traceback)"
            heard(Sent(held=[Hold(job, FailReason.INTERNAL_ERROR, detail) for job in failed]))
            with anyio.move_on_after(ACCOUNT_SHIELD_S, shield=True):
                await self._release(target, failed)
        finally:
            # Cancelled (the lease ran out, a stop) with calls in flight: their claims
            # stay begun, so that this message is resumed as the same attempt.
            self._guards.release_permits(target, unused_permits, episode)

    async def _tokens(self, target: Target, wanted: int, until: float) -> int:
        """Tokens for `wanted` messages, waiting for them until `until` (anyio clock)."""
        if self._rates is None:
            return wanted
        bucket = self._rates.for_target(target.arn)
        granted = bucket.take(wanted)
        while granted < wanted:
            wait_s = bucket.wait_s(1)
            if anyio.current_time() + wait_s > until:
                break
            await anyio.sleep(wait_s)
            granted += bucket.take(wanted - granted)
        return granted

    async def _begin(self, gos: Sequence[Go], result: Sent) -> list[Job]:
        """Claim each job in the ledger; the jobs that may be sent, with their attempt set."""
        if self._ledger is None:
            return [go.job for go in gos]
        claims = [_claim(go) for go in gos]
        try:
            begun = await self._ledger.begin(claims) if claims else []
        except LedgerError as exc:
            result.held.extend(Hold(go.job, FailReason.LEDGER_UNAVAILABLE, str(exc)) for go in gos)
            return []
        jobs: list[Job] = []
        for go, answer in zip(gos, begun, strict=True):
            job = self._after_begin(go, answer, result)
            if job is not None:
                jobs.append(job)
        return jobs

    def _after_begin(self, go: Go, begun: Begun, result: Sent) -> Job | None:
        if begun.status is BeginStatus.DONE:
            result.already_done.append(replace(go.job, attempt=begun.attempt - 1))
            return None
        if begun.status is BeginStatus.BUSY:
            result.deferred.append(
                Defer(
                    go.job,
                    DeferReason.CLAIMED_ELSEWHERE,
                    0.0,
                    "another message with this key is being resubmitted (here or by another "
                    "replica); it is looked at again later",
                    go.job.attempt,
                )
            )
            return None
        # STARTED, or RESUMED: a resubmission begun earlier and never committed goes
        # again under the same key and attempt, so the target can tell it is a repeat.
        return replace(go.job, attempt=begun.attempt - 1)

    async def _account(
        self,
        target: Target,
        jobs: Sequence[Job],
        deliveries: Sequence[Delivery],
        episode: int | None,
    ) -> None:
        """Tell the breaker and the ledger how each call went."""
        self._tell_breaker(target, deliveries, episode)
        if self._ledger is None or not deliveries:
            return
        done: list[Claim] = []
        undone: list[Job] = []
        for job, delivery in zip(jobs, deliveries, strict=True):
            if delivery.error is None:
                done.append(_sent_claim(job))
            else:
                undone.append(job)
        if done:
            await self._commit(self._ledger, target, done)
        if undone:
            # Apart from the commit: a commit that fails must not leave these claims
            # holding their keys against every replica for claim_s.
            await self._release(target, undone)

    async def _release(self, target: Target, jobs: Sequence[Job]) -> None:
        """Hand back the claims of jobs whose resubmission did not happen (or is unknown)."""
        if self._ledger is None or not jobs:
            return
        try:
            await self._ledger.release([_sent_claim(job) for job in jobs])
        except LedgerError as exc:
            log.warning("ledger-settle-failed", target=target.arn, error=str(exc))

    async def _commit(self, ledger: Ledger, target: Target, done: Sequence[Claim]) -> None:
        try:
            kept = await ledger.commit(done, self._clock_s())
        except LedgerError as exc:
            # The targets already have their copies: deleting is still right. The
            # count is short by these attempts, and a begun claim expires by itself.
            log.warning("ledger-settle-failed", target=target.arn, error=str(exc))
            return
        for claim in (claim for claim, ok in zip(done, kept, strict=True) if not ok):
            log.warning(
                "ledger-claim-lost",
                key=claim.key,
                message_id=claim.message_id,
                why="another replica took the claim over; the target has the copy",
            )

    def _tell_breaker(
        self, target: Target, deliveries: Sequence[Delivery], episode: int | None
    ) -> None:
        breakers = self._guards.breakers
        if breakers is None:
            return
        breaker = breakers.for_target(target)
        for delivery in deliveries:
            error = delivery.error
            if error is None:
                breaker.record(success=True, episode=episode)
            elif error.error_class is ErrorClass.TRANSIENT:
                breaker.record(success=False, episode=episode)
            else:
                # A permanent error is about this message (it is parked), not the
                # target's health: its permit goes back unjudged.
                breaker.release(1, episode)
