"""What a reader outside the cluster (`retryd plan`) makes of the shared breakers."""

from __future__ import annotations

from retryd.admission.breaker import Breakers, BreakerState
from retryd.cluster.agree import SharedBreaker
from retryd.cluster.view import ClusterView, hold_as_the_cluster_does
from retryd.settings import BreakerSettings
from tests.clock_helpers import FakeClock
from tests.world import ACCOUNT, REGION

ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge"
SETTINGS = BreakerSettings(
    window_calls=4, min_calls=2, failure_rate=0.5, cooldown_s=30, half_open_calls=2
)
NOW_S = 1_700_000_000.0


def _judged(shared: SharedBreaker) -> tuple[int, float]:
    """(permits a dry run would see for 10 messages, seconds until it is tried again)."""
    clock = FakeClock()
    breakers = Breakers(SETTINGS, clock)
    view = ClusterView(NOW_S, live=2, breakers={ARN: shared})
    assert hold_as_the_cluster_does(
        view, breakers, cooldown_s=SETTINGS.cooldown_s, monotonic_s=clock()
    ) == [ARN]
    breaker = breakers.known(ARN)
    assert breaker is not None
    return breaker.peek(10), breaker.retry_in_s()


def test_a_breaker_cooling_down_is_held_for_the_rest_of_the_shared_cool_down() -> None:
    """Opened 10 s ago on the table's clock: nothing goes, tried again in 20 s."""
    assert _judged(SharedBreaker(BreakerState.OPEN, "e1", NOW_S - 10)) == (0, 20)


def test_canaries_another_replica_holds_keep_the_breaker_open() -> None:
    """Past the cool-down with a live claim elsewhere: nothing goes from here."""
    shared = SharedBreaker(BreakerState.OPEN, "e1", NOW_S - 60, "replica-b", NOW_S + 5)
    assert _judged(shared)[0] == 0


def test_canaries_nobody_holds_show_as_the_ones_a_cycle_would_claim() -> None:
    """Past the cool-down, no live claim: the half-open canaries go, and only they."""
    lapsed = SharedBreaker(BreakerState.OPEN, "e1", NOW_S - 60, "replica-b", NOW_S - 1)
    assert _judged(lapsed)[0] == SETTINGS.half_open_calls
    assert _judged(SharedBreaker(BreakerState.OPEN, "e1", NOW_S - 60))[0] == 2


def test_a_closed_entry_leaves_the_breaker_alone() -> None:
    """A closed shared breaker opens nothing (and creates no breaker)."""
    breakers = Breakers(SETTINGS, FakeClock())
    view = ClusterView(NOW_S, live=1, breakers={ARN: SharedBreaker(BreakerState.CLOSED, "e", 0)})
    assert hold_as_the_cluster_does(view, breakers, cooldown_s=30, monotonic_s=0) == []
    assert breakers.known(ARN) is None
