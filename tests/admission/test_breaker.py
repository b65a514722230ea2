"""Circuit breaker per target: every transition, canary accounting, metrics, and random op runs."""

from __future__ import annotations

import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from retryd.admission.breaker import Breakers, BreakerState, CircuitBreaker
from retryd.metrics import Metrics
from retryd.models import Target
from retryd.settings import BreakerSettings
from tests.clock_helpers import FakeClock

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
EDGES = {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (HALF_OPEN, CLOSED)}
ACCOUNT = "123456789012"
CHARGE = Target.from_arn(f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:charge")
SHIP = Target.from_arn(f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:ship")

# The account and region labels every per-target series carries (CHARGE's).
WHERE = {"account": ACCOUNT, "region": "eu-west-1"}

SETTINGS = BreakerSettings(
    window_calls=10, min_calls=4, failure_rate=0.5, cooldown_s=60, half_open_calls=3
)

Transitions = list[tuple[BreakerState, BreakerState]]


def breaker_with_log(
    settings: BreakerSettings = SETTINGS,
) -> tuple[CircuitBreaker, FakeClock, Transitions]:
    clock = FakeClock()
    seen: Transitions = []
    breaker = CircuitBreaker(settings, clock, lambda old, new: seen.append((old, new)))
    return breaker, clock, seen


def tripped(settings: BreakerSettings = SETTINGS) -> tuple[CircuitBreaker, FakeClock, Transitions]:
    """A breaker just opened by `min_calls` failures."""
    breaker, clock, seen = breaker_with_log(settings)
    assert breaker.permits(settings.min_calls) == settings.min_calls
    for _ in range(settings.min_calls):
        breaker.record(success=False)
    assert breaker.state is OPEN
    return breaker, clock, seen


def half_open(
    settings: BreakerSettings = SETTINGS,
) -> tuple[CircuitBreaker, FakeClock, Transitions]:
    breaker, clock, seen = tripped(settings)
    clock.advance(settings.cooldown_s)
    assert breaker.state is HALF_OPEN
    return breaker, clock, seen


# -- closed ------------------------------------------------------------------------------


def test_new_breaker_is_closed_and_lets_a_whole_batch_go() -> None:
    """A fresh breaker is CLOSED and grants every permit a batch asks for."""
    breaker, _, seen = breaker_with_log()
    assert breaker.state is CLOSED
    assert breaker.permits(10) == 10
    assert breaker.peek(500) == 500
    assert breaker.retry_in_s() == 0
    assert seen == []


def test_failures_below_min_calls_do_not_open() -> None:
    """Fewer calls than min_calls give no verdict, even if every one failed."""
    breaker, _, seen = breaker_with_log()
    for _ in range(SETTINGS.min_calls - 1):
        breaker.record(success=False)
    assert breaker.state is CLOSED
    assert seen == []


def test_failure_rate_at_threshold_opens() -> None:
    """CLOSED -> OPEN once the window holds min_calls and the failure share reaches the rate."""
    breaker, clock, seen = breaker_with_log()
    for success in (True, True, False, False):
        breaker.record(success=success)
    assert breaker.state is OPEN
    assert seen == [(CLOSED, OPEN)]
    assert breaker.retry_in_s() == SETTINGS.cooldown_s
    clock.advance(15)
    assert breaker.retry_in_s() == SETTINGS.cooldown_s - 15


def test_failure_rate_below_threshold_stays_closed() -> None:
    """A target failing less often than failure_rate keeps its breaker closed."""
    breaker, _, _ = breaker_with_log()
    for success in (True, True, True, False, True, True, False):
        breaker.record(success=success)
    assert breaker.state is CLOSED


def test_old_failures_slide_out_of_the_window() -> None:
    """Only the last window_calls outcomes count: old failures stop counting."""
    settings = BreakerSettings(
        window_calls=4, min_calls=4, failure_rate=0.75, cooldown_s=60, half_open_calls=1
    )
    breaker, _, _ = breaker_with_log(settings)
    for success in (False, False, True, True, True, True, False, False):
        breaker.record(success=success)
    # The window is now [ok, ok, fail, fail]: half, under 0.75.
    assert breaker.state is CLOSED
    breaker.record(success=False)
    # [ok, fail, fail, fail]: three quarters.
    assert breaker.state is OPEN


def test_negative_counts_are_errors() -> None:
    """Asking for or giving back a negative number of permits is a caller's bug."""
    breaker, _, _ = breaker_with_log()
    with pytest.raises(ValueError, match="wanted"):
        breaker.permits(-1)
    with pytest.raises(ValueError, match="wanted"):
        breaker.peek(-1)
    with pytest.raises(ValueError, match="unused"):
        breaker.release(-1)


# -- open --------------------------------------------------------------------------------


def test_open_breaker_grants_nothing_before_the_cool_down() -> None:
    """While OPEN and cooling down, no permit is granted and the state stays OPEN."""
    breaker, clock, seen = tripped()
    clock.advance(SETTINGS.cooldown_s - 0.001)
    assert breaker.peek(5) == 0
    assert breaker.permits(5) == 0
    assert breaker.state is OPEN
    assert seen == [(CLOSED, OPEN)]


def test_open_becomes_half_open_when_read_after_the_cool_down() -> None:
    """OPEN -> HALF_OPEN on the first read once cooldown_s has passed."""
    breaker, clock, seen = tripped()
    clock.advance(SETTINGS.cooldown_s)
    assert breaker.retry_in_s() == 0
    assert breaker.state is HALF_OPEN
    assert seen == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def test_late_results_while_open_change_nothing() -> None:
    """Calls let through before the breaker opened may finish late: they neither close it
    nor restart its cool-down."""
    breaker, clock, seen = tripped()
    clock.advance(30)
    breaker.record(success=True)
    breaker.record(success=False)
    assert breaker.state is OPEN
    assert breaker.retry_in_s() == SETTINGS.cooldown_s - 30
    assert seen == [(CLOSED, OPEN)]


def test_peek_after_the_cool_down_changes_nothing() -> None:
    """A dry run sees the canary slots a read would offer, but moves no state and fires nothing."""
    breaker, clock, seen = tripped()
    clock.advance(SETTINGS.cooldown_s)
    assert breaker.peek(10) == SETTINGS.half_open_calls
    assert breaker.observed_state is HALF_OPEN
    assert seen == [(CLOSED, OPEN)]
    assert breaker.permits(10) == SETTINGS.half_open_calls
    assert seen == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


# -- half-open ---------------------------------------------------------------------------


def test_half_open_lets_only_the_canaries_through() -> None:
    """A batch of 10 gets half_open_calls permits; the next batch gets none."""
    breaker, _, _ = half_open()
    assert breaker.permits(10) == SETTINGS.half_open_calls
    assert breaker.permits(10) == 0
    assert breaker.peek(10) == 0


def test_canary_slots_are_shared_across_batches() -> None:
    """Two small batches together cannot exceed the canary count."""
    breaker, _, _ = half_open()
    assert breaker.permits(2) == 2
    assert breaker.permits(2) == 1


def test_closes_only_after_every_canary_succeeded() -> None:
    """HALF_OPEN -> CLOSED after half_open_calls successes, not one before."""
    breaker, _, seen = half_open()
    assert breaker.permits(3) == 3
    breaker.record(success=True)
    breaker.record(success=True)
    assert breaker.state is HALF_OPEN
    breaker.record(success=True)
    assert breaker.state is CLOSED
    assert seen[-1] == (HALF_OPEN, CLOSED)
    assert breaker.permits(50) == 50


def test_closing_clears_the_window() -> None:
    """After closing, the failures that opened it are forgotten: min_calls counts afresh."""
    breaker, _, _ = half_open()
    breaker.permits(3)
    for _ in range(3):
        breaker.record(success=True)
    for _ in range(SETTINGS.min_calls - 1):
        breaker.record(success=False)
    assert breaker.state is CLOSED


@pytest.mark.parametrize("successes_first", [0, 1, 2])
def test_any_canary_failure_reopens_with_a_new_cool_down(successes_first: int) -> None:
    """HALF_OPEN -> OPEN on any failure, however many canaries had succeeded, and the
    cool-down starts again from that moment."""
    breaker, clock, seen = half_open()
    breaker.permits(3)
    for _ in range(successes_first):
        breaker.record(success=True)
    clock.advance(5)
    breaker.record(success=False)
    assert breaker.state is OPEN
    assert seen[-1] == (HALF_OPEN, OPEN)
    assert breaker.retry_in_s() == SETTINGS.cooldown_s
    assert breaker.permits(1) == 0


def test_released_canary_slots_can_be_taken_again() -> None:
    """Permits reserved but not sent go back and can be granted to the next batch."""
    breaker, _, _ = half_open()
    assert breaker.permits(3) == 3
    breaker.release(2)
    assert breaker.peek(5) == 2
    assert breaker.permits(5) == 2
    assert breaker.permits(5) == 0


def test_release_cannot_free_slots_of_canaries_that_succeeded() -> None:
    """A slot whose canary already succeeded is spent: releasing too much frees only the rest."""
    breaker, _, _ = half_open()
    assert breaker.permits(3) == 3
    breaker.record(success=True)
    breaker.release(10)
    assert breaker.permits(10) == 2


def test_release_while_closed_or_open_is_harmless() -> None:
    """Outside HALF_OPEN permits are not counted, so giving them back changes nothing."""
    breaker, _, _ = breaker_with_log()
    breaker.permits(5)
    breaker.release(5)
    assert breaker.permits(7) == 7
    breaker, _, seen = tripped()
    breaker.release(3)
    assert breaker.permits(3) == 0
    assert seen == [(CLOSED, OPEN)]


# -- per target, metrics and logs --------------------------------------------------------


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float | None:
    return registry.get_sample_value(name, labels)


def test_breakers_are_per_target() -> None:
    """One target's failures open its breaker only; the other target carries on."""
    clock = FakeClock()
    breakers = Breakers(SETTINGS, clock)
    assert breakers.for_target(CHARGE) is breakers.for_target(CHARGE)
    charge = breakers.for_target(CHARGE)
    for _ in range(SETTINGS.min_calls):
        charge.record(success=False)
    assert breakers.for_target(SHIP).permits(10) == 10
    assert breakers.states() == {CHARGE.arn: OPEN, SHIP.arn: CLOSED}


def test_states_report_half_open_without_moving_the_breaker() -> None:
    """`retryd plan`/inspect read states as they would be, and fire no transition."""
    clock = FakeClock()
    registry = CollectorRegistry()
    breakers = Breakers(SETTINGS, clock, Metrics(registry))
    charge = breakers.for_target(CHARGE)
    for _ in range(SETTINGS.min_calls):
        charge.record(success=False)
    clock.advance(SETTINGS.cooldown_s)
    assert breakers.states() == {CHARGE.arn: HALF_OPEN}
    labels = {"target": CHARGE.arn, "target_type": "lambda", **WHERE, "to_state": "half_open"}
    assert sample(registry, "retryd_breaker_transitions_total", labels) is None


def test_new_breaker_exports_closed() -> None:
    """A breaker created for a target shows up as closed (1) before anything happens."""
    registry = CollectorRegistry()
    Breakers(SETTINGS, FakeClock(), Metrics(registry)).for_target(CHARGE)
    for state, value in (("closed", 1.0), ("open", 0.0), ("half_open", 0.0)):
        labels = {"target": CHARGE.arn, "target_type": "lambda", **WHERE, "state": state}
        assert sample(registry, "retryd_breaker_state", labels) == value


def test_transitions_are_counted_exported_and_logged() -> None:
    """Each transition adds one to the counter for the state entered, sets the state gauge,
    and logs one `breaker` line with target, from and to."""
    clock = FakeClock()
    registry = CollectorRegistry()
    breakers = Breakers(SETTINGS, clock, Metrics(registry))
    charge = breakers.for_target(CHARGE)
    with capture_logs() as logs:
        for _ in range(SETTINGS.min_calls):
            charge.record(success=False)
        clock.advance(SETTINGS.cooldown_s)
        charge.permits(3)
        charge.record(success=False)  # a canary fails: open again
        clock.advance(SETTINGS.cooldown_s)
        charge.permits(3)
        for _ in range(3):
            charge.record(success=True)
    expected = {"open": 2.0, "half_open": 2.0, "closed": 1.0}
    for state, count in expected.items():
        labels = {"target": CHARGE.arn, "target_type": "lambda", **WHERE, "to_state": state}
        assert sample(registry, "retryd_breaker_transitions_total", labels) == count
    gauge = {"target": CHARGE.arn, "target_type": "lambda", **WHERE, "state": "closed"}
    assert sample(registry, "retryd_breaker_state", gauge) == 1.0
    lines = [(line["target"], line["from"], line["to"], line["log_level"]) for line in logs]
    assert lines == [
        (CHARGE.arn, "closed", "open", "warning"),
        (CHARGE.arn, "open", "half_open", "info"),
        (CHARGE.arn, "half_open", "open", "warning"),
        (CHARGE.arn, "open", "half_open", "info"),
        (CHARGE.arn, "half_open", "closed", "info"),
    ]
    assert all(line["event"] == "breaker" for line in logs)


# -- random operation sequences ----------------------------------------------------------


class BreakerMachine(RuleBasedStateMachine):
    """Random permits, results, releases, peeks and clock moves against a reference model."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.settings = SETTINGS
        self.breaker = CircuitBreaker(SETTINGS, self.clock)
        self.state = CLOSED
        self.period = 0  # bumped at every transition
        self.opened_at_s = 0.0
        self.closed_results: list[bool] = []  # True = failure, since the last close
        self.canary_successes = 0
        self.outstanding: list[int] = []  # the period each unfinished permit was granted in

    @initialize(
        settings=st.builds(
            BreakerSettings,
            window_calls=st.integers(1, 8),
            min_calls=st.just(1),
            failure_rate=st.sampled_from([0.25, 0.5, 1.0]),
            cooldown_s=st.sampled_from([1.0, 10.0]),
            half_open_calls=st.integers(1, 4),
        ),
        min_calls=st.integers(1, 8),
    )
    def configure(self, settings: BreakerSettings, min_calls: int) -> None:
        self.settings = settings.model_copy(
            update={"min_calls": min(min_calls, settings.window_calls)}
        )
        self.breaker = CircuitBreaker(self.settings, self.clock, self.seen)

    def seen(self, old: BreakerState, new: BreakerState) -> None:
        assert (old, new) in EDGES
        assert old is self.state
        now_s = self.clock()
        if (old, new) == (CLOSED, OPEN):
            window = self.closed_results[-self.settings.window_calls :]
            assert len(window) >= self.settings.min_calls
            assert sum(window) / len(window) >= self.settings.failure_rate
        if new is HALF_OPEN:
            assert now_s >= self.opened_at_s + self.settings.cooldown_s
            self.canary_successes = 0
        if new is CLOSED:
            # Closed only once the canaries all succeeded (a failure would have reopened it).
            assert self.canary_successes >= self.settings.half_open_calls
            self.closed_results = []
        if new is OPEN:
            self.opened_at_s = now_s
        self.state = new
        self.period += 1

    def cooling(self) -> bool:
        return self.state is OPEN and self.clock() < self.opened_at_s + self.settings.cooldown_s

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(wanted=st.integers(0, 6))
    def ask(self, wanted: int) -> None:
        transitions_before = self.period
        peeked = self.breaker.peek(wanted)
        assert self.period == transitions_before, "peek moved the breaker"
        was_cooling = self.cooling()
        granted = self.breaker.permits(wanted)
        assert granted == peeked
        assert 0 <= granted <= wanted
        if was_cooling:
            assert granted == 0
        if self.state is CLOSED:
            assert granted == wanted
        self.outstanding.extend([self.period] * granted)

    @rule(pick=st.integers(0, 1_000), success=st.booleans())
    def finish(self, pick: int, success: bool) -> None:
        if not self.outstanding:
            return
        self.outstanding.pop(pick % len(self.outstanding))
        # Read first, so that a due OPEN -> HALF_OPEN move is seen before the result.
        before = self.breaker.state
        if before is CLOSED:
            self.closed_results.append(not success)
        if before is HALF_OPEN and success:
            self.canary_successes += 1
        self.breaker.record(success=success)
        if before is HALF_OPEN and not success:
            assert self.state is OPEN
        if before is OPEN:
            assert self.state is OPEN
        if before is CLOSED:
            window = self.closed_results[-self.settings.window_calls :]
            trips = (
                len(window) >= self.settings.min_calls
                and sum(window) / len(window) >= self.settings.failure_rate
            )
            assert self.state is (OPEN if trips else CLOSED)

    @rule(count=st.integers(1, 4))
    def give_back(self, count: int) -> None:
        # Only permits of the current period: the int-based API cannot tell an old
        # permit from a canary, so the pipeline returns permits in the cycle it took them.
        current = [i for i, period in enumerate(self.outstanding) if period == self.period]
        chosen = current[:count]
        for index in reversed(chosen):
            self.outstanding.pop(index)
        self.breaker.release(len(chosen))

    @invariant()
    def canaries_in_flight_within_limit(self) -> None:
        if self.state is HALF_OPEN:
            in_flight = sum(1 for period in self.outstanding if period == self.period)
            assert in_flight <= self.settings.half_open_calls

    @invariant()
    def retry_in_only_while_open(self) -> None:
        wait_s = self.breaker.retry_in_s()
        if self.state is OPEN:
            expected = max(0.0, self.opened_at_s + self.settings.cooldown_s - self.clock())
            assert wait_s == expected
        else:
            assert wait_s == 0


BreakerMachine.TestCase.settings = hypothesis_settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestBreakerMachine = BreakerMachine.TestCase


def test_an_adopted_open_breaker_held_elsewhere_never_turns_half_open_by_itself() -> None:
    """Held elsewhere: past its cool-down it stays OPEN and lets nothing through."""
    clock = FakeClock()
    breaker = CircuitBreaker(SETTINGS, clock)
    breaker.adopt_open(clock(), held_elsewhere=True)
    clock.advance(SETTINGS.cooldown_s * 10)
    assert breaker.state is BreakerState.OPEN
    assert breaker.permits(5) == 0


def test_an_adopted_cooled_open_breaker_hands_out_its_own_canaries() -> None:
    """Not held, opened a cool-down ago: the next read is HALF_OPEN with every canary free."""
    clock = FakeClock()
    breaker = CircuitBreaker(SETTINGS, clock)
    breaker.adopt_open(clock() - SETTINGS.cooldown_s, held_elsewhere=False)
    assert breaker.permits(100) == SETTINGS.half_open_calls
    assert breaker.state is BreakerState.HALF_OPEN


def test_adopting_closed_empties_the_window() -> None:
    """An adopted CLOSED forgets the failures seen before: it does not reopen on the next one."""
    clock = FakeClock()
    breaker = CircuitBreaker(SETTINGS, clock)
    breaker.adopt_open(clock(), held_elsewhere=True)
    breaker.adopt_closed()
    breaker.record(success=False)
    assert breaker.state is BreakerState.CLOSED


def test_listeners_hear_every_transition_with_its_target_and_breaker() -> None:
    """Breakers.listen: each move of a target's breaker reaches the listener, with the breaker."""
    clock = FakeClock()
    breakers = Breakers(SETTINGS, clock)
    heard: list[tuple[str, BreakerState, BreakerState]] = []
    breakers.listen(lambda target, breaker, old, new: heard.append((target.arn, old, new)))
    breaker = breakers.for_target(CHARGE)
    for _ in range(SETTINGS.min_calls):
        breaker.record(success=False)
    assert heard == [(CHARGE.arn, BreakerState.CLOSED, BreakerState.OPEN)]
    assert breakers.known(CHARGE.arn) is breaker
    assert breakers.known(SHIP.arn) is None
