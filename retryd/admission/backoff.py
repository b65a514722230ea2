"""How long a message waits before its next resubmission: exponential backoff with full jitter.

Full jitter draws each delay uniformly from [0, min(max_s, base_s * 2**attempt)),
which spreads retries of many failed messages across the whole window instead of
sending them back in synchronised waves. Described in the AWS Architecture Blog,
"Exponential Backoff And Jitter":
https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/

The draw is a hash of (idempotency key, attempt), not a random number: every
cycle (and every replica) that looks at the same message computes the same due
time, so a message is not re-rolled each time it is read and cannot be made due
sooner by being read more often.
"""

from __future__ import annotations

import hashlib
import math

from retryd.arns import first_matching
from retryd.settings import BackoffRule, BackoffSettings

# 53 bits fill a double's mantissa exactly, so the fraction is uniform on [0, 1).
_FRACTION_BITS = 53
# Targets whose limits are kept once looked up (asked for every message; a handful per cycle).
LIMITS_KEPT = 4096


def _pattern(rule: BackoffRule) -> str:
    return rule.pattern


def jitter_fraction(key: str, attempt: int) -> float:
    """A fraction in [0, 1), the same every time for the same key and attempt."""
    digest = hashlib.blake2b(f"{attempt}\x00{key}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> (64 - _FRACTION_BITS)) / (1 << _FRACTION_BITS)


def ceiling_s(base_s: float, max_s: float, attempt: int) -> float:
    """min(max_s, base_s * 2**attempt), computed without overflowing for any attempt."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, not {attempt}")
    if base_s >= max_s:
        return max_s
    # Well past the doublings that take base_s to max_s the cap holds, and the
    # product is never formed (2**attempt overflows a float past 1023). The margin
    # of two doublings absorbs log2's rounding; below it ldexp is exact and finite.
    if attempt >= math.log2(max_s) - math.log2(base_s) + 2:
        return max_s
    return min(max_s, math.ldexp(base_s, attempt))


class Backoff:
    """Per-target backoff: the first matching rule's limits, else the defaults."""

    def __init__(self, settings: BackoffSettings) -> None:
        self._settings = settings
        # Target ARN -> its limits: matching the rules' globs once per target, not per message.
        self._limits: dict[str, tuple[float, float]] = {}

    def limits_for(self, target_arn: str) -> tuple[float, float]:
        """(base_s, max_s) for the target."""
        limits = self._limits.get(target_arn)
        if limits is None:
            rule = first_matching(target_arn, self._settings.targets, _pattern)
            limits = (
                (self._settings.base_s, self._settings.max_s)
                if rule is None
                else (rule.base_s, rule.max_s)
            )
            if len(self._limits) < LIMITS_KEPT:
                self._limits[target_arn] = limits
        return limits

    def delay_s(self, target_arn: str, key: str, attempt: int) -> float:
        """The wait before the next resubmission; `attempt` resubmissions were already made."""
        base_s, max_s = self.limits_for(target_arn)
        return jitter_fraction(key, attempt) * ceiling_s(base_s, max_s, attempt)

    def due_at_s(self, target_arn: str, key: str, attempt: int, last_failure_at_s: float) -> float:
        """Unix time at which the next resubmission is due."""
        return last_failure_at_s + self.delay_s(target_arn, key, attempt)
