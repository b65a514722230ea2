"""Guards: whether a resolved job may be sent now, in docs/design.md's order. Admission's one owner.

`Guards.assess` turns each resolved (or unresolvable) dead letter of a batch into
a Verdict: go now, park (and why), defer (hide it for a while, and why), or hold
(leave it untouched because retryd cannot tell yet). The pipeline acts on the
verdicts; `retryd plan` only prints them. Each Go carries a breaker `Permit`.

Right before one target's Go verdicts are sent, `Guards.admit` takes the last
two steps, which only make sense at that moment: the ledger claim on each key (see
claims.py) and the target's rate limit. It hands the jobs out a few at a time, as
the target's tokens come, each part to be sent at once: tokens waited for and spent
together would reach the target as a lump no bucket ever held. Jobs whose tokens
cannot come soon are handed back (deferred, hidden only for about the time their
tokens take), and `Guards.receivable` tells a receiver how many to take at all.
After the answers, the sender settles each permit and hands them to
`Guards.settle`, which writes the ledger. The sender never touches a breaker, a
token bucket or the ledger itself.
"""

from __future__ import annotations

import functools
import math
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable, Collection, Iterable, Sequence
from contextlib import aclosing
from dataclasses import replace

import anyio

from retryd.admission.age import retention_expiring, too_old
from retryd.admission.allowlist import Allowlist
from retryd.admission.attempts import attempts_exhausted
from retryd.admission.backoff import Backoff
from retryd.admission.breaker import Breakers, BreakerState
from retryd.admission.claims import Admitted, Claims, Parkable
from retryd.admission.paused import PauseSet, paused
from retryd.admission.permit import Permit
from retryd.admission.ratelimit import RateLimits, TokenBucket
from retryd.admission.verdicts import (
    Defer,
    DeferReason,
    Done,
    Go,
    Hold,
    Park,
    Verdict,
)
from retryd.arns import Arn
from retryd.ledger.base import Claim, Ledger, LedgerError, Record, committed_attempt, parked_attempt
from retryd.metrics import Metrics
from retryd.models import Job, ParkReason, Target, Unresolvable, ledger_hold_reason
from retryd.settings import GuardSettings, Settings

# Share of the time left on a lease that may be spent waiting for rate-limit
# tokens; the rest is for the target's answer and the delete.
TOKEN_WAIT_SHARE = 0.5
# How long releasing the claims of jobs that got no token may hold off a cancellation.
RELEASE_SHIELD_S = 10.0
# A batch keeps (and a receiver takes) only the jobs its target's tokens cover this
# far ahead; the rest go back to the DLQ at once. Held longer, they would wait here
# while another replica, its tokens idle, finds the DLQ empty.
HOLD_AHEAD_S = 2.0
# A job handed back for want of tokens is hidden for about the time its token takes
# here, at least a second (SQS counts visibility in whole seconds) and at most this:
# with replicas sharing a rate its token may come sooner at another replica, which
# must be able to receive it rather than find it hidden for minutes. A job held back
# by a breaker whose canaries are another replica's (or out already) is hidden this
# long, for the same reason: the canaries' holder must find it.
HANDBACK_MAX_S = 5.0


# Asked for every message about its target: a handful of ARNs per batch, parsed once.
@functools.lru_cache(maxsize=4096)
def _queue_identity(arn: str) -> tuple[str, str, str] | None:
    """(region, account, queue name) of an SQS queue ARN; None for anything else.

    The partition is left out: it follows from the region, and the client a message
    is sent with reaches a queue by region, account and name whatever partition the
    ARN spells.
    """
    try:
        parsed = Arn.parse(arn)
    except ValueError:
        return None
    return (parsed.region, parsed.account, parsed.resource) if parsed.service == "sqs" else None


class Guards:
    """Applies the guards in order; the first that refuses decides.

    Each stateful guard is optional (None switches it off), so unit tests can
    exercise one at a time; the cycle builds them all.
    """

    def __init__(
        self,
        settings: GuardSettings,
        *,
        backoff: Backoff | None = None,
        breakers: Breakers | None = None,
        ledger: Ledger | None = None,
        rates: RateLimits | None = None,
        retention_horizon_s: float = 0.0,
        pause_recheck_s: float = 60.0,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self._allowlist = Allowlist(settings.allow_targets, settings.allow_any_target)
        self._max_attempts = settings.max_attempts
        self._max_age_s = settings.max_age_s
        self._backoff = backoff
        self._breakers = breakers
        self._ledger = ledger
        self._claims = Claims(ledger, clock_s)
        self._rates = rates
        # A message SQS would delete before the next cycle looks again is parked now.
        self._retention_horizon_s = retention_horizon_s
        self._clock_s = clock_s
        self._protected: frozenset[str] = frozenset()
        self._protected_queues: frozenset[tuple[str, str, str]] = frozenset()
        # (account, name) of the same queues: what a target ARN with no region is held to;
        # (region, name): what one with no account is held to.
        self._protected_names: frozenset[tuple[str, str]] = frozenset()
        self._protected_in_region: frozenset[tuple[str, str]] = frozenset()
        # Operator pauses, as last read from the control store (one read per cycle).
        self._pauses = PauseSet()
        self._pause_recheck_s = pause_recheck_s

    @property
    def ledger(self) -> Ledger | None:
        """The ledger the claims are taken in (S3 sources lease their objects there too)."""
        return self._ledger

    def protect_queues(self, arns: Iterable[str]) -> None:
        """Queues retryd drains or parks into: never a target, whatever the allowlist says.

        Resubmitting into a DLQ retryd drains would bring the message straight back
        every cycle, and into the parking queue would hide it from people.
        """
        arns = list(arns)
        self._protected = frozenset(arns)
        # A queue is its region, account and name: a same-named queue in another region
        # is another queue, sent to with that region's clients (or refused as in the wrong
        # region), never this one. Compared without the partition, which the region implies.
        self._protected_queues = frozenset(
            identity for arn in arns if (identity := _queue_identity(arn)) is not None
        )
        self._protected_names = frozenset(
            (account, name) for _, account, name in self._protected_queues
        )
        self._protected_in_region = frozenset(
            (region, name) for region, _, name in self._protected_queues
        )

    def _loops(self, target_arn: str) -> bool:
        """Whether an SQS target is a protected queue: same region, account and name.

        An ARN with no region names no other region: it is held to every protected
        queue of that account and name. One with no account names no other account
        (SQS looks the name up in the caller's own): it is held to every protected
        queue of that region and name, or of that name when the region is missing too.
        """
        identity = _queue_identity(target_arn)
        if identity is None:
            return False
        region, account, name = identity
        if not account:
            if not region:
                return any(name == protected for _, protected in self._protected_names)
            return (region, name) in self._protected_in_region
        if not region:
            return (account, name) in self._protected_names
        return identity in self._protected_queues

    def set_pauses(self, pauses: PauseSet) -> None:
        """The operator pauses in force from now on (a cycle reads them as it starts)."""
        self._pauses = pauses

    @property
    def pauses(self) -> PauseSet:
        return self._pauses

    def allows(self, arn: str) -> bool:
        """Whether the allowlist lets retryd call `arn` (protected queues aside)."""
        return self._allowlist.allows(arn)

    def check(self, job: Job, *, budget: bool = True) -> Unresolvable | None:
        """The stateless guards: an Unresolvable (park it, and why), or None to go on.

        `budget=False` leaves the attempt budget out (a redrive's extra attempt).
        """
        if job.target.arn in self._protected or self._loops(job.target.arn):
            return Unresolvable(
                job.letter,
                ParkReason.TARGET_NOT_ALLOWED,
                f"target {job.target.arn} is a queue retryd drains or parks into; "
                "resubmitting there would loop",
            )
        if not self._allowlist.allows(job.target.arn):
            return Unresolvable(
                job.letter,
                ParkReason.TARGET_NOT_ALLOWED,
                f"target {job.target.arn} matches no allow_targets pattern",
            )
        exhausted = attempts_exhausted(job, self._max_attempts) if budget else None
        if exhausted is not None:
            return Unresolvable(job.letter, ParkReason.ATTEMPTS_EXHAUSTED, exhausted)
        return None

    async def assess(
        self,
        resolved: Sequence[Job | Unresolvable],
        *,
        dry_run: bool = False,
        operator_now: bool = False,
    ) -> list[Verdict]:
        """One Verdict per resolved letter, in order.

        With `dry_run` nothing changes anywhere (no breaker canary slot is taken;
        the ledger is only read): `retryd plan` uses it. Otherwise every Go holds
        one breaker permit, which the caller settles: `released()` if the job is
        not sent after all.
        With `operator_now` (a redrive) the timing guards give way to the operator:
        no backoff, no age or retention limit, and one attempt beyond the budget
        (see retryd/drain/redrive.py); the allowlist, the loop guard, pauses, the
        ledger and the breakers judge as always.
        """
        now_s = self._clock_s()
        verdicts: list[Verdict | None] = [None] * len(resolved)
        pending: list[tuple[int, Job]] = []
        for index, item in enumerate(resolved):
            if isinstance(item, Unresolvable):
                verdicts[index] = Park(
                    item.letter, item.reason, item.detail, 0, letter_key=item.key
                )
                continue
            refused = self.check(item, budget=not operator_now)
            if refused is not None:
                verdicts[index] = Park(
                    item.letter, refused.reason, refused.detail, item.attempt, item
                )
                continue
            held = paused(
                item,
                self._pauses,
                now_s,
                recheck_s=self._pause_recheck_s,
                rescuable_s=self._rescuable_for_s(item, now_s),
            )
            if held is not None:
                verdicts[index] = held
                continue
            pending.append((index, item))
        records = await self._records([job for _, job in pending], verdicts, pending)
        ready = self._ready(pending, records, verdicts, now_s, operator_now=operator_now)
        for index, verdict in self._through_breakers(ready, now_s, dry_run=dry_run):
            verdicts[index] = verdict
        if dry_run:
            self._claims_foreseen(verdicts, records)
        return [verdict for verdict in verdicts if verdict is not None]

    def _ready(
        self,
        pending: Sequence[tuple[int, Job]],
        records: dict[str, Record],
        verdicts: list[Verdict | None],
        now_s: float,
        *,
        operator_now: bool,
    ) -> list[tuple[int, Job]]:
        """The pending jobs the ledger and the timing guards let on to the breakers.

        The others get their verdict in `verdicts`: done already, or (unless
        `operator_now`) parked or deferred for their attempts, age, backoff or retention.
        """
        ready: list[tuple[int, Job]] = []
        for index, job in pending:
            if verdicts[index] is not None:
                continue
            record = records.get(job.key)
            verdict: Verdict | None = _settled_already(job, record)
            if verdict is None and not operator_now:
                verdict = self._over_time(job, record, now_s)
            if verdict is None:
                ready.append((index, self._merged(job, record)))
            else:
                verdicts[index] = verdict
        return ready

    def _claims_foreseen(self, verdicts: list[Verdict | None], records: dict[str, Record]) -> None:
        """A dry run's last step: what the claims will answer right before the send.

        The cycle claims each key in `admit` (and `begin_parks`); where the ledger's record
        shows another live claim on it, the cycle will leave the message for later, and so
        the plan says.
        """
        for index, verdict in enumerate(verdicts):
            if isinstance(verdict, Go | Park) and verdict.job is not None:
                waiting = self._claims.would_wait(verdict, records.get(verdict.job.key))
                verdicts[index] = waiting or verdict

    async def _records(
        self,
        jobs: Sequence[Job],
        verdicts: list[Verdict | None],
        pending: Sequence[tuple[int, Job]],
    ) -> dict[str, Record]:
        if self._ledger is None or not jobs:
            return {}
        try:
            return await self._ledger.read(sorted({job.key for job in jobs}))
        except LedgerError as exc:
            # Without the count, retryd cannot tell whether a retry is allowed: wait.
            for index, job in pending:
                verdicts[index] = Hold(job, ledger_hold_reason(exc.error.error_class), str(exc))
            return {}

    @staticmethod
    def _merged(job: Job, record: Record | None) -> Job:
        """The job with the ledger's count: the larger of what the message and the ledger say."""
        if record is None or record.attempts <= job.attempt:
            return job
        return replace(job, attempt=record.attempts)

    def _over_time(self, job: Job, record: Record | None, now_s: float) -> Verdict | None:
        """Attempts, age, backoff and retention: a verdict when the job may not go now."""
        merged = self._merged(job, record)
        exhausted = attempts_exhausted(merged, self._max_attempts)
        if exhausted is not None:
            if merged.attempt > job.attempt:
                exhausted += f" (counted in the ledger; the message says {job.attempt})"
            return Park(job.letter, ParkReason.ATTEMPTS_EXHAUSTED, exhausted, merged.attempt, job)
        first_failed = [
            moment
            for moment in (job.first_failed_at_s, record.first_failed_at_s if record else None)
            if moment is not None
        ]
        old = too_old(min(first_failed) if first_failed else None, now_s, self._max_age_s)
        if old is not None:
            return Park(job.letter, ParkReason.TOO_OLD, old, merged.attempt, job)
        delay_s = self._backoff_delay_s(merged, record, now_s)
        expiring = retention_expiring(
            job.letter.sent_at_s,
            job.letter.queue.retention_s,
            now_s,
            self._retention_horizon_s + delay_s,
        )
        if expiring is not None:
            return Park(job.letter, ParkReason.RETENTION_EXPIRING, expiring, merged.attempt, job)
        if delay_s > 0:
            detail = f"attempt {merged.next_attempt} is due in {delay_s:.0f}s"
            return Defer(merged, DeferReason.BACKOFF, delay_s, detail, merged.attempt)
        return None

    def _backoff_delay_s(self, job: Job, record: Record | None, now_s: float) -> float:
        if self._backoff is None:
            return 0.0
        # Counted from retryd's own last attempt when it made one; otherwise from
        # when the message reached its DLQ (SQS's SentTimestamp).
        last_s = record.last_attempt_at_s if record is not None else None
        if last_s is None:
            last_s = job.letter.sent_at_s or now_s
        due_s = self._backoff.due_at_s(job.target.arn, job.key, job.attempt, last_s)
        return max(0.0, due_s - now_s)

    def _rescuable_for_s(self, job: Job, now_s: float) -> float:
        """How long the message may stay hidden and still be seen before SQS deletes it."""
        sent_s = job.letter.sent_at_s
        retention_s = job.letter.queue.retention_s
        if sent_s is None or retention_s is None:
            return float("inf")
        return max(0.0, sent_s + retention_s - now_s - self._retention_horizon_s)

    def _through_breakers(
        self, ready: Sequence[tuple[int, Job]], now_s: float, *, dry_run: bool
    ) -> list[tuple[int, Verdict]]:
        if self._breakers is None:
            return [(index, Go(job, job.next_attempt)) for index, job in ready]
        by_target: dict[Target, list[tuple[int, Job]]] = defaultdict(list)
        for index, job in ready:
            by_target[job.target].append((index, job))
        out: list[tuple[int, Verdict]] = []
        for target, group in by_target.items():
            breaker = self._breakers.for_target(target)
            allowed = breaker.peek(len(group)) if dry_run else breaker.permits(len(group))
            state = breaker.observed_state if dry_run else breaker.state
            for position, (index, job) in enumerate(group):
                if position < allowed:
                    permit = Permit(None if dry_run else breaker, breaker.episode)
                    out.append((index, Go(job, job.next_attempt, permit)))
                    continue
                # Until the cool-down ends; with no cool-down left (the canaries are
                # another replica's, or out already) handed back for seconds, not left
                # hidden for the rest of the lease: the canaries' holder must find it.
                wait_s = (breaker.retry_in_s() if state is BreakerState.OPEN else 0.0) or (
                    HANDBACK_MAX_S
                )
                # Hidden no longer than the message can still be rescued: a cool-down
                # must not outlast the DLQ's retention.
                wait_s = min(wait_s, self._rescuable_for_s(job, now_s))
                detail = (
                    f"the circuit breaker of {target.arn} is {state.value}; "
                    f"it is tried again in {wait_s:.0f}s"
                    if state is BreakerState.OPEN
                    else f"the circuit breaker of {target.arn} is {state.value}: "
                    "only canary messages go until they succeed"
                )
                out.append(
                    (index, Defer(job, DeferReason.BREAKER_OPEN, wait_s, detail, job.attempt))
                )
        return out

    async def admit(
        self, target: Target, gos: Sequence[Go], act_by: float
    ) -> AsyncGenerator[Admitted]:
        """The last steps before `target`'s Go verdicts are sent, as the target's tokens come.

        Jobs beyond what the tokens cover in the next HOLD_AHEAD_S (after the jobs of
        other batches already waiting for them) are handed back first; the others'
        keys are claimed in the ledger in one call (those turned away there come
        next); then each part yielded holds the jobs that have just got their tokens,
        to be sent at once, before the next part is asked for: so no token is spent
        later than it is taken, and nothing slow (a ledger call) comes in between.
        Tokens are waited for until TOKEN_WAIT_SHARE of the time left before `act_by`
        (anyio clock); the jobs still waiting then are handed back last, their claims
        released. Handed back means deferred `rate-limited`, nothing consumed; the
        permits of jobs turned away are released.
        """
        if self._rates is None:
            yield await self._claimed(gos)
            return
        # A lease that has run out already (the scope this runs in is cancelled) is the
        # lease's to decide, lease-expired: nothing is handed back as rate-limited first.
        await anyio.lowlevel.checkpoint()
        within_s = max(0.0, act_by - anyio.current_time()) * TOKEN_WAIT_SHARE
        bucket = self._rates.for_target(target.arn)
        kept = gos[: self._rates.room(target.arn, min(HOLD_AHEAD_S, within_s))]
        if len(kept) < len(gos):
            yield self._rate_limited(target, gos[len(kept) :], bucket)
        claimed = await self._claimed(kept)
        if claimed.deferred or claimed.held or claimed.done:
            yield Admitted(deferred=claimed.deferred, held=claimed.held, done=claimed.done)
        sent = 0
        try:
            async with aclosing(self._rates.paced(target.arn, len(claimed.go), within_s)) as grants:
                async for granted in grants:
                    sent += granted
                    yield Admitted(go=claimed.go[sent - granted : sent])
        finally:
            # Claimed and not sent (no token in time, or the batch was cancelled): the
            # claims go back now, or every replica would find the keys busy for claim_s.
            unsent = claimed.go[sent:]
            if unsent:
                leftover = self._rate_limited(target, unsent, bucket)
                with anyio.move_on_after(RELEASE_SHIELD_S, shield=True):
                    await self._claims.settle(target.arn, [go.permit for go in unsent])
        if unsent:
            yield leftover

    async def _claimed(self, gos: Sequence[Go]) -> Admitted:
        """`gos` after their ledger claims; the permits of those turned away are released."""
        admitted = Admitted()
        await self._claims.begin(gos, admitted)
        for turned_away in (admitted.deferred, admitted.held, admitted.done):
            for verdict in turned_away:
                _permit_of(gos, verdict.job).released()
        return admitted

    @staticmethod
    def _rate_limited(target: Target, gos: Sequence[Go], bucket: TokenBucket) -> Admitted:
        """`gos` handed back for want of tokens, each hidden for about its token's time."""
        admitted = Admitted()
        for position, go in enumerate(gos, start=1):
            hide_s = min(HANDBACK_MAX_S, max(1.0, math.ceil(bucket.due_in_s(position))))
            admitted.deferred.append(
                Defer(
                    go.job,
                    DeferReason.RATE_LIMITED,
                    hide_s,
                    f"rate limit of {target.arn} reached; handed back for {hide_s:.0f}s, "
                    "about the time its token takes",
                    go.job.attempt,
                )
            )
            go.permit.released()
        return admitted

    def receivable(self, target_arns: Collection[str], lease_s: float) -> int | None:
        """How many messages a receiver of a DLQ that feeds `target_arns` should ask for.

        What those targets' tokens cover in the next HOLD_AHEAD_S (at most a share of
        the lease), beyond the messages already waiting for them, added up over the
        targets so that one that is out of tokens does not starve the others. None
        when nothing bounds it (no rate limits, or no target known yet).
        """
        if self._rates is None or not target_arns:
            return None
        within_s = min(HOLD_AHEAD_S, lease_s * TOKEN_WAIT_SHARE)
        return sum(self._rates.room(arn, within_s) for arn in target_arns)

    def receivable_in_s(self, target_arns: Collection[str], lease_s: float) -> float:
        """Seconds until `receivable` is at least 1 for one of `target_arns` (0: it is now)."""
        if self._rates is None or not target_arns:
            return 0.0
        within_s = min(HOLD_AHEAD_S, lease_s * TOKEN_WAIT_SHARE)
        return min(self._rates.room_in_s(arn, within_s) for arn in target_arns)

    async def settle(self, target: Target, permits: Sequence[Permit]) -> None:
        """Write the ledger for permits settled since: commit successes, release the rest."""
        await self._claims.settle(target.arn, permits)

    async def renew(self, claims: Sequence[Claim]) -> list[bool]:
        """Renew the ledger claims of work still in flight (see Claims.renew)."""
        return await self._claims.renew(claims)

    async def begin_parks(self, parks: Sequence[Park]) -> Parkable:
        """Claim each Park's key right before its copy is written (see Claims.begin_parks)."""
        return await self._claims.begin_parks(parks)

    async def commit_parks(self, written: Sequence[tuple[Park, str]]) -> None:
        """Record the parked copies written, with their parking message ids."""
        await self._claims.commit_parks(written)

    async def release_parks(self, parks: Sequence[Park]) -> None:
        """Hand back the park claims of copies that could not be written."""
        await self._claims.release_parks(parks)


def _settled_already(job: Job, record: Record | None) -> Done | None:
    """Done when the ledger shows this message's copy safe: at its target or parked."""
    done_as = committed_attempt(record, job.letter.message_id)
    if done_as is not None:
        return Done(job, done_as)
    parked_as = parked_attempt(record, job.letter.message_id)
    if parked_as is not None:
        # Its copy is in the parking queue: judged again, it could go out or be parked twice.
        return Done(job, parked_as, parked=True)
    return None


def _permit_of(gos: Sequence[Go], job: Job) -> Permit:
    message_id = job.letter.message_id
    return next(go.permit for go in gos if go.job.letter.message_id == message_id)


def build_guards(
    settings: Settings,
    *,
    ledger: Ledger | None,
    metrics: Metrics | None,
    breakers: Breakers | None = None,
    rates: RateLimits | None = None,
) -> Guards:
    """Every guard as the settings configure it: what `once`, `run` and `plan` all use.

    `breakers` and `rates`, when given, are the ones the cycle shares with other replicas.
    """
    return Guards(
        settings.guards,
        backoff=Backoff(settings.backoff),
        # Breakers count in the event loop's monotonic time: a wall-clock jump must
        # not open or close one.
        breakers=breakers or Breakers(settings.breaker, anyio.current_time, metrics),
        ledger=ledger,
        # Buckets fill in the event loop's monotonic time too.
        rates=rates or RateLimits(settings.rate_limit, anyio.current_time),
        # A message SQS deletes before the next cycle has finished looking is parked now;
        # one left in its DLQ may first stay hidden for a whole lease.
        retention_horizon_s=(
            settings.schedule.interval_s
            + settings.drain.cycle_budget_s
            + settings.drain.visibility_timeout_s
        ),
        # An open-ended pause is looked at again every cycle, so a resume is seen in one.
        pause_recheck_s=settings.schedule.interval_s,
    )
