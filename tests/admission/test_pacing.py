"""Admission hands a target's jobs out as its tokens come, and hands back at once what they
cannot cover: the sender sends each part the moment it is admitted, never a saved-up lump."""

from __future__ import annotations

from contextlib import aclosing

import anyio
import pytest

from retryd.admission.claims import Admitted
from retryd.admission.guards import HANDBACK_MAX_S, HOLD_AHEAD_S, Guards
from retryd.admission.ratelimit import RateLimits
from retryd.admission.verdicts import Defer, DeferReason, Go
from retryd.ledger import MemoryLedger
from retryd.ledger.base import Claim
from retryd.settings import RateLimitSettings
from tests.admission.test_ratelimit import fake_sleep
from tests.clock_helpers import FakeClock
from tests.drain.test_settling_rules import (
    CHARGE,
    WALL_NOW_S,
    gos_for,
    half_open_breakers,
    memory_ledger,
    unit_guards,
    unit_job,
)

# A lease this long leaves half of it (30 s) for tokens.
LEASE_S = 60.0


def paced_guards(
    clock: FakeClock, per_s: float, burst: int, ledger: MemoryLedger | None = None
) -> tuple[Guards, RateLimits]:
    rates = RateLimits(RateLimitSettings(per_s=per_s, burst=burst), clock, sleep=fake_sleep(clock))
    return unit_guards(None, ledger or memory_ledger(), rates=rates), rates


async def parts_of(guards: Guards, gos: list[Go], clock: FakeClock) -> list[tuple[float, Admitted]]:
    """Each part admission yields, with the (fake) time it came."""
    parts = []
    async with aclosing(guards.admit(CHARGE, gos, anyio.current_time() + LEASE_S)) as admitted:
        async for part in admitted:
            parts.append((clock(), part))
    return parts


def test_a_slow_targets_jobs_go_one_token_at_a_time() -> None:
    """2/s, burst 6, four jobs, a fresh (empty) bucket: four parts of one job, half a second
    apart, none handed back."""
    clock = FakeClock(0.0)

    async def main() -> list[tuple[float, Admitted]]:
        guards, _ = paced_guards(clock, 2.0, 6)
        return await parts_of(guards, await gos_for(guards, [unit_job(n) for n in "abcd"]), clock)

    parts = anyio.run(main)
    assert [len(part.go) for _, part in parts] == [1] * 4
    assert [part.deferred for _, part in parts] == [[]] * 4
    assert [round(at_s, 3) for at_s, _ in parts] == [0.5, 1.0, 1.5, 2.0]


def test_jobs_beyond_what_the_tokens_cover_soon_are_handed_back_at_once_for_seconds() -> None:
    """1/s from an empty bucket covers 2 jobs in the next HOLD_AHEAD_S: of 10, the other 8 come
    back in the first part, rate-limited, hidden 1 to HANDBACK_MAX_S seconds, their canary
    slots free; the 2 go."""
    clock = FakeClock(0.0)

    async def main() -> tuple[list[tuple[float, Admitted]], int]:
        breakers, _, breaker = half_open_breakers(canaries=10)
        rates = RateLimits(RateLimitSettings(per_s=1.0, burst=6), clock, sleep=fake_sleep(clock))
        guards = unit_guards(breakers, memory_ledger(), rates=rates)
        gos = await gos_for(guards, [unit_job(str(n)) for n in range(10)])
        parts = await parts_of(guards, gos, clock)
        return parts, breaker.peek(10)

    parts, free = anyio.run(main)
    assert HOLD_AHEAD_S == 2.0
    first_at_s, first = parts[0]
    assert first_at_s == 0.0
    assert [d.reason for d in first.deferred] == [DeferReason.RATE_LIMITED] * 8
    assert all(1.0 <= d.delay_s <= HANDBACK_MAX_S for d in first.deferred)
    assert sum(len(part.go) for _, part in parts) == 2
    # The 2 sent hold their slots until their answers; the 8 handed back gave theirs back.
    assert free == 8


def blocked_guards(gate: anyio.Event) -> Guards:
    """1/s, burst 6, on a clock that stands still until `gate` is set: a batch waiting for
    tokens waits until then."""
    clock = FakeClock(0.0)

    async def sleep(seconds: float) -> None:
        await gate.wait()
        clock.advance(seconds)

    rates = RateLimits(RateLimitSettings(per_s=1.0, burst=6), clock, sleep=sleep)
    return unit_guards(None, memory_ledger(), rates=rates)


def test_a_second_batch_for_a_target_whose_tokens_are_spoken_for_is_handed_back_whole() -> None:
    """While one batch waits for the next HOLD_AHEAD_S's tokens, another batch for the same
    target keeps none of its jobs: they go back to the DLQ for a receiver with tokens."""

    async def main() -> list[Admitted]:
        gate = anyio.Event()
        guards = blocked_guards(gate)
        first = await gos_for(guards, [unit_job(n) for n in "ab"])
        second = await gos_for(guards, [unit_job(n) for n in "cd"])
        async with anyio.create_task_group() as group:
            group.start_soon(parts_of, guards, first, FakeClock())
            await anyio.wait_all_tasks_blocked()
            seconds = [part for _, part in await parts_of(guards, second, FakeClock())]
            gate.set()
        return seconds

    seconds = anyio.run(main)
    assert [len(part.go) for part in seconds] == [0]
    assert [d.reason for part in seconds for d in part.deferred] == [DeferReason.RATE_LIMITED] * 2


def test_a_job_the_ledger_turns_away_waits_for_no_token_and_takes_none() -> None:
    """A key another replica holds: its job is deferred claimed-elsewhere before any token is
    waited for, and the bucket's next token is there for the next job."""
    clock = FakeClock(0.0)

    async def main() -> tuple[list[Admitted], RateLimits]:
        ledger = memory_ledger()
        rival = MemoryLedger(
            claim_s=300, ttl_s=86_400, owner="rival", clock=lambda: WALL_NOW_S, store=ledger.store
        )
        busy = unit_job("a")
        await rival.begin([Claim(busy.key, "m-other", 1, None)])
        guards, rates = paced_guards(clock, 1.0, 1, ledger)
        parts = await parts_of(guards, await gos_for(guards, [busy]), clock)
        return [part for _, part in parts], rates

    parts, rates = anyio.run(main)
    assert [d.reason for part in parts for d in part.deferred] == [DeferReason.CLAIMED_ELSEWHERE]
    assert clock() == 0.0
    clock.advance(1.0)
    assert rates.for_target(CHARGE.arn).peek(1) == 1


def test_a_message_for_a_target_whose_canaries_another_replica_holds_is_handed_back() -> None:
    """Cooled down, with the canaries claimed by another replica: deferred breaker-open and
    hidden HANDBACK_MAX_S, not left hidden for the rest of its lease where the holder cannot
    find it to send as a canary."""

    async def main() -> list[object]:
        breakers, clock, breaker = half_open_breakers(canaries=1)
        breaker.adopt_open(clock() - 100, held_elsewhere=True)
        return list(await unit_guards(breakers).assess([unit_job("a")]))

    [verdict] = anyio.run(main)
    assert isinstance(verdict, Defer)
    assert (verdict.reason, verdict.delay_s) == (DeferReason.BREAKER_OPEN, HANDBACK_MAX_S)


def test_a_receiver_asks_for_what_its_targets_tokens_cover_soon_added_up() -> None:
    """Two targets feed the DLQ: one out of tokens does not starve the other, whose room is what
    the receiver may take; no target known yet: no bound."""
    clock = FakeClock(0.0)
    other = "arn:aws:lambda:us-east-1:123456789012:function:ship"
    guards, rates = paced_guards(clock, 1.0, 6)
    rates.for_target(CHARGE.arn)
    rates.for_target(other)
    clock.advance(4.0)
    rates.for_target(CHARGE.arn).take(6)
    # CHARGE: empty, covers 2 in HOLD_AHEAD_S; other: 4 saved up and 2 more.
    assert guards.receivable([CHARGE.arn], LEASE_S) == 2
    assert guards.receivable([CHARGE.arn, other], LEASE_S) == 8
    assert guards.receivable([], LEASE_S) is None
    assert guards.receivable_in_s([CHARGE.arn], LEASE_S) == 0.0


def test_a_receiver_whose_target_has_no_room_waits_for_its_next_token() -> None:
    """Jobs already waiting for the next tokens leave no room: receivable is 0, and
    receivable_in_s says when the next one is not spoken for."""

    async def main() -> tuple[int | None, float]:
        gate = anyio.Event()
        guards = blocked_guards(gate)
        gos = await gos_for(guards, [unit_job(n) for n in "ab"])
        async with anyio.create_task_group() as group:
            group.start_soon(parts_of, guards, gos, FakeClock())
            await anyio.wait_all_tasks_blocked()
            answer = (
                guards.receivable([CHARGE.arn], LEASE_S),
                guards.receivable_in_s([CHARGE.arn], LEASE_S),
            )
            gate.set()
        return answer

    room, room_in_s = anyio.run(main)
    assert room == 0
    assert room_in_s == pytest.approx(1.0, abs=1e-3)
