"""Token bucket per target: never more than burst + rate * elapsed, refill, and honest waits."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from fractions import Fraction

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from retryd.admission.ratelimit import (
    SHARED_DEFAULT,
    TYPE_DEFAULTS,
    Rate,
    RateLimits,
    TokenBucket,
    effective_rates,
    type_rate,
)
from retryd.models import Target, TargetType
from retryd.settings import RateLimitSettings, RateRule
from tests.clock_helpers import FakeClock

ACCOUNT = "123456789012"
FN = f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:charge"
OTHER_FN = f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:ship"
QUEUE = f"arn:aws:sqs:eu-west-1:{ACCOUNT}:orders"
# One target of each type.
TARGETS = {
    TargetType.LAMBDA: FN,
    TargetType.STEPFUNCTIONS: f"arn:aws:states:eu-west-1:{ACCOUNT}:stateMachine:fulfil",
    TargetType.SQS: QUEUE,
    TargetType.SNS: f"arn:aws:sns:eu-west-1:{ACCOUNT}:notify",
    TargetType.EVENTBRIDGE: f"arn:aws:events:eu-west-1:{ACCOUNT}:event-bus/billing",
}


def test_starts_full_and_grants_at_most_burst() -> None:
    """A new bucket holds `burst` tokens: a big batch gets that many, the next gets none."""
    bucket = TokenBucket(per_s=5, burst=10, clock=FakeClock())
    assert bucket.peek(25) == 10
    assert bucket.take(25) == 10
    assert bucket.take(1) == 0


def test_refills_at_the_rate_up_to_burst() -> None:
    """Tokens come back at per_s a second and stop at burst."""
    clock = FakeClock()
    bucket = TokenBucket(per_s=2, burst=4, clock=clock)
    bucket.take(4)
    clock.advance(1.0)
    assert bucket.take(10) == 2
    clock.advance(100.0)
    assert bucket.take(10) == 4


def test_only_whole_tokens_are_granted() -> None:
    """Half a token is not a message: take grants none until a whole one has built up."""
    clock = FakeClock()
    bucket = TokenBucket(per_s=1, burst=1, clock=clock)
    bucket.take(1)
    clock.advance(0.5)
    assert bucket.take(1) == 0
    clock.advance(0.5)
    assert bucket.take(1) == 1


def test_tenths_add_up_to_a_whole_token() -> None:
    """Ten refills of 0.1 tokens make one token exactly (float sums would fall just short)."""
    clock = FakeClock(0.0)
    bucket = TokenBucket(per_s=0.1, burst=1, clock=clock)
    bucket.take(1)
    for _ in range(9):
        clock.advance(1.0)
        assert bucket.peek(1) == 0
    clock.advance(1.0)
    assert bucket.wait_s(1) == 0
    assert bucket.take(1) == 1


def test_peek_takes_nothing() -> None:
    """A dry run reports what take would grant and leaves the tokens in place."""
    bucket = TokenBucket(per_s=1, burst=3, clock=FakeClock())
    assert bucket.peek(2) == 2
    assert bucket.peek(5) == 3
    assert bucket.take(5) == 3


def test_wait_s_says_when_tokens_arrive() -> None:
    """wait_s is 0 when tokens are there, else the time for the missing ones (and no less)."""
    clock = FakeClock()
    bucket = TokenBucket(per_s=4, burst=8, clock=clock)
    assert bucket.wait_s(8) == 0
    bucket.take(8)
    assert bucket.wait_s(2) == pytest.approx(0.5, abs=1e-5)
    clock.advance(0.49)
    assert bucket.take(2) == 1
    # 0.96 of a token is left: 0.04 more at 4 a second.
    assert bucket.wait_s(1) == pytest.approx(0.01, abs=1e-5)
    assert bucket.wait_s(1) > 0.01


def test_wait_s_caps_the_request_at_burst() -> None:
    """Asking for more than burst waits for a full bucket, not forever."""
    clock = FakeClock()
    bucket = TokenBucket(per_s=2, burst=4, clock=clock)
    bucket.take(4)
    assert bucket.wait_s(1_000) == pytest.approx(2.0, abs=1e-5)


@given(
    per_s=st.floats(min_value=0.01, max_value=1_000),
    burst=st.integers(1, 1_000),
    spent=st.integers(0, 1_000),
    wanted=st.integers(1, 2_000),
    drift_s=st.floats(min_value=0, max_value=100),
)
def test_after_waiting_wait_s_the_tokens_are_there(
    per_s: float, burst: int, spent: int, wanted: int, drift_s: float
) -> None:
    """Sleeping wait_s(n) then taking grants min(n, burst): a caller never spins on a promise."""
    clock = FakeClock(drift_s)
    bucket = TokenBucket(per_s=per_s, burst=burst, clock=clock)
    bucket.take(spent)
    clock.advance(bucket.wait_s(wanted))
    assert bucket.take(wanted) == min(wanted, burst)


@given(
    per_s=st.floats(min_value=0.01, max_value=100),
    burst=st.integers(1, 50),
    steps=st.lists(st.tuples(st.floats(min_value=0, max_value=5), st.integers(0, 60)), max_size=60),
)
def test_never_grants_more_than_burst_plus_rate_times_elapsed(
    per_s: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    """Over any run of waits and takes, and any stretch of it, the tokens granted are at most
    burst + per_s * elapsed, counted exactly."""
    clock = FakeClock(0.0)
    bucket = TokenBucket(per_s=per_s, burst=burst, clock=clock)
    history: list[tuple[float, int]] = []  # (time, granted)
    for wait, wanted in steps:
        clock.advance(wait)
        granted = bucket.take(wanted)
        assert 0 <= granted <= min(wanted, burst)
        history.append((clock(), granted))
    for start in range(len(history)):
        total = 0
        for end in range(start, len(history)):
            total += history[end][1]
            elapsed = Fraction(history[end][0]) - Fraction(history[start][0])
            assert total <= burst + Fraction(per_s) * elapsed


@given(per_s=st.floats(min_value=0.5, max_value=50), burst=st.integers(60, 100))
def test_a_steady_caller_gets_the_rate(per_s: float, burst: int) -> None:
    """Taking every second for a minute yields burst + per_s * 60 tokens, give or take one
    (the bucket holds more than a second and a token, so nothing overflows between takes)."""
    clock = FakeClock(0.0)
    bucket = TokenBucket(per_s=per_s, burst=burst, clock=clock)
    total = bucket.take(1_000)
    for _ in range(60):
        clock.advance(1.0)
        total += bucket.take(1_000)
    assert burst + math.floor(per_s * 60) - 1 <= total <= burst + per_s * 60


def test_a_clock_stepping_back_adds_no_tokens() -> None:
    """A clock that goes backwards (it should not) cannot mint tokens."""
    clock = FakeClock(100.0)
    bucket = TokenBucket(per_s=1, burst=2, clock=clock)
    bucket.take(2)
    clock.now_s = 50.0
    assert bucket.take(1) == 0
    clock.now_s = 100.5
    assert bucket.take(1) == 0


@pytest.mark.parametrize(
    ("per_s", "burst", "field"),
    [(0.0, 1, "per_s"), (-1.0, 1, "per_s"), (math.inf, 1, "per_s"), (1.0, 0, "burst")],
)
def test_bad_sizes_are_errors(per_s: float, burst: int, field: str) -> None:
    """A bucket that could never or always grant is refused, naming the bad value."""
    with pytest.raises(ValueError, match=field):
        TokenBucket(per_s=per_s, burst=burst, clock=FakeClock())


def test_negative_wanted_is_an_error() -> None:
    """Asking for a negative number of tokens is a caller's bug."""
    bucket = TokenBucket(per_s=1, burst=1, clock=FakeClock())
    for method in (bucket.take, bucket.peek, bucket.wait_s):
        with pytest.raises(ValueError, match="wanted"):
            method(-1)


# -- per target --------------------------------------------------------------------------


def test_one_bucket_per_target_sized_by_the_first_matching_rule() -> None:
    """Each target has its own bucket; the first matching rule sizes it, else the defaults."""
    settings = RateLimitSettings(
        per_s=5,
        burst=10,
        targets=[
            RateRule(pattern=f"arn:aws:lambda:*:{ACCOUNT}:function:charge", per_s=1, burst=2),
            RateRule(pattern=f"arn:aws:lambda:*:{ACCOUNT}:function:*", per_s=50, burst=100),
        ],
    )
    limits = RateLimits(settings, FakeClock())
    charge = limits.for_target(FN)
    assert limits.for_target(FN) is charge
    assert (charge.per_s, charge.burst) == (1, 2)
    ship = limits.for_target(OTHER_FN)
    assert (ship.per_s, ship.burst) == (50, 100)
    queue = limits.for_target(QUEUE)
    assert (queue.per_s, queue.burst) == (5, 10)


def test_targets_do_not_share_tokens() -> None:
    """Draining one target's bucket leaves another target's untouched."""
    clock = FakeClock()
    limits = RateLimits(RateLimitSettings(per_s=1, burst=3), clock)
    limits.for_target(FN)
    limits.for_target(OTHER_FN)
    clock.advance(3.0)
    assert limits.for_target(FN).take(10) == 3
    assert limits.for_target(OTHER_FN).take(10) == 3


def test_default_is_safe_for_a_modest_lambda() -> None:
    """Out of the box a Lambda target gets at most 10 at once and 5 a second after that."""
    clock = FakeClock()
    bucket = RateLimits(RateLimitSettings(), clock).for_target(FN)
    clock.advance(60.0)
    assert bucket.take(1_000) == 10
    clock.advance(1.0)
    assert bucket.take(1_000) == 5


def test_out_of_the_box_each_target_type_gets_its_own_rate() -> None:
    """No per_s/burst set: Lambda, Step Functions 5/s (10); SQS 300/s; SNS, EventBridge 100/s."""
    limits = RateLimits(RateLimitSettings(), FakeClock())
    sizes = {kind: limits.for_target(arn) for kind, arn in TARGETS.items()}
    assert {kind: (b.per_s, b.burst) for kind, b in sizes.items()} == {
        TargetType.LAMBDA: (5, 10),
        TargetType.STEPFUNCTIONS: (5, 10),
        TargetType.SQS: (300, 300),
        TargetType.SNS: (100, 100),
        TargetType.EVENTBRIDGE: (100, 100),
    }


def test_a_10000_message_dlq_goes_back_to_a_queue_in_under_a_minute() -> None:
    """The issue's case: 10,000 messages to one SQS queue at the default rate take < 60 s."""
    clock = FakeClock()
    started_s = clock()
    bucket = RateLimits(RateLimitSettings(), clock).for_target(QUEUE)
    sent = bucket.take(10_000)
    while sent < 10_000:
        clock.advance(bucket.wait_s(10_000 - sent))
        sent += bucket.take(10_000 - sent)
    assert clock() - started_s < 60


@pytest.mark.parametrize(
    ("per_s", "burst", "expected"),
    [(20.0, None, (20.0, 10)), (None, 40, (5.0, 40)), (20.0, 40, (20.0, 40))],
)
def test_per_s_or_burst_set_is_one_rate_for_every_type(
    per_s: float | None, burst: int | None, expected: tuple[float, int]
) -> None:
    """Either set: every type gets it, the unset one at the old shared default (5/s, 10)."""
    limits = RateLimits(RateLimitSettings(per_s=per_s, burst=burst), FakeClock())
    for arn in TARGETS.values():
        bucket = limits.for_target(arn)
        assert (bucket.per_s, bucket.burst) == expected


def test_a_rule_beats_the_type_default() -> None:
    """A rate_limit.targets pattern sizes the targets it matches, whatever their type's default."""
    rule = RateRule(pattern=f"arn:aws:sqs:*:{ACCOUNT}:orders", per_s=2, burst=3)
    limits = RateLimits(RateLimitSettings(targets=[rule]), FakeClock())
    orders = limits.for_target(QUEUE)
    other = limits.for_target(f"arn:aws:sqs:eu-west-1:{ACCOUNT}:invoices")
    assert ((orders.per_s, orders.burst), (other.per_s, other.burst)) == ((2, 3), (300, 300))


rates = st.none() | st.floats(min_value=0.01, max_value=10_000)
bursts = st.none() | st.integers(min_value=1, max_value=100_000)


@given(
    kind=st.sampled_from(list(TargetType)),
    per_s=rates,
    burst=bursts,
    rule=st.none() | st.tuples(st.floats(0.01, 10_000), st.integers(1, 100_000), st.booleans()),
)
def test_a_bucket_is_sized_by_rule_then_shared_rate_then_type(
    kind: TargetType,
    per_s: float | None,
    burst: int | None,
    rule: tuple[float, int, bool] | None,
) -> None:
    """The order is fixed: a matching rule, else per_s/burst when either is set, else the type's."""
    arn = TARGETS[kind]
    rules = []
    if rule is not None:
        rule_per_s, rule_burst, matches = rule
        pattern = arn if matches else "arn:aws:sqs:*:*:nothing-matches"
        rules.append(RateRule(pattern=pattern, per_s=rule_per_s, burst=rule_burst))
    settings = RateLimitSettings(per_s=per_s, burst=burst, targets=rules)
    bucket = RateLimits(settings, FakeClock()).for_target(arn)
    if rule is not None and rule[2]:
        expected = Rate(rule[0], rule[1])
    elif per_s is not None or burst is not None:
        expected = Rate(
            per_s if per_s is not None else SHARED_DEFAULT.per_s,
            burst if burst is not None else SHARED_DEFAULT.burst,
        )
    else:
        expected = TYPE_DEFAULTS[kind]
    assert Rate(bucket.per_s, bucket.burst) == expected
    assert type_rate(settings, Target.from_arn(arn).type) == (
        expected if rule is None or not rule[2] else type_rate(settings, kind)
    )


def test_lambda_and_step_functions_keep_the_slowest_defaults() -> None:
    """No API-scale default is below the conservative ones, and those stay at 5/s and 10."""
    slow = {TYPE_DEFAULTS[TargetType.LAMBDA], TYPE_DEFAULTS[TargetType.STEPFUNCTIONS]}
    assert slow == {Rate(5.0, 10)}
    assert all(rate.per_s >= 5 and rate.burst >= 10 for rate in TYPE_DEFAULTS.values())
    assert set(TYPE_DEFAULTS) == set(TargetType)


def test_effective_rates_name_each_type_its_rate_and_where_it_came_from() -> None:
    """What `config check` shows: per type per_s, burst and source; the rules listed as they are."""
    rule = RateRule(pattern=f"arn:aws:sqs:*:{ACCOUNT}:orders", per_s=2, burst=3)
    table = effective_rates(RateLimitSettings(targets=[rule]))
    assert table["by_target_type"]["sqs"] == {
        "per_s": 300.0,
        "burst": 300,
        "from": "default for the target type",
    }
    assert table["by_target_type"]["lambda"]["per_s"] == 5.0
    assert table["rules_first"] == [{"pattern": rule.pattern, "per_s": 2.0, "burst": 3}]
    shared = effective_rates(RateLimitSettings(per_s=7))["by_target_type"]
    assert {entry["per_s"] for entry in shared.values()} == {7.0}
    assert all("every type" in entry["from"] for entry in shared.values())


def test_a_resized_bucket_keeps_its_tokens_up_to_the_new_burst() -> None:
    """Shrinking cuts saved tokens to the new burst; the new rate refills from then on."""
    clock = FakeClock()
    bucket = TokenBucket(per_s=6.0, burst=9, clock=clock)
    bucket.resize(per_s=2.0, burst=3)
    assert bucket.take(9) == 3
    clock.advance(1.0)
    assert bucket.take(9) == 2


def test_reshared_limits_start_empty_and_resize_existing_buckets() -> None:
    """After reshare, existing buckets take the share and new ones start with no burst."""
    clock = FakeClock()
    limits = RateLimits(RateLimitSettings(per_s=6.0, burst=9), clock)
    existing = limits.for_target(FN)
    clock.advance(10.0)
    limits.reshare(lambda rate: Rate(rate.per_s / 3, rate.burst // 3))
    assert (existing.per_s, existing.burst) == (2.0, 3)
    assert existing.take(9) == 3
    joined = limits.for_target(OTHER_FN)
    assert (joined.per_s, joined.burst) == (2.0, 3)
    assert joined.take(9) == 0
    clock.advance(1.0)
    assert joined.take(9) == 2


# -- pacing: tokens handed out as they come ----------------------------------------------


def fake_sleep(clock: FakeClock) -> Callable[[float], Awaitable[None]]:
    """A sleep that moves `clock` on (and lets the other tasks run)."""

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await anyio.lowlevel.checkpoint()

    return sleep


def paced_limits(clock: FakeClock, per_s: float, burst: int) -> RateLimits:
    """Buckets of per_s and burst on `clock`, whose waits move it on."""
    return RateLimits(RateLimitSettings(per_s=per_s, burst=burst), clock, sleep=fake_sleep(clock))


def most_in_a_window(history: list[tuple[float, int]], window_s: float) -> int:
    """The most grants in any closed window of `window_s` seconds (it starts at a grant)."""
    most = 0
    for start_s, _ in history:
        end = Fraction(start_s) + Fraction(window_s)
        most = max(most, sum(n for at_s, n in history if start_s <= at_s and Fraction(at_s) <= end))
    return most


@hypothesis_settings(max_examples=60)
@given(
    per_s=st.floats(min_value=0.5, max_value=50),
    burst=st.integers(1, 30),
    callers=st.lists(
        st.lists(
            st.tuples(st.integers(1, 10), st.floats(0, 0.5), st.floats(0, 3)),
            min_size=1,
            max_size=6,
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_paced_tokens_spent_at_once_keep_any_1_s_and_5_s_window_within_burst_plus_rate(
    per_s: float, burst: int, callers: list[list[tuple[int, float, float]]]
) -> None:
    """Several batches on one bucket (each: its size, how long each send takes, a pause after),
    each sending every grant the moment it comes: any 1 s window holds at most burst + per_s,
    any 5 s window at most 5 * per_s + burst, from the very start."""
    clock = FakeClock(0.0)
    limits = paced_limits(clock, per_s, burst)
    history: list[tuple[float, int]] = []

    async def caller(batches: list[tuple[int, float, float]]) -> None:
        for size, send_s, pause_s in batches:
            async for granted in limits.paced(FN, size, 60.0):
                history.append((clock(), granted))
                clock.advance(send_s)
                await anyio.lowlevel.checkpoint()
            clock.advance(pause_s)
            await anyio.lowlevel.checkpoint()

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for batches in callers:
                group.start_soon(caller, batches)

    anyio.run(main)
    assert most_in_a_window(history, 1.0) <= burst + per_s
    assert most_in_a_window(history, 5.0) <= 5 * per_s + burst


@hypothesis_settings(max_examples=30)
@given(per_s=st.floats(min_value=1, max_value=20), burst=st.integers(1, 20))
def test_a_backlog_goes_at_the_rate_and_not_in_lumps(per_s: float, burst: int) -> None:
    """A long backlog from a fresh bucket: each grant is at most the bucket's grain (never tokens
    waited for and saved up beside the bucket), and the whole goes at per_s."""
    clock = FakeClock(0.0)
    limits = paced_limits(clock, per_s, burst)
    grain = limits.for_target(FN).grain
    grants: list[int] = []

    async def main() -> None:
        async for granted in limits.paced(FN, 200, 10_000.0):
            grants.append(granted)

    anyio.run(main)
    assert sum(grants) == 200
    assert max(grants) <= grain
    assert clock() == pytest.approx(200 / per_s, rel=0.05)


def test_a_slow_target_gets_one_message_at_a_time_and_a_fast_one_whole_batches() -> None:
    """5/s: one token every 0.2 s, each sent alone; 300/s: a batch of 10 in one grant."""
    clock = FakeClock(0.0)
    slow = paced_limits(clock, 5.0, 6)
    fast = RateLimits(RateLimitSettings(), clock, sleep=fake_sleep(clock))

    async def grants(limits: RateLimits, arn: str) -> list[int]:
        return [granted async for granted in limits.paced(arn, 10, 60.0)]

    assert anyio.run(grants, slow, FN) == [1] * 10
    assert anyio.run(grants, fast, QUEUE) == [10]


def test_paced_stops_at_its_time_and_grants_no_more() -> None:
    """Tokens for 2 s at 1/s: two granted (one each second), the rest left to the caller."""
    clock = FakeClock(0.0)
    limits = paced_limits(clock, 1.0, 5)

    async def main() -> list[int]:
        return [granted async for granted in limits.paced(FN, 5, 2.5)]

    assert anyio.run(main) == [1, 1]
    assert clock() <= 2.5


def test_a_new_bucket_is_empty_so_a_restart_adds_no_burst() -> None:
    """RateLimits' buckets start empty: a process that (re)starts has no tokens saved up."""
    clock = FakeClock()
    bucket = RateLimits(RateLimitSettings(per_s=5, burst=6), clock).for_target(FN)
    assert bucket.take(10) == 0
    clock.advance(0.2)
    assert bucket.take(10) == 1


def test_a_share_reread_while_waiting_for_tokens_paces_the_rest_of_the_batch() -> None:
    """6/s halved to 3/s by the owner of the shares at its first wait (as a replica re-reads
    the membership when a newcomer joins): the rest of a 12-message batch goes at 3/s, so
    it takes about 12/3 s, not 12/6 s."""
    clock = FakeClock(0.0)
    limits = paced_limits(clock, 6.0, 6)
    waits: list[float] = []

    async def reread() -> None:
        waits.append(clock())
        limits.reshare(lambda rate: Rate(per_s=rate.per_s / 2, burst=rate.burst // 2))

    limits.while_waiting(reread)

    async def main() -> int:
        return sum([granted async for granted in limits.paced(FN, 12, 60.0)])

    assert anyio.run(main) == 12
    assert waits, "the owner of the shares was called while the batch waited"
    assert clock() == pytest.approx(12 / 3.0, rel=0.1)


def test_a_slow_reread_while_waiting_does_not_grant_tokens_past_the_callers_deadline() -> None:
    """`paced` stops `within_s` from its start (the batch's share of its lease). The owner of
    the shares re-reads them after a wait (a DynamoDB heartbeat: up to read_timeout_s x
    max_attempts when DynamoDB is slow or throttling); tokens taken after that re-read, past
    the deadline, are sent past it (review of f094db3)."""
    clock = FakeClock(0.0)
    limits = paced_limits(clock, 6.0, 6)

    async def slow_reread() -> None:
        clock.advance(30.0)

    limits.while_waiting(slow_reread)
    grants: list[float] = []

    async def main() -> None:
        async for _ in limits.paced(FN, 12, 2.0):
            grants.append(clock())

    anyio.run(main)
    assert all(at_s <= 2.0 for at_s in grants), f"granted at {grants} s, past the 2 s deadline"
