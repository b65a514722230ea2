"""Admission's ledger side of parking and heartbeats: park claims, recorded copies, renewals."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import aclosing
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.admission.claims import Admitted, Claims, park_claim
from retryd.admission.guards import Guards
from retryd.admission.verdicts import DeferReason, Done, Go, Park
from retryd.ledger import (
    LedgerError,
    MemoryLedger,
    MemoryStore,
    ParkBegun,
    ParkCopy,
    SqliteLedger,
)
from retryd.ledger.base import MAX_RECORDED_ATTEMPT, Claim
from retryd.models import (
    DeadLetter,
    ErrorClass,
    FailReason,
    Job,
    ParkReason,
    QueueRef,
    SendError,
    Target,
    Unresolvable,
)
from retryd.resolve.chain import ResolverChain
from retryd.resolve.keys import hashed_key, parking_key
from retryd.settings import GuardSettings

NOW_S = 1_750_000_000.0
QUEUE = QueueRef(
    "retry-events",
    "https://sqs.us-east-1.amazonaws.com/123456789012/retry-events",
    "arn:aws:sqs:us-east-1:123456789012:retry-events",
)
CHARGE_ARN = "arn:aws:lambda:us-east-1:123456789012:function:charge"


def _letter(message_id: str, body: str = "{}") -> DeadLetter:
    return DeadLetter(QUEUE, message_id, f"rh-{message_id}", body, {"SentTimestamp": "1000"})


def _job(message_id: str, key: str = "order-1") -> Job:
    return Job(_letter(message_id), Target.from_arn(CHARGE_ARN), "{}", key, attempt=2)


def _ledger(owner: str = "me", store: MemoryStore | None = None) -> MemoryLedger:
    return MemoryLedger(claim_s=60, ttl_s=86_400, owner=owner, clock=lambda: NOW_S, store=store)


class _Broken(MemoryLedger):
    """A ledger whose every park write fails, as an unreachable table would."""

    async def begin_park(self, claims: Sequence[Claim]) -> list[ParkBegun]:
        del claims
        raise LedgerError("memory", "begin-park", SendError(ErrorClass.TRANSIENT, "Down", "down"))


def test_a_park_is_claimed_under_its_jobs_key_or_the_one_the_resolver_gave() -> None:
    """With a job: its key; without: the resolver chain's (Unresolvable.key), else DLQ#id."""
    with_job = Park(_letter("m1"), ParkReason.ATTEMPTS_EXHAUSTED, "", 3, _job("m1"))
    assert park_claim(with_job) == Claim("order-1", "m1", 3, 1.0)
    given_key = Park(_letter("m2"), ParkReason.UNRESOLVABLE, "", 0, letter_key="from-chain")
    assert park_claim(given_key).key == "from-chain"
    alone = Park(_letter("m3"), ParkReason.UNRESOLVABLE, "", 0)
    assert park_claim(alone).key == f"{QUEUE.arn}#m3"


def test_the_resolver_chain_gives_an_unresolvable_letter_its_dlq_and_body_key() -> None:
    """Unresolvable from the chain: parking_key(DLQ, body), one per body, not a target's key."""
    chain = ResolverChain([])
    [answer] = anyio.run(chain.resolve_all, [_letter("m2", '{"b": 1, "a": 2}')])
    assert isinstance(answer, Unresolvable)
    assert answer.key == parking_key(QUEUE.arn, '{"a":2,"b":1}')
    assert answer.key == hashed_key(QUEUE.arn, '{"a": 2, "b": 1}')
    assert answer.key != hashed_key(CHARGE_ARN, '{"a":2,"b":1}')


def test_begin_parks_sorts_each_park_by_what_the_ledger_says() -> None:
    """Free: to park; parked or resubmitted already: only delete; held elsewhere: busy."""

    async def body() -> None:
        store = MemoryStore()
        rival, ours = _ledger("rival", store), _ledger("me", store)
        parked_before = Park(_letter("m1"), ParkReason.TARGET_REJECTED, "", 2, _job("m1", "k1"))
        await rival.begin_park([park_claim(parked_before)])
        await rival.commit_park([ParkCopy(park_claim(parked_before), "p-1")])
        sent_before = Claim("k2", "m2", 1, None)
        await rival.begin([sent_before])
        await rival.commit([sent_before], NOW_S)
        held = Claim("k3", "other", 1, None)
        await rival.begin([held])
        parks = [
            parked_before,
            Park(_letter("m2"), ParkReason.TOO_OLD, "", 1, _job("m2", "k2")),
            Park(_letter("m3"), ParkReason.TOO_OLD, "", 1, _job("m3", "k3")),
            Park(_letter("m4"), ParkReason.UNRESOLVABLE, "", 0),
        ]
        parkable = await Claims(ours, lambda: NOW_S).begin_parks(parks)
        assert parkable.park == [parks[3]]
        assert parkable.done == [(parks[0], 2, True), (parks[1], 1, False)]
        assert (parkable.busy, parkable.held) == ([parks[2]], [])

    anyio.run(body)


def test_a_ledger_failure_holds_every_park_and_no_ledger_parks_them_all() -> None:
    """A failed begin_park leaves them all in the DLQ (ledger-unavailable); no ledger: all go."""
    parks = [Park(_letter("m1"), ParkReason.UNRESOLVABLE, "", 0)]

    async def body() -> None:
        parkable = await Claims(_Broken(claim_s=60, ttl_s=60), lambda: NOW_S).begin_parks(parks)
        assert [(park, reason) for park, reason, _ in parkable.held] == [
            (parks[0], FailReason.LEDGER_UNAVAILABLE)
        ]
        assert parkable.park == []
        assert (await Claims(None, lambda: NOW_S).begin_parks(parks)).park == parks

    anyio.run(body)


def test_committed_parks_are_only_deleted_the_next_time_round() -> None:
    """commit_parks records the copies; a second pass finds them parked; release frees a key."""
    park = Park(_letter("m1"), ParkReason.ATTEMPTS_EXHAUSTED, "", 5, _job("m1"))
    failed = Park(_letter("m2"), ParkReason.ATTEMPTS_EXHAUSTED, "", 5, _job("m2", "k2"))

    async def body() -> None:
        ledger = _ledger()
        claims = Claims(ledger, lambda: NOW_S)
        first = await claims.begin_parks([park, failed])
        assert first.park == [park, failed]
        await claims.commit_parks([(park, "p-1")])
        await claims.release_parks([failed])
        again = await claims.begin_parks([park, failed])
        assert (again.done, again.park) == ([(park, 5, True)], [failed])
        record = (await ledger.read(["order-1"]))["order-1"]
        assert record.parked == (("m1", 5, "p-1"),)

    anyio.run(body)


def test_a_parked_message_is_judged_done_and_marked_parked() -> None:
    """assess: a job whose message the ledger shows parked is Done(parked=True), never Go."""

    async def body() -> None:
        ledger = _ledger()
        job = _job("m1")
        claim = Claim(job.key, "m1", 2, None)
        await ledger.begin_park([claim])
        await ledger.commit_park([ParkCopy(claim, "p-1")])
        guards = Guards(GuardSettings(allow_any_target=True), ledger=ledger, clock_s=lambda: NOW_S)
        [verdict] = await guards.assess([job], dry_run=True)
        assert verdict == Done(job, 2, parked=True)
        # And at the last step, if it was parked after assess read the ledger.
        other = Guards(GuardSettings(allow_any_target=True), ledger=ledger, clock_s=lambda: NOW_S)
        admit = other.admit(job.target, [Go(job, 3)], anyio.current_time() + 10)
        async with aclosing(admit) as parts:
            admitted = [part async for part in parts]
        assert [d for part in admitted for d in part.done] == [Done(job, 2, parked=True)]
        assert [go for part in admitted for go in part.go] == []

    anyio.run(body)


def test_renew_says_which_claims_are_still_ours() -> None:
    """Claims.renew: True for ours, False for one another owner holds; no ledger: all held."""

    async def body() -> None:
        store = MemoryStore()
        ours, rival = _ledger("me", store), _ledger("rival", store)
        mine, theirs = Claim("k1", "m1", 1, None), Claim("k2", "m2", 1, None)
        await ours.begin([mine])
        await rival.begin([theirs])
        assert await Claims(ours, lambda: NOW_S).renew([mine, theirs]) == [True, False]
        assert await Claims(None, lambda: NOW_S).renew([mine]) == [True]
        assert await Claims(ours, lambda: NOW_S).renew([]) == []

    anyio.run(body)


@pytest.mark.parametrize("written", [[], [("m1", "p")]])
def test_commit_and_release_without_a_ledger_do_nothing(written: list[tuple[str, str]]) -> None:
    """No ledger (a plan, a test): committing or releasing parks is a no-op, not an error."""
    parks = [(Park(_letter(m), ParkReason.UNRESOLVABLE, "", 0), p) for m, p in written]

    async def body() -> None:
        claims = Claims(None, lambda: NOW_S)
        await claims.commit_parks(parks)
        await claims.release_parks([park for park, _ in parks])

    anyio.run(body)


@given(st.integers())
def test_a_forged_attempt_is_recorded_within_every_backends_integers(attempt: int) -> None:
    """A park's attempt from a message (any integer) is claimed capped, never past 2**31 - 1."""
    park = Park(_letter("m1"), ParkReason.ATTEMPTS_EXHAUSTED, "", attempt, _job("m1"))
    recorded = park_claim(park).attempt
    assert 0 <= recorded <= MAX_RECORDED_ATTEMPT
    assert recorded == attempt or not 0 <= attempt <= MAX_RECORDED_ATTEMPT


def test_a_park_with_a_huge_attempt_is_claimed_and_recorded_on_sqlite(tmp_path: Path) -> None:
    """The bad-input suite's forged attempt (past int64) parks, and is found parked after."""
    park = Park(_letter("m1"), ParkReason.ATTEMPTS_EXHAUSTED, "", 2**70, _job("m1"))

    async def body() -> list[tuple[Park, int, bool]]:
        ledger = await SqliteLedger.open(
            tmp_path / "l.sqlite3", claim_s=60, ttl_s=86_400, owner="me", clock=lambda: NOW_S
        )
        try:
            claims = Claims(ledger, lambda: NOW_S)
            assert (await claims.begin_parks([park])).park == [park]
            await claims.commit_parks([(park, "p-1")])
            return (await claims.begin_parks([park])).done
        finally:
            await ledger.aclose()

    assert anyio.run(body) == [(park, MAX_RECORDED_ATTEMPT, True)]


def test_a_dry_run_foresees_every_busy_answer_of_begin_and_begin_parks() -> None:
    """would_wait (nothing written) says claimed-elsewhere exactly where the real claims wait."""

    async def body() -> None:
        store = MemoryStore()
        rival, ours = _ledger("rival", store), _ledger("me", store)
        await rival.begin([Claim("k1", "other", 1, None)])
        await rival.begin([Claim("k2", "m2", 1, None)])
        await rival.begin_park([Claim("k3", "other", 0, None)])
        free, held_for_other, held_for_it, parking = (
            _job("m0", "k0"),
            _job("m1", "k1"),
            _job("m2", "k2"),
            _job("m3", "k3"),
        )
        claims = Claims(ours, lambda: NOW_S)
        records = await ours.read(["k0", "k1", "k2", "k3"])
        gos = [Go(job, job.next_attempt) for job in (free, held_for_other, held_for_it)]
        park = Park(parking.letter, ParkReason.TOO_OLD, "", 2, parking)
        verdicts: list[Go | Park] = [*gos, park]
        foreseen = [claims.would_wait(v, records.get(v.job.key)) for v in verdicts if v.job]
        assert [None if f is None else f.job.letter.message_id for f in foreseen] == [
            None,
            "m1",
            "m2",
            "m3",
        ]
        assert {f.reason for f in foreseen if f is not None} == {DeferReason.CLAIMED_ELSEWHERE}
        # Nothing was written: the real claims then answer as foreseen.
        assert await ours.read(["k0"]) == {}
        admitted = Admitted()
        await claims.begin(gos, admitted)
        assert [d.job.letter.message_id for d in admitted.deferred] == ["m1", "m2"]
        assert (await claims.begin_parks([park])).busy == [park]
        # Without a ledger, or with no record, nothing is foreseen.
        assert Claims(None, lambda: NOW_S).would_wait(gos[1], records["k1"]) is None
        assert claims.would_wait(gos[0], None) is None

    anyio.run(body)
