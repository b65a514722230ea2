"""A batch's heartbeat: when it extends and renews, up to the cap; a failed beat stops it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from retryd.heartbeat import Heartbeat, next_lease_s
from retryd.ledger.base import Claim, LedgerError
from retryd.metrics import Metrics
from retryd.models import DeadLetter, ErrorClass, QueueRef, SendError

QUEUE = QueueRef(
    "retry-a",
    "https://sqs.us-east-1.amazonaws.com/123456789012/retry-a",
    "arn:aws:sqs:us-east-1:123456789012:retry-a",
)
LETTERS = [DeadLetter(QUEUE, f"m{n}", f"rh-{n}", "{}", {}) for n in range(3)]
CLAIMS = [Claim("k1", "m0", 1, None)]
LEASE_S, CAP_S, CLAIM_RENEW_S, MARGIN_S = 30, 100, 60.0, 5.0


@dataclass(frozen=True)
class Failure:
    """A message SQS did not extend, as retryd.leases reports it."""

    message_id: str
    error: str = "ReceiptHandleIsInvalid"
    call_failed: bool = False


@dataclass
class Calls:
    """What the heartbeat asked of SQS and of the ledger, and what to answer."""

    extended: list[tuple[list[str], int]] = field(default_factory=list)
    renewed: list[list[str]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    ledger_down: bool = False

    async def extend(self, letters: Sequence[DeadLetter], seconds: int) -> list[Failure]:
        self.extended.append(([x.message_id for x in letters], seconds))
        return self.failures

    async def renew(self, claims: Sequence[Claim]) -> list[bool]:
        if self.ledger_down:
            raise LedgerError("sqlite", "renew", SendError(ErrorClass.TRANSIENT, "X", "locked"))
        self.renewed.append([claim.message_id for claim in claims])
        return [claim.message_id != "lost" for claim in claims]


def _heartbeat(
    calls: Calls, metrics: Metrics | None = None, held: Sequence[DeadLetter] = LETTERS
) -> Heartbeat:
    return Heartbeat(
        queue=QUEUE,
        received_at=0.0,
        lease_s=LEASE_S,
        cap_s=CAP_S,
        claim_renew_s=CLAIM_RENEW_S,
        margin_s=MARGIN_S,
        extend=calls.extend,
        renew=calls.renew,
        held=lambda: held,
        claims=lambda: CLAIMS,
        metrics=metrics,
    )


@given(
    now=st.floats(min_value=0, max_value=50_000),
    cap_at=st.floats(min_value=0, max_value=50_000),
    lease_s=st.integers(min_value=5, max_value=43_200),
    margin_s=st.floats(min_value=0, max_value=5),
)
def test_an_extension_never_passes_the_cap_nor_a_lease(
    now: float, cap_at: float, lease_s: int, margin_s: float
) -> None:
    """next_lease_s: at most one lease, never past the cap, None only without room for work."""
    seconds = next_lease_s(now=now, cap_at=cap_at, lease_s=lease_s, margin_s=margin_s)
    if seconds is None:
        assert min(lease_s, cap_at - now) - margin_s < 2
    else:
        assert seconds <= lease_s
        assert now + seconds <= cap_at
        assert seconds - margin_s >= 1


def test_nothing_happens_before_a_beat_is_due() -> None:
    """Early in the lease and the claims' period: no call to SQS or the ledger."""
    calls = Calls()
    heartbeat = _heartbeat(calls)

    async def body() -> None:
        await heartbeat.beat(now=1.0)

    anyio.run(body)
    assert (calls.extended, calls.renewed, heartbeat.extensions) == ([], [], 0)
    assert heartbeat.act_by == LEASE_S - MARGIN_S


def test_a_due_beat_extends_the_held_messages_and_moves_the_deadline() -> None:
    """Half the lease gone: a full lease from now for every held letter; writes follow it."""
    calls = Calls()
    registry = CollectorRegistry()
    heartbeat = _heartbeat(calls, Metrics(registry))

    async def body() -> float:
        work = heartbeat.scope()
        await heartbeat.beat(now=12.0)
        return work.deadline

    work_deadline = anyio.run(body)
    assert calls.extended == [(["m0", "m1", "m2"], LEASE_S)]
    assert heartbeat.act_by == 12.0 + LEASE_S - MARGIN_S
    # The work itself is only cut off at the cap while the heartbeat beats.
    assert work_deadline == CAP_S - MARGIN_S
    assert heartbeat.extensions == 1
    labels = {"queue": "retry-a", "account": "123456789012", "region": "us-east-1"}
    assert registry.get_sample_value("retryd_lease_extensions_total", labels) == 3


def test_claims_are_renewed_once_a_third_of_their_period_passed() -> None:
    """Renewed at 20 s of a 60 s period; a claim found lost is logged, the beat goes on."""
    calls = Calls()
    heartbeat = _heartbeat(calls)

    async def body() -> None:
        await heartbeat.beat(now=CLAIM_RENEW_S / 3)

    anyio.run(body)
    assert calls.renewed == [["m0"]]
    assert heartbeat.stopped is None


def test_the_last_extension_stops_at_the_cap_and_then_the_heartbeat_ends() -> None:
    """Near the cap only what is left is asked for; at it, no call, and work ends at act_by."""
    calls = Calls()
    heartbeat = _heartbeat(calls)

    async def body() -> None:
        await heartbeat.beat(now=80.0)
        await heartbeat.beat(now=CAP_S - MARGIN_S - 0.5)

    anyio.run(body)
    assert calls.extended == [(["m0", "m1", "m2"], 20)]
    assert heartbeat.stopped == "lease-cap-reached"
    assert heartbeat.act_by == CAP_S - MARGIN_S


def test_a_failed_extension_call_stops_the_heartbeat_and_is_counted() -> None:
    """A throttled ChangeMessageVisibilityBatch: stopped, the deadline as it was, a metric."""
    calls = Calls(failures=[Failure("m0", "ThrottlingException", call_failed=True)])
    registry = CollectorRegistry()
    heartbeat = _heartbeat(calls, Metrics(registry))

    async def body() -> float:
        work = heartbeat.scope()
        await heartbeat.beat(now=12.0)
        await heartbeat.run()
        return work.deadline

    work_deadline = anyio.run(body)
    assert heartbeat.stopped == "heartbeat-failed"
    # No longer kept: the work ends with the lease it has.
    assert work_deadline == LEASE_S - MARGIN_S
    assert (heartbeat.act_by, heartbeat.extensions, len(calls.extended)) == (25.0, 0, 1)
    labels = {"queue": "retry-a", "account": "123456789012", "region": "us-east-1"}
    value = registry.get_sample_value(
        "retryd_heartbeat_failures_total", {**labels, "step": "visibility"}
    )
    assert value == 1


def test_a_message_sqs_would_not_extend_is_not_asked_about_again() -> None:
    """One stale handle: the others are extended, and it is left out of the next beat."""
    calls = Calls(failures=[Failure("m1")])
    heartbeat = _heartbeat(calls)

    async def body() -> None:
        await heartbeat.beat(now=12.0)
        calls.failures = []
        await heartbeat.beat(now=12.0 + LEASE_S / 2 + 0.1)

    anyio.run(body)
    assert [names for names, _ in calls.extended] == [["m0", "m1", "m2"], ["m0", "m2"]]
    assert heartbeat.stopped is None


def test_a_ledger_failure_stops_the_heartbeat_before_any_extension() -> None:
    """Renewal fails: stopped (step claims), and the lease is not extended in that beat."""
    calls = Calls(ledger_down=True)
    registry = CollectorRegistry()
    heartbeat = _heartbeat(calls, Metrics(registry))

    async def body() -> None:
        await heartbeat.beat(now=21.0)

    anyio.run(body)
    assert (heartbeat.stopped, calls.extended) == ("heartbeat-failed", [])
    value = registry.get_sample_value(
        "retryd_heartbeat_failures_total",
        {"queue": "retry-a", "account": "123456789012", "region": "us-east-1", "step": "claims"},
    )
    assert value == 1


def test_messages_no_longer_held_are_never_extended() -> None:
    """Nothing held (all decided to stay): no call, and the deadline does not move."""
    calls = Calls()
    heartbeat = _heartbeat(calls, held=[])

    async def body() -> None:
        await heartbeat.beat(now=12.0)

    anyio.run(body)
    assert (calls.extended, heartbeat.act_by) == ([], LEASE_S - MARGIN_S)


def test_work_longer_than_the_lease_finishes_inside_the_heartbeats_scope() -> None:
    """run() beside work taking 3 leases: the work is never cancelled, and it was extended."""
    calls = Calls()
    finished: list[bool] = []

    async def body() -> None:
        heartbeat = Heartbeat(
            queue=QUEUE,
            received_at=anyio.current_time(),
            lease_s=2,
            cap_s=60,
            claim_renew_s=60.0,
            margin_s=0.2,
            extend=calls.extend,
            renew=calls.renew,
            held=lambda: LETTERS,
            claims=lambda: CLAIMS,
        )
        async with anyio.create_task_group() as beats:
            beats.start_soon(heartbeat.run)
            with heartbeat.scope():
                await anyio.sleep(6)
                finished.append(True)
            beats.cancel_scope.cancel()

    anyio.run(body)
    assert finished == [True]
    assert len(calls.extended) >= 3


@pytest.mark.parametrize("step", ["visibility", "claims"])
def test_heartbeat_failure_steps_are_a_bounded_label(step: str) -> None:
    """Only the two steps are labels; anything else is a bug, refused."""
    metrics = Metrics(CollectorRegistry())
    metrics.record_heartbeat_failure(QUEUE, step)
    with pytest.raises(ValueError, match="unknown heartbeat step"):
        metrics.record_heartbeat_failure(QUEUE, "other")


def test_a_slow_renewal_never_holds_up_an_extension() -> None:
    """A ledger taking minutes to renew: the lease is still extended and the work finishes."""
    calls = Calls()
    finished: list[bool] = []

    async def stuck(claims: Sequence[Claim]) -> list[bool]:
        await anyio.sleep(3_600)
        return [True] * len(claims)

    async def body() -> None:
        heartbeat = Heartbeat(
            queue=QUEUE,
            received_at=anyio.current_time(),
            lease_s=2,
            cap_s=60,
            claim_renew_s=1.5,
            margin_s=0.2,
            extend=calls.extend,
            renew=stuck,
            held=lambda: LETTERS,
            claims=lambda: CLAIMS,
        )
        async with anyio.create_task_group() as beats:
            beats.start_soon(heartbeat.run)
            with heartbeat.scope():
                await anyio.sleep(5)
                finished.append(True)
            beats.cancel_scope.cancel()

    anyio.run(body)
    assert finished == [True]
    assert len(calls.extended) >= 2


def test_a_shielded_write_gets_its_allowance_even_past_the_lease() -> None:
    """shielded(allowance): never sooner than the allowance from now; an extension never
    pulls it in."""
    calls = Calls()
    heartbeat = _heartbeat(calls)

    async def body() -> tuple[float, float, float]:
        scope = heartbeat.shielded(1_000)
        first = scope.deadline
        await heartbeat.beat(now=12.0)
        return anyio.current_time(), first, scope.deadline

    now, first, after = anyio.run(body)
    assert first >= now + 1_000 - 5
    assert after == first


def test_without_a_heartbeat_the_work_ends_at_its_first_lease() -> None:
    """beating=False (no leasing configured): the work scope's deadline is act_by."""
    heartbeat = Heartbeat(
        queue=QUEUE,
        received_at=0.0,
        lease_s=LEASE_S,
        cap_s=CAP_S,
        claim_renew_s=CLAIM_RENEW_S,
        margin_s=MARGIN_S,
        extend=Calls().extend,
        renew=Calls().renew,
        held=lambda: LETTERS,
        claims=lambda: CLAIMS,
        beating=False,
    )

    async def body() -> float:
        return heartbeat.scope().deadline

    assert anyio.run(body) == LEASE_S - MARGIN_S


def test_a_shielded_write_follows_each_extension() -> None:
    """A commit or delete in flight is shielded until the lease's end, moved by extensions."""
    calls = Calls()

    async def body() -> tuple[float, float]:
        start = anyio.current_time()
        heartbeat = Heartbeat(
            queue=QUEUE,
            received_at=start,
            lease_s=LEASE_S,
            cap_s=CAP_S,
            claim_renew_s=CLAIM_RENEW_S,
            margin_s=MARGIN_S,
            extend=calls.extend,
            renew=calls.renew,
            held=lambda: LETTERS,
            claims=lambda: CLAIMS,
        )
        write = heartbeat.shielded(0.0)
        await heartbeat.beat(now=start + 12.0)
        return write.deadline - start, heartbeat.act_by - start

    deadline_s, act_by_s = anyio.run(body)
    assert deadline_s == pytest.approx(act_by_s) == pytest.approx(12.0 + LEASE_S - MARGIN_S)
