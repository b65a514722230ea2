"""A token bucket per target, so a target that has just recovered is not flooded by its backlog.

The bucket holds at most `burst` tokens and gains `per_s` a second; each message
sent takes one whole token. Token counts are kept as exact fractions of the
clock's floats: with float sums, ten refills of 0.1 make 0.9999999999999999
tokens, `take` would grant nothing while `wait_s` promised the token was due, and
a caller waiting on `wait_s` could spin.

What a limit promises: the tokens taken in any window of `T` seconds are at most
`burst + per_s * T` (what was saved up, and what came in meanwhile). That holds for
messages only if each token is spent the moment it is taken, so `RateLimits.paced`
hands tokens out as they come, a few at a time, for sending at once: tokens waited
for and then spent together would add a lump no bucket ever held. Buckets start
empty, so a process that starts, or restarts after a crash, adds no burst to what
its predecessor sent.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import Any

import anyio

from retryd.arns import first_matching
from retryd.models import Target, TargetType
from retryd.settings import RateLimitSettings, RateRule

# Added to every wait so that a clock read after sleeping `wait_s` is past the
# instant the token arrives, even after float rounding of `now + wait_s`.
_WAIT_MARGIN_S = 1e-6
# `paced` waits for the tokens that come in this long before handing them out: at
# 5/s that is one token every 0.2 s, each sent alone; at 300/s, thirty at a time,
# so a fast target still gets full batch calls and not one call per message.
PACE_GRAIN_S = 0.1


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket's size: `per_s` tokens a second, at most `burst` saved up."""

    per_s: float
    burst: int


# One rate for every type when rate_limit.per_s or burst is set (the defaults of
# retryd before per-type defaults, kept for a config that sets only one of the two).
SHARED_DEFAULT = Rate(per_s=5.0, burst=10)

# Per target type when rate_limit sets neither per_s nor burst. Each AWS quota
# below is per account and Region and shared with the live traffic retryd's
# resubmissions join, so retryd takes a small share of the smallest Region's.
TYPE_DEFAULTS: Mapping[TargetType, Rate] = MappingProxyType(
    {
        # Kept slow: every async invoke takes an execution environment, from the account's
        # concurrency (1,000 by default, less for new accounts) or the function's reserved
        # concurrency; a function reserved 10 that runs for a second keeps up with 10/s, and
        # half of that leaves room for its live traffic. Lambda quotas:
        # https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html
        TargetType.LAMBDA: Rate(per_s=5.0, burst=10),
        # Kept slow: StartExecution is a token bucket of 800 refilled at 150/s in most Regions
        # (1,300 and 300/s in us-east-1, us-west-2 and eu-west-1), shared by every caller in
        # the account, and each execution starts work of its own:
        # https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html
        TargetType.STEPFUNCTIONS: Rate(per_s=5.0, burst=10),
        # Standard queues take "a nearly unlimited number of API calls per second, per API
        # action"; a FIFO queue without high throughput takes 300 transactions a second per
        # action (3,000 messages batched), so 300 messages/s fits either, even unbatched:
        # https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/standard-queues.html
        # https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/troubleshooting-fifo-throttling-issues.html
        TargetType.SQS: Rate(per_s=300.0, burst=300),
        # Publish and PublishBatch share a per-Region account quota counted in messages:
        # 30,000/s in us-east-1, 9,000/s in us-west-2 and eu-west-1, 1,500/s in eight more,
        # 300/s in the rest; a third of the smallest:
        # https://docs.aws.amazon.com/general/latest/gr/sns.html
        TargetType.SNS: Rate(per_s=100.0, burst=100),
        # PutEvents: 10,000 requests/s in us-east-1, us-west-2 and eu-west-1, down to 400/s
        # in the smallest Regions; a quarter of that, even if every request carried one event:
        # https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-quota.html
        TargetType.EVENTBRIDGE: Rate(per_s=100.0, burst=100),
    }
)


def _shared_rate(settings: RateLimitSettings) -> Rate | None:
    """The one rate for every type, when rate_limit.per_s or burst is set; else None."""
    if settings.per_s is None and settings.burst is None:
        return None
    return Rate(
        settings.per_s if settings.per_s is not None else SHARED_DEFAULT.per_s,
        settings.burst if settings.burst is not None else SHARED_DEFAULT.burst,
    )


def type_rate(settings: RateLimitSettings, target_type: TargetType) -> Rate:
    """The rate of a target of this type that no rate_limit.targets rule matches."""
    shared = _shared_rate(settings)
    return shared if shared is not None else TYPE_DEFAULTS[target_type]


def effective_rates(settings: RateLimitSettings) -> dict[str, Any]:
    """Per target type, the rate a target gets when no rule matches it, and why.

    What `retryd config check` shows; rules (`rate_limit.targets`) are listed as
    they are, since they beat these for every target they match.
    """
    source = (
        "rate_limit.per_s/burst (one rate for every type)"
        if _shared_rate(settings) is not None
        else "default for the target type"
    )
    return {
        "by_target_type": {
            target_type.value: {
                "per_s": rate.per_s,
                "burst": rate.burst,
                "from": source,
            }
            for target_type in TargetType
            for rate in [type_rate(settings, target_type)]
        },
        "rules_first": [rule.model_dump(mode="json") for rule in settings.targets],
    }


def _type_of(target_arn: str) -> TargetType | None:
    try:
        return Target.from_arn(target_arn).type
    except ValueError:
        return None


def _pattern(rule: RateRule) -> str:
    return rule.pattern


def _check_wanted(wanted: int) -> None:
    if wanted < 0:
        raise ValueError(f"wanted must be >= 0, not {wanted}")


def _check_rate(per_s: float, burst: int) -> None:
    if not per_s > 0 or math.isinf(per_s):
        raise ValueError(f"per_s must be a finite number > 0, not {per_s}")
    if burst < 1:
        raise ValueError(f"burst must be >= 1, not {burst}")


class TokenBucket:
    """`per_s` tokens a second, at most `burst` saved up; starts full (or, asked, empty)."""

    def __init__(
        self, per_s: float, burst: int, clock: Callable[[], float], *, full: bool = True
    ) -> None:
        _check_rate(per_s, burst)
        self.per_s = per_s
        self.burst = burst
        self._rate = Fraction(per_s)
        self._clock = clock
        self._tokens = Fraction(burst if full else 0)
        self._updated_at = Fraction(clock())

    def resize(self, per_s: float, burst: int) -> None:
        """A new size from now on: what was saved up stays, cut down to the new `burst`."""
        _check_rate(per_s, burst)
        tokens, now = self._level()
        self.per_s = per_s
        self.burst = burst
        self._rate = Fraction(per_s)
        self._tokens = min(tokens, Fraction(burst))
        self._updated_at = now

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

    @property
    def grain(self) -> int:
        """How many tokens `paced` waits for before handing them out: PACE_GRAIN_S's worth."""
        return max(1, min(self.burst, math.floor(self._rate * Fraction(PACE_GRAIN_S))))

    def coverable(self, within_s: float) -> int:
        """The most tokens this bucket can grant in the next `within_s`, if no one else takes."""
        tokens, _ = self._level()
        return math.floor(tokens + self._rate * Fraction(max(0.0, within_s)))

    def due_in_s(self, position: int) -> float:
        """Seconds until the `position`-th token from now (1 = the next) comes, at this rate."""
        tokens, _ = self._level()
        missing = position - tokens
        return 0.0 if missing <= 0 else float(missing / self._rate)

    def wait_s(self, wanted: int) -> float:
        """Seconds until `wanted` tokens (at most `burst`) are saved up; 0 when they are now."""
        _check_wanted(wanted)
        tokens, _ = self._level()
        missing = min(wanted, self.burst) - tokens
        if missing <= 0:
            return 0.0
        return float(missing / self._rate) + _WAIT_MARGIN_S


Share = Callable[[Rate], Rate]


def _whole(rate: Rate) -> Rate:
    return rate


async def _nothing() -> None:
    return None


class RateLimits:
    """One bucket per target ARN: the first matching rule's size, else its type's (type_rate).

    Every bucket starts empty: a process that starts, or restarts after a crash, brings
    no burst of its own. Several replicas on one DynamoDB ledger each size their
    buckets to their share of the configured rate (`reshare`, from retryd.cluster).
    """

    def __init__(
        self,
        settings: RateLimitSettings,
        clock: Callable[[], float],
        *,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        """`clock` and `sleep` must agree (anyio's in retryd; a fake clock's in tests)."""
        self._settings = settings
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[str, TokenBucket] = {}
        self._rates: dict[str, Rate] = {}
        self._share: Share = _whole
        # Per target, the messages callers of `paced` are still waiting to be granted.
        self._waiting: dict[str, int] = {}
        self._on_wait: Callable[[], Awaitable[None]] = _nothing

    def while_waiting(self, on_wait: Callable[[], Awaitable[None]]) -> None:
        """Call `on_wait` after each wait for tokens in `paced`, before taking them.

        The owner of the shares (retryd.cluster) re-reads them there when due: a batch
        paced for seconds would otherwise send at a share that has since shrunk.
        """
        self._on_wait = on_wait

    def reshare(self, share: Share) -> None:
        """Size every bucket, now and later, to `share(configured rate)`; tokens saved stay."""
        self._share = share
        for arn, bucket in self._buckets.items():
            mine = share(self._rates[arn])
            bucket.resize(mine.per_s, mine.burst)

    def for_target(self, target_arn: str) -> TokenBucket:
        """The target's bucket, created empty on first use."""
        bucket = self._buckets.get(target_arn)
        if bucket is None:
            rule = first_matching(target_arn, self._settings.targets, _pattern)
            target_type = _type_of(target_arn)
            if rule is not None:
                rate = Rate(rule.per_s, rule.burst)
            elif target_type is not None:
                rate = type_rate(self._settings, target_type)
            else:
                # Not an ARN retryd can send to (it would not get this far): the slowest rate.
                rate = _shared_rate(self._settings) or SHARED_DEFAULT
            self._rates[target_arn] = rate
            mine = self._share(rate)
            bucket = TokenBucket(mine.per_s, mine.burst, self._clock, full=False)
            self._buckets[target_arn] = bucket
        return bucket

    def room(self, target_arn: str, within_s: float) -> int:
        """How many more messages the target's tokens can cover in the next `within_s`,
        beyond those already waiting for them in `paced`."""
        covered = self.for_target(target_arn).coverable(within_s)
        return max(0, covered - self._waiting.get(target_arn, 0))

    def room_in_s(self, target_arn: str, within_s: float) -> float:
        """Seconds until `room(target_arn, within_s)` is at least 1 (0: it is now)."""
        position = self._waiting.get(target_arn, 0) + 1
        return max(0.0, self.for_target(target_arn).due_in_s(position) - within_s)

    async def paced(self, target_arn: str, wanted: int, within_s: float) -> AsyncGenerator[int]:
        """Up to `wanted` tokens of the target's bucket as they come, each grant to spend at once.

        Each grant is what the bucket holds at that moment (at least its `grain`, or
        what is still wanted); between grants it waits for the next ones, but not
        past `within_s` from now: then it stops, and what was not granted is the
        caller's to hand back. A caller that spends each grant before asking for the
        next keeps the bucket's promise for messages too: at most `burst + per_s * T`
        in any T seconds, however many callers share the bucket.
        """
        bucket = self.for_target(target_arn)
        until = self._clock() + within_s
        left = wanted
        self._waiting[target_arn] = self._waiting.get(target_arn, 0) + wanted
        try:
            while left > 0:
                wait_s = bucket.wait_s(min(left, bucket.grain))
                if wait_s > 0:
                    if self._clock() + wait_s > until:
                        return
                    await self._sleep(wait_s)
                    await self._on_wait()
                    if self._clock() > until:
                        # The re-read took long (a slow or throttled DynamoDB): the
                        # caller's time is up, however many tokens have come meanwhile.
                        return
                granted = bucket.take(left)
                if granted:
                    left -= granted
                    self._waiting[target_arn] -= granted
                    yield granted
        finally:
            self._waiting[target_arn] -= left
