"""Backoff: full jitter within its bounds, deterministic per (key, attempt), per-target rules."""

from __future__ import annotations

import statistics
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.admission.backoff import Backoff, ceiling_s, jitter_fraction
from retryd.arns import first_matching, glob_matches
from retryd.settings import MAX_VISIBILITY_TIMEOUT_S, BackoffRule, BackoffSettings

ACCOUNT = "123456789012"
OTHER_ACCOUNT = "999999999999"
FN = f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:charge"
QUEUE = f"arn:aws:sqs:eu-west-1:{ACCOUNT}:orders"

base_s = st.floats(min_value=1e-3, max_value=1e4)
max_s = st.floats(min_value=1e-3, max_value=MAX_VISIBILITY_TIMEOUT_S)
attempts = st.integers(min_value=0, max_value=5_000)
keys = st.text(min_size=1, max_size=40)


def exact_ceiling(base: float, cap: float, attempt: int) -> Fraction:
    """min(cap, base * 2**attempt) in exact arithmetic, the reference for the bound."""
    product: Fraction = Fraction(base) * (1 << attempt)
    return min(Fraction(cap), product)


@given(base=base_s, cap=max_s, attempt=attempts, key=keys)
def test_delay_is_within_full_jitter_bounds(
    base: float, cap: float, attempt: int, key: str
) -> None:
    """0 <= delay <= min(max_s, base_s * 2**attempt) for any limits, attempt and key."""
    backoff = Backoff(BackoffSettings(base_s=base, max_s=cap))
    delay = backoff.delay_s(FN, key, attempt)
    assert delay >= 0
    assert Fraction(delay) <= exact_ceiling(base, cap, attempt)


@given(base=base_s, cap=max_s, attempt=attempts)
def test_ceiling_matches_exact_arithmetic(base: float, cap: float, attempt: int) -> None:
    """The float ceiling is the exact min(max_s, base_s * 2**attempt), rounded once."""
    assert ceiling_s(base, cap, attempt) == float(exact_ceiling(base, cap, attempt))


@pytest.mark.parametrize("attempt", [1_023, 1_024, 1_075, 10**6, 10**18, 2**200])
def test_huge_attempts_never_overflow(attempt: int) -> None:
    """Attempts past a float's exponent range give a delay capped at max_s, not OverflowError."""
    backoff = Backoff(BackoffSettings(base_s=30, max_s=3_600))
    delay = backoff.delay_s(FN, "k", attempt)
    assert 0 <= delay < 3_600


def test_negative_attempt_is_an_error() -> None:
    """A negative attempt count is a caller's bug and says so."""
    with pytest.raises(ValueError, match="attempt"):
        Backoff(BackoffSettings()).delay_s(FN, "k", -1)


@given(key=keys, attempt=attempts)
def test_delay_is_deterministic_per_key_and_attempt(key: str, attempt: int) -> None:
    """Two Backoffs (two cycles, two replicas) compute the same delay for the same message."""
    settings = BackoffSettings(base_s=30, max_s=3_600)
    assert Backoff(settings).delay_s(FN, key, attempt) == Backoff(settings).delay_s(
        FN, key, attempt
    )


@given(key=keys, attempt=attempts)
def test_jitter_fraction_is_in_unit_interval(key: str, attempt: int) -> None:
    """The hashed draw is always in [0, 1), so a delay never reaches its ceiling."""
    assert 0.0 <= jitter_fraction(key, attempt) < 1.0


def test_delays_spread_across_the_window() -> None:
    """Many keys at one attempt spread over the whole window, not bunched (no thundering herd)."""
    backoff = Backoff(BackoffSettings(base_s=10, max_s=3_600))
    ceiling = 10 * 2**5
    delays = [backoff.delay_s(FN, f"key-{n}", 5) / ceiling for n in range(2_000)]
    assert len(set(delays)) == len(delays)
    assert min(delays) < 0.01
    assert max(delays) > 0.99
    assert 0.45 < statistics.fmean(delays) < 0.55
    # Each tenth of the window gets roughly its share (uniform: 200 each).
    deciles = [sum(1 for d in delays if n / 10 <= d < (n + 1) / 10) for n in range(10)]
    assert all(140 < count < 260 for count in deciles), deciles


def test_one_key_is_redrawn_at_each_attempt() -> None:
    """A key's draw differs between attempts, so one unlucky draw is not repeated forever."""
    fractions = {jitter_fraction("order-42", attempt) for attempt in range(50)}
    assert len(fractions) == 50


def test_due_at_is_last_failure_plus_delay() -> None:
    """The due time counts the delay from the last failure."""
    backoff = Backoff(BackoffSettings(base_s=30, max_s=3_600))
    delay = backoff.delay_s(FN, "k", 3)
    assert backoff.due_at_s(FN, "k", 3, 1_700_000_000.0) == 1_700_000_000.0 + delay


def test_first_matching_rule_sets_the_limits() -> None:
    """Rules are tried in order; the first whose glob matches the target decides."""
    settings = BackoffSettings(
        base_s=30,
        max_s=3_600,
        targets=[
            BackoffRule(pattern=f"arn:aws:lambda:*:{ACCOUNT}:function:charge*", base_s=1, max_s=60),
            BackoffRule(pattern=f"arn:aws:lambda:*:{ACCOUNT}:function:*", base_s=5, max_s=600),
        ],
    )
    backoff = Backoff(settings)
    assert backoff.limits_for(FN) == (1, 60)
    assert backoff.limits_for(f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:ship") == (5, 600)
    assert backoff.limits_for(QUEUE) == (30, 3_600)


def test_limits_kept_per_target_stay_each_targets_own() -> None:
    """Asked again, in any order, each target keeps its own rule's limits (kept per target)."""
    settings = BackoffSettings(
        base_s=30,
        max_s=3_600,
        targets=[
            BackoffRule(pattern=f"arn:aws:lambda:*:{ACCOUNT}:function:charge*", base_s=1, max_s=60)
        ],
    )
    backoff = Backoff(settings)
    for _ in range(2):
        assert backoff.limits_for(FN) == (1, 60)
        assert backoff.limits_for(QUEUE) == (30, 3_600)


def test_rule_for_one_account_does_not_reach_another() -> None:
    """A rule's `*` stays in its field: another account's function gets the defaults."""
    settings = BackoffSettings(
        targets=[BackoffRule(pattern=f"arn:aws:lambda:*:{ACCOUNT}:*", base_s=1, max_s=60)]
    )
    other = f"arn:aws:lambda:eu-west-1:{OTHER_ACCOUNT}:function:x:{ACCOUNT}:y"
    assert Backoff(settings).limits_for(other) == (settings.base_s, settings.max_s)


@given(key=keys, attempt=st.integers(min_value=0, max_value=40))
def test_rule_limits_bound_the_delay(key: str, attempt: int) -> None:
    """A matching rule's max_s caps the delay, whatever the defaults say."""
    settings = BackoffSettings(
        base_s=100,
        max_s=40_000,
        targets=[BackoffRule(pattern="arn:aws:lambda:*:*:function:*", base_s=1, max_s=60)],
    )
    assert Backoff(settings).delay_s(FN, key, attempt) < 60


# -- the shared glob matcher ------------------------------------------------------------


def test_glob_matches_field_by_field() -> None:
    """glob_matches keeps `*` inside its field and the resource's colons in the resource."""
    glob = f"arn:aws:lambda:*:{ACCOUNT}:function:*"
    assert glob_matches(FN, glob)
    assert glob_matches(f"{FN}:prod", glob)
    assert not glob_matches(f"arn:aws:lambda:eu-west-1:{OTHER_ACCOUNT}:function:x", glob)
    assert not glob_matches("not-an-arn", glob)


def test_malformed_glob_is_an_error() -> None:
    """A glob without an ARN's shape is refused rather than matching nothing quietly."""
    with pytest.raises(ValueError, match="not an ARN glob"):
        glob_matches(FN, "lambda:*")


def test_first_matching_returns_none_when_nothing_matches() -> None:
    """first_matching gives None (use the defaults) when no rule applies."""
    rules = [f"arn:aws:sqs:*:{ACCOUNT}:*"]
    assert first_matching(FN, rules, lambda rule: rule) is None
    assert first_matching(QUEUE, rules, lambda rule: rule) == rules[0]


@given(
    region=st.from_regex(r"[a-z]{2}-[a-z]{4,9}-[1-9]", fullmatch=True),
    account=st.from_regex(r"[0-9]{12}", fullmatch=True),
    name=st.from_regex(r"[A-Za-z0-9_-]{1,30}", fullmatch=True),
)
def test_every_plain_arn_matches_itself_and_the_region_wildcard(
    region: str, account: str, name: str
) -> None:
    """An ARN is its own glob, and a region wildcard matches it only in its own account."""
    arn = f"arn:aws:lambda:{region}:{account}:function:{name}"
    assert glob_matches(arn, arn)
    assert glob_matches(arn, f"arn:aws:lambda:*:{account}:function:*")
    other = "000000000000" if account != "000000000000" else "111111111111"
    assert not glob_matches(arn, f"arn:aws:lambda:*:{other}:function:*")


@pytest.mark.parametrize("doublings", range(1, 16))
def test_cap_just_above_a_power_of_two_is_not_rounded_into(doublings: int) -> None:
    """When max_s is a hair above base_s * 2**attempt, the smaller product is the ceiling."""
    cap = 2.0**doublings * (1 + 2**-52)
    assert ceiling_s(1.0, cap, doublings) == 2.0**doublings
