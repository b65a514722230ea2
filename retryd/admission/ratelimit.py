"""A token bucket per target, so a target that has just recovered is not flooded by its backlog.

The bucket holds at most `burst` tokens and gains `per_s` a second; each message
sent takes one whole token. Token counts are kept as exact fractions of the
clock's floats: with float sums, ten refills of 0.1 make 0.9999999999999999
tokens, `take` would grant nothing while `wait_s` promised the token was due, and
a caller waiting on `wait_s` could spin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import anyio

from retryd.admission.matching import first_matching
from retryd.settings import RateLimitSettings, RateRule

# Added to every wait so that a clock read after sleeping `wait_s` is past the
# instant the token arrives, even after float rounding of `now + wait_s`.
_WAIT_MARGIN_S = 1e-6


def _pattern(rule: RateRule) -> str:
    return rule.pattern


def _check_wanted(wanted: int) -> None:
    if wanted < 0:
        raise ValueError(f"wanted must be >= 0, not {wanted}")


class TokenBucket:
    """`per_s` tokens a second, at most `burst` saved up; starts full."""

    def __init__(self, per_s: float, burst: int, clock: Callable[[], float]) -> None:
        if not per_s > 0 or math.isinf(per_s):
            raise ValueError(f"per_s must be a finite number > 0, not {per_s}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, not {burst}")
        self.per_s = per_s
        self.burst = burst
        self._rate = Fraction(per_s)
        self._clock = clock
        self._tokens = Fraction(burst)
        self._updated_at = Fraction(clock())

    def _level(self) -> tuple[Fraction, Fraction]:
        """(tokens now, now), without storing them."""
        now = Fraction(self._clock())
        # A clock that steps back (it should not: retryd passes a monotonic one) adds nothing.
        elapsed = max(Fraction(0), now - self._updated_at)
        return min(Fraction(self.burst), self._tokens + elapsed * self._rate), max(
            now, self._updated_at
        )

    def peek(self, wanted: int) -> int:
        """How many of `wanted` tokens `take` would grant now, taking none."""
        _check_wanted(wanted)
        tokens, _ = self._level()
        return min(wanted, math.floor(tokens))

    def take(self, wanted: int) -> int:
        """Grant up to `wanted` whole tokens now (0 when none are saved up)."""
        _check_wanted(wanted)
        tokens, now = self._level()
        granted = min(wanted, math.floor(tokens))
        self._tokens = tokens - granted
        self._updated_at = now
        return granted

    def wait_s(self, wanted: int) -> float:
        """Seconds until `wanted` tokens (at most `burst`) are saved up; 0 when they are now."""
        _check_wanted(wanted)
        tokens, _ = self._level()
        missing = min(wanted, self.burst) - tokens
        if missing <= 0:
            return 0.0
        return float(missing / self._rate) + _WAIT_MARGIN_S


class RateLimits:
    """One bucket per target ARN, sized by the first matching rule, else the defaults."""

    def __init__(self, settings: RateLimitSettings, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def for_target(self, target_arn: str) -> TokenBucket:
        """The target's bucket, created full on first use."""
        bucket = self._buckets.get(target_arn)
        if bucket is None:
            rule = first_matching(target_arn, self._settings.targets, _pattern)
            per_s, burst = (
                (rule.per_s, rule.burst)
                if rule is not None
                else (self._settings.per_s, self._settings.burst)
            )
            bucket = TokenBucket(per_s, burst, self._clock)
            self._buckets[target_arn] = bucket
        return bucket

    async def take_by(self, target_arn: str, wanted: int, until: float) -> int:
        """Up to `wanted` tokens of the target's bucket, waiting for them until `until`.

        `until` is on the anyio clock, which the buckets of a running retryd share.
        """
        bucket = self.for_target(target_arn)
        granted = bucket.take(wanted)
        while granted < wanted:
            wait_s = bucket.wait_s(1)
            if anyio.current_time() + wait_s > until:
                break
            await anyio.sleep(wait_s)
            granted += bucket.take(wanted - granted)
        return granted
