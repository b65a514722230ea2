"""A Go's permit carries its own lifecycle: the first of succeeded / failed / released counts."""

from __future__ import annotations

from contextlib import aclosing

import anyio
from hypothesis import given
from hypothesis import strategies as st

from retryd.admission.breaker import BreakerState
from retryd.admission.permit import Fate, Permit
from retryd.admission.verdicts import DeferReason, Go
from retryd.ledger import MemoryLedger
from retryd.ledger.base import Claim
from tests.drain.test_settling_rules import (
    CHARGE,
    WALL_NOW_S,
    half_open_breakers,
    memory_ledger,
    unit_guards,
    unit_job,
)

ENDINGS = {"succeeded": Fate.SUCCEEDED, "failed": Fate.FAILED, "released": Fate.RELEASED}


@given(st.lists(st.sampled_from(sorted(ENDINGS)), min_size=1, max_size=6))
def test_the_first_word_settles_a_permit_and_the_breaker_hears_it_once(words: list[str]) -> None:
    """However many times a permit is settled, its fate is the first word, and its half-open
    canary slot is used or given back exactly once."""
    breakers, _, breaker = half_open_breakers(canaries=1)
    permit = Permit(breaker, breaker.episode)
    assert breaker.permits(1) == 1
    for word in words:
        getattr(permit, word)()
    assert permit.fate is ENDINGS[words[0]]
    expected = {
        "succeeded": (BreakerState.CLOSED, 1),
        "failed": (BreakerState.OPEN, 0),
        "released": (BreakerState.HALF_OPEN, 1),
    }[words[0]]
    assert (breaker.state, breaker.peek(1)) == expected
    assert breakers.for_target(CHARGE) is breaker


def test_a_dry_run_go_holds_a_permit_that_touches_no_breaker() -> None:
    """`retryd plan` assesses with dry_run: a failure told to its Go's permit leaves the breaker
    half-open with its canary slot free."""

    async def main() -> tuple[BreakerState, int]:
        breakers, _, breaker = half_open_breakers(canaries=1)
        [go] = await unit_guards(breakers).assess([unit_job("a")], dry_run=True)
        assert isinstance(go, Go)
        go.permit.failed()
        return breaker.state, breaker.peek(1)

    assert anyio.run(main) == (BreakerState.HALF_OPEN, 1)


def test_admit_releases_the_permits_of_jobs_it_turns_away() -> None:
    """A key claimed by another owner: `admit` defers the job claimed-elsewhere and its
    half-open canary slot is free again, with nothing for the sender to give back."""

    async def main() -> tuple[list[DeferReason], list[Go], int]:
        breakers, _, breaker = half_open_breakers(canaries=1)
        ledger = memory_ledger()
        job = unit_job("a")
        rival = MemoryLedger(
            claim_s=300, ttl_s=86_400, owner="rival", clock=lambda: WALL_NOW_S, store=ledger.store
        )
        await rival.begin([Claim(job.key, "m-other", 1, None)])
        guards = unit_guards(breakers, ledger)
        gos = [v for v in await guards.assess([job]) if isinstance(v, Go)]
        async with aclosing(guards.admit(CHARGE, gos, anyio.current_time() + 60)) as parts:
            admitted = [part async for part in parts]
        deferred = [d.reason for part in admitted for d in part.deferred]
        return deferred, [go for part in admitted for go in part.go], breaker.peek(1)

    reasons, to_send, free = anyio.run(main)
    assert reasons == [DeferReason.CLAIMED_ELSEWHERE]
    assert to_send == []
    assert free == 1
