"""The pure parts of replicas agreeing: rate shares, membership expiry, the breaker step."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from retryd.admission.breaker import BreakerState
from retryd.admission.ratelimit import Rate
from retryd.cluster.agree import (
    SharedBreaker,
    Step,
    agreed,
    live_members,
    next_step,
    share,
    stale_members,
    start_share,
    yet_to_reread,
)

ME = "replica-a"
OTHER = "replica-b"
COOLDOWN_S = 30.0

rates = st.builds(
    Rate,
    per_s=st.floats(min_value=0.001, max_value=1e6, allow_nan=False),
    burst=st.integers(min_value=1, max_value=100_000),
)


@given(rate=rates, live=st.integers(min_value=1, max_value=1_000))
def test_the_shares_add_up_to_the_rate(rate: Rate, live: int) -> None:
    """live replicas' per_s add up to the configured per_s (to float rounding)."""
    mine = share(rate, live)
    assert abs(mine.per_s * live - rate.per_s) <= 1e-9 * rate.per_s


@given(rate=rates, live=st.integers(min_value=1, max_value=1_000))
def test_the_bursts_never_add_up_to_more_than_the_burst_while_it_covers_every_replica(
    rate: Rate, live: int
) -> None:
    """Each keeps at least one token; while burst >= live the bursts add up to at most burst."""
    mine = share(rate, live)
    assert mine.burst >= 1
    if rate.burst >= live:
        assert mine.burst * live <= rate.burst
    else:
        assert mine.burst == 1


def test_one_replica_keeps_the_whole_rate() -> None:
    """A single live replica gets exactly the configured rate."""
    assert share(Rate(5.0, 10), 1) == Rate(5.0, 10)


def test_three_replicas_split_five_a_second() -> None:
    """per_s 5, burst 10 over three: 5/3 a second and 3 tokens each."""
    mine = share(Rate(5.0, 10), 3)
    assert mine.burst == 3
    assert abs(mine.per_s - 5 / 3) < 1e-12


@given(
    rate=rates,
    fraction=st.floats(min_value=0.01, max_value=1.0),
    seen=st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=100),
)
def test_replicas_starting_together_add_up_to_the_rate_while_the_start_share_covers_them(
    rate: Rate, fraction: float, seen: list[int]
) -> None:
    """However many members each one's first reading showed, at most 1/fraction replicas at
    their start share send at most per_s together, and never more than an agreed share."""
    starting = seen[: int(1 / fraction)]
    shares = [start_share(rate, members, fraction) for members in starting]
    assert sum(mine.per_s for mine in shares) <= rate.per_s * (1 + 1e-9)
    for members, mine in zip(starting, shares, strict=True):
        assert mine.per_s <= share(rate, members).per_s * (1 + 1e-9)
        assert 1 <= mine.burst <= max(1, rate.burst // members)


def test_a_start_share_is_the_smaller_of_the_fraction_and_one_over_the_members() -> None:
    """per_s 6, burst 6: a quarter alone (1.5/s, 1 token); a third of 8 members' worth less."""
    assert start_share(Rate(6.0, 6), 1, 0.25) == Rate(1.5, 1)
    assert start_share(Rate(8.0, 16), 8, 0.25) == Rate(1.0, 2)
    assert start_share(Rate(6.0, 6), 1, 1.0) == Rate(6.0, 6)


def test_a_replica_agrees_on_a_heartbeat_agree_s_after_its_first() -> None:
    """A first heartbeat never shows the membership (unless agree_s is 0); one agree_s on does."""
    assert not agreed(None, 100.0, 10.0)
    assert agreed(None, 100.0, 0.0)
    assert not agreed(100.0, 109.9, 10.0)
    assert agreed(100.0, 110.0, 10.0)


heartbeats = st.dictionaries(
    st.text(min_size=1, max_size=8), st.floats(min_value=0, max_value=1e6), max_size=8
)


@given(beats=heartbeats, now_s=st.floats(min_value=0, max_value=1e6))
def test_a_member_is_live_exactly_until_its_heartbeat_expires(
    beats: dict[str, float], now_s: float
) -> None:
    """Live means expiring after now; nothing else counts."""
    live = live_members(beats, now_s)
    assert live == {member for member, expires_s in beats.items() if expires_s > now_s}


@given(
    beats=heartbeats,
    now_s=st.floats(min_value=0, max_value=1e6),
    grace_s=st.floats(min_value=0, max_value=1e3),
)
def test_only_members_long_expired_are_stale(
    beats: dict[str, float], now_s: float, grace_s: float
) -> None:
    """A stale member is never live, and has been expired for longer than the grace."""
    stale = stale_members(beats, now_s, grace_s)
    live = live_members(beats, now_s)
    assert not set(stale) & live
    assert all(beats[member] + grace_s < now_s for member in stale)


def _open(
    opened_at_s: float = 1_000.0, holder: str | None = None, held_until_s: float = 0.0
) -> SharedBreaker:
    return SharedBreaker(BreakerState.OPEN, "e1", opened_at_s, holder, held_until_s)


def test_a_closed_table_closes_an_open_replica_and_leaves_a_closed_one() -> None:
    """Shared CLOSED: an open or half-open replica closes; a closed one keeps."""
    closed = SharedBreaker(BreakerState.CLOSED, "e2", 0.0)
    for local in (BreakerState.OPEN, BreakerState.HALF_OPEN):
        assert next_step(closed, local, me=ME, now_s=0, cooldown_s=COOLDOWN_S) is Step.CLOSE
    assert (
        next_step(closed, BreakerState.CLOSED, me=ME, now_s=0, cooldown_s=COOLDOWN_S) is Step.KEEP
    )


@given(local=st.sampled_from(BreakerState), since_s=st.floats(min_value=0, max_value=29.9))
def test_an_open_breaker_cooling_down_is_held_everywhere(
    local: BreakerState, since_s: float
) -> None:
    """Before the cool-down ends, every replica holds it open, whatever it thought."""
    step = next_step(_open(), local, me=ME, now_s=1_000.0 + since_s, cooldown_s=COOLDOWN_S)
    assert step is Step.HOLD


@given(local=st.sampled_from(BreakerState), holder=st.sampled_from([None, ME, OTHER]))
def test_after_the_cool_down_exactly_one_replica_may_send_canaries(
    local: BreakerState, holder: str | None
) -> None:
    """Cooled down: nobody (or a lapsed holder) -> claim; a holder keeps; the others hold."""
    now_s = 1_000.0 + COOLDOWN_S + 1
    live_hold = _open(holder=holder, held_until_s=now_s + 10)
    step = next_step(live_hold, local, me=ME, now_s=now_s, cooldown_s=COOLDOWN_S)
    expected = {None: Step.CLAIM, ME: Step.KEEP, OTHER: Step.HOLD}[holder]
    assert step is expected
    lapsed = _open(holder=holder, held_until_s=now_s - 1)
    assert next_step(lapsed, local, me=ME, now_s=now_s, cooldown_s=COOLDOWN_S) is Step.CLAIM


@given(
    holder=st.sampled_from([None, ME, OTHER]),
    held_until_s=st.floats(min_value=0, max_value=2_000),
    now_s=st.floats(min_value=1_030, max_value=2_000),
)
def test_of_two_replicas_at_most_one_sends_canaries_on_one_reading(
    holder: str | None, held_until_s: float, now_s: float
) -> None:
    """On the same table, never both KEEP-as-holder; two CLAIMs race on the episode token."""
    shared = _open(holder=holder, held_until_s=held_until_s)
    mine = next_step(shared, BreakerState.OPEN, me=ME, now_s=now_s, cooldown_s=COOLDOWN_S)
    theirs = next_step(shared, BreakerState.OPEN, me=OTHER, now_s=now_s, cooldown_s=COOLDOWN_S)
    assert not (mine is Step.KEEP and theirs is Step.KEEP)
    assert (mine is Step.CLAIM) == (theirs is Step.CLAIM)


@given(
    seen=st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 20).map(float), max_size=6),
    now_s=st.integers(0, 20).map(float),
    moves=st.dictionaries(st.sampled_from("abcdef"), st.sampled_from(["same", "new", "gone"])),
)
def test_a_newcomer_waits_exactly_for_the_live_replicas_that_have_not_written_since(
    seen: dict[str, float], now_s: float, moves: dict[str, str]
) -> None:
    """Of the replicas live at a newcomer's first reading, one is still waited for exactly when
    its heartbeat is the one read then and has not expired; a new heartbeat, or none, ends it."""
    heartbeats: dict[str, float] = {}
    for member, expires_s in seen.items():
        move = moves.get(member, "same")
        if move == "same":
            heartbeats[member] = expires_s
        elif move == "new":
            heartbeats[member] = expires_s + 0.5
    waiting = yet_to_reread(seen, heartbeats, now_s)
    for member, expires_s in seen.items():
        unchanged = moves.get(member, "same") == "same"
        assert (member in waiting) == (unchanged and expires_s > now_s)
