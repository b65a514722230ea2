"""A circuit breaker per target: transient failures open it, canary messages close it.

Written by hand after evaluating two maintained libraries against what retryd needs
(a count-based sliding window with a minimum number of calls and a failure-rate
threshold; half-open with N canaries that must all succeed; a passed-in clock; a
breaker per target; transitions exported as metrics; a batch of N messages asking
for N permits at once; anyio, no asyncio-only primitives):

- purgatory 3.0.1 counts *consecutive* failures against a threshold (any success
  resets it): no window, no minimum calls, no rate. Its open state reads
  `time.time()` directly, so the clock cannot be passed in. Half-open lets every
  call through and closes on the first success: no canary limit. Calls are guarded
  by wrapping them (a context manager that raises when open), with no way to ask
  for, reserve or give back permits for a batch. Its per-name factory and state
  hooks would have fitted.
- aiobreaker 1.2.0 has the same consecutive-failure counter and first-success
  half-open. It keeps time with `datetime.utcnow()` when opening but compares
  with the local `datetime.now()` elsewhere (no clock can be passed in, and
  `utcnow` is deprecated from Python 3.12, which retryd's warnings-as-errors
  tests would trip on), imports asyncio for `asyncio.sleep`, guards a call by
  wrapping it, and keeps no breaker per key.

Neither has the window, the canary count or batch permits, which are the core of
the behaviour, so adapting either would have meant rewriting its state machine.

Contract: every permit handed out ends in exactly one `record` (a success or a
transient failure) or one `release` (not sent, or ended in a permanent error,
which says nothing about the target's health). A half-open permit that is never
returned keeps that canary slot taken until the process restarts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING

import structlog

from retryd.models import Target
from retryd.settings import BreakerSettings

if TYPE_CHECKING:
    # For annotations alone: `config check` imports this module (for BreakerState, via
    # the cluster's rate split) and need not load prometheus_client with it.
    from retryd.metrics import Metrics

log = structlog.get_logger("retryd.breaker")


class BreakerState(StrEnum):
    """Where a target's breaker is; the values are metrics.BREAKER_STATES."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


Transition = Callable[[BreakerState, BreakerState], None]
# Told of every transition of every target's breaker (retryd.cluster shares them).
Listener = Callable[[Target, "CircuitBreaker", BreakerState, BreakerState], None]


def _check_count(name: str, value: int) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")


class CircuitBreaker:
    """One target's breaker. Not thread-safe: retryd runs it on one event loop."""

    def __init__(
        self,
        settings: BreakerSettings,
        clock: Callable[[], float],
        on_transition: Transition | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        # The last `window_calls` outcomes while closed: True for a transient failure.
        self._window: deque[bool] = deque(maxlen=settings.window_calls)
        self._window_failures = 0
        self._opened_at = 0.0
        # Half-open accounting: canary slots handed out, and canaries that succeeded.
        self._canaries_reserved = 0
        self._canaries_succeeded = 0
        # Bumped on every transition. Permits carry the episode they were taken in,
        # so an answer that comes back after the breaker has moved on (a permanent
        # error, a late success) cannot spend or free a later half-open's canaries.
        self._episode = 0
        # Set while another replica holds this breaker's half-open canaries (retryd.cluster):
        # an OPEN breaker then stays OPEN here whatever its cool-down says.
        self._held_elsewhere = False

    @property
    def episode(self) -> int:
        """Which stretch between two transitions this is; permits are valid within one."""
        return self._episode

    # -- reading ------------------------------------------------------------------------

    def _cooled_down(self) -> bool:
        if self._held_elsewhere:
            return False
        return self._clock() >= self._opened_at + self._settings.cooldown_s

    def _observed(self) -> BreakerState:
        """The state as a read would find it, without moving the breaker."""
        if self._state is BreakerState.OPEN and self._cooled_down():
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def state(self) -> BreakerState:
        """The current state; an OPEN breaker read after its cool-down becomes HALF_OPEN."""
        if self._state is BreakerState.OPEN and self._cooled_down():
            self._move(BreakerState.HALF_OPEN)
        return self._state

    @property
    def observed_state(self) -> BreakerState:
        """The state a read would report, changing nothing (for dry runs and inspection)."""
        return self._observed()

    def _free_canaries(self) -> int:
        return max(0, self._settings.half_open_calls - self._canaries_reserved)

    def _answer(self, state: BreakerState, wanted: int) -> int:
        if state is BreakerState.CLOSED:
            return wanted
        if state is BreakerState.OPEN:
            return 0
        if self._state is BreakerState.OPEN:
            # Would become half-open on this read: every canary slot is free.
            return min(wanted, self._settings.half_open_calls)
        return min(wanted, self._free_canaries())

    def peek(self, wanted: int) -> int:
        """What `permits(wanted)` would answer now, reserving and changing nothing."""
        _check_count("wanted", wanted)
        return self._answer(self._observed(), wanted)

    def retry_in_s(self) -> float:
        """While OPEN: seconds until it turns half-open; otherwise 0."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._settings.cooldown_s - self._clock())

    # -- changing -----------------------------------------------------------------------

    def permits(self, wanted: int) -> int:
        """How many of `wanted` calls may go now, reserving them.

        All of them when CLOSED, none when OPEN, the free canary slots when HALF_OPEN.
        """
        _check_count("wanted", wanted)
        state = self.state
        granted = self._answer(state, wanted)
        if state is BreakerState.HALF_OPEN:
            self._canaries_reserved += granted
        return granted

    def _stale(self, episode: int | None) -> bool:
        return (
            episode is not None
            and episode != self._episode
            and self._state is BreakerState.HALF_OPEN
        )

    def release(self, unused: int, episode: int | None = None) -> None:
        """Permits that were reserved but not used go back (only half-open ones are counted).

        Permits from an `episode` before the current half-open one are ignored.
        """
        _check_count("unused", unused)
        if self._stale(episode):
            return
        if self._state is BreakerState.HALF_OPEN:
            # Slots whose canaries already succeeded are spent and stay so.
            self._canaries_reserved = max(
                self._canaries_succeeded, self._canaries_reserved - unused
            )

    def record(self, success: bool, episode: int | None = None) -> None:
        """One finished call: a success, or a transient failure.

        A call permitted in an `episode` before the current half-open one is not a
        canary of it, and is ignored.
        """
        state = self.state
        if self._stale(episode):
            return
        if state is BreakerState.OPEN:
            # A call let through before the breaker opened, finishing late: the
            # verdict is already in, and the cool-down is not restarted by it.
            return
        if state is BreakerState.HALF_OPEN:
            self._record_canary(success)
            return
        self._record_closed(success)

    def _record_closed(self, success: bool) -> None:
        if len(self._window) == self._window.maxlen and self._window[0]:
            self._window_failures -= 1
        self._window.append(not success)
        if not success:
            self._window_failures += 1
        calls = len(self._window)
        if (
            calls >= self._settings.min_calls
            and self._window_failures / calls >= self._settings.failure_rate
        ):
            self._open()

    def _record_canary(self, success: bool) -> None:
        if not success:
            self._open()
            return
        self._canaries_succeeded += 1
        # A success means a slot was used, even one reserved before the breaker
        # last moved; counting it keeps the in-flight canaries within the limit.
        self._canaries_reserved = max(self._canaries_reserved, self._canaries_succeeded)
        if self._canaries_succeeded >= self._settings.half_open_calls:
            self._window.clear()
            self._window_failures = 0
            self._move(BreakerState.CLOSED)

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._move(BreakerState.OPEN)

    # -- agreeing with other replicas (retryd.cluster) ------------------------------------

    @property
    def opened_at(self) -> float:
        """When it last opened, on its clock (meaningful while OPEN or HALF_OPEN)."""
        return self._opened_at

    @property
    def held_elsewhere(self) -> bool:
        """Whether it is kept OPEN because another replica holds the half-open canaries."""
        return self._held_elsewhere

    def adopt_open(self, opened_at: float, *, held_elsewhere: bool) -> None:
        """Open as another replica found it, at `opened_at` on this breaker's clock.

        `held_elsewhere` keeps it OPEN past its cool-down: another replica holds the
        half-open canaries. Moving from another state counts as a transition.
        """
        self._opened_at = opened_at
        self._held_elsewhere = held_elsewhere
        if self._state is not BreakerState.OPEN:
            self._move(BreakerState.OPEN)

    def adopt_closed(self) -> None:
        """Closed as another replica found it: an empty window, nothing held."""
        self._held_elsewhere = False
        if self._state is not BreakerState.CLOSED:
            self._window.clear()
            self._window_failures = 0
            self._move(BreakerState.CLOSED)

    def _move(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self._episode += 1
        if new is BreakerState.HALF_OPEN:
            self._canaries_reserved = 0
            self._canaries_succeeded = 0
        if self._on_transition is not None:
            self._on_transition(old, new)


class Breakers:
    """One breaker per target ARN, each transition logged and exported.

    `logged=False` for a dry run (`retryd plan`): its breakers only copy what the
    cluster holds, and a `breaker` line would read as a target that just failed.
    """

    def __init__(
        self,
        settings: BreakerSettings,
        clock: Callable[[], float],
        metrics: Metrics | None = None,
        *,
        logged: bool = True,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        self._logged = logged
        self._by_arn: dict[str, CircuitBreaker] = {}
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        """Tell `listener` of every transition from now on (after the log line and metric)."""
        self._listeners.append(listener)

    def known(self, arn: str) -> CircuitBreaker | None:
        """The breaker of a target already used, or None."""
        return self._by_arn.get(arn)

    def for_target(self, target: Target) -> CircuitBreaker:
        """The target's breaker, created CLOSED (and exported as such) on first use."""
        breaker = self._by_arn.get(target.arn)
        if breaker is None:
            breaker = CircuitBreaker(self._settings, self._clock, self._reporter(target))
            self._by_arn[target.arn] = breaker
            if self._metrics is not None:
                self._metrics.set_breaker_state(
                    target.arn, target.type.value, BreakerState.CLOSED.value
                )
        return breaker

    def _reporter(self, target: Target) -> Transition:
        def report(old: BreakerState, new: BreakerState) -> None:
            # An opening is what an operator is paged about; the others are recovery.
            emit = log.warning if new is BreakerState.OPEN else log.info
            if self._logged:
                emit("breaker", target=target.arn, **{"from": old.value, "to": new.value})
            if self._metrics is not None:
                self._metrics.record_breaker_transition(target.arn, target.type.value, new.value)
            # Only a breaker already stored can move (creation is no transition).
            for listener in self._listeners:
                listener(target, self._by_arn[target.arn], old, new)

        return report

    def states(self) -> dict[str, BreakerState]:
        """Each known target's state, as a read would find it, changing nothing."""
        return {arn: breaker.observed_state for arn, breaker in self._by_arn.items()}
