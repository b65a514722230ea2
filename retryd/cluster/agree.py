"""What replicas on one DynamoDB ledger agree on, as pure functions of what the table holds.

Membership: each replica writes when its heartbeat expires (unix seconds); a replica
is live until then. Rate budget: each live replica takes an equal share of a target's
rate, once it has agreed on the membership; until then (a replica that has just
started, and whose first reading may predate the others' first heartbeats) it takes
the most conservative share it can justify. Breakers: the table holds, per target
that has ever opened, whether it is open, since when, an episode token that changes
on every move, and which replica (if any) holds the half-open canaries, until when.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from retryd.admission.breaker import BreakerState
from retryd.admission.ratelimit import Rate


def live_members(heartbeats: Mapping[str, float], now_s: float) -> frozenset[str]:
    """The replicas whose heartbeat has not yet expired."""
    return frozenset(member for member, expires_s in heartbeats.items() if expires_s > now_s)


def stale_members(heartbeats: Mapping[str, float], now_s: float, grace_s: float) -> list[str]:
    """Replicas expired for longer than `grace_s`: their entries can go.

    The grace keeps a replica that was only slow (a long pause, a stopped VM) from
    having its fresh heartbeat removed by a replica reading an older one.
    """
    return sorted(member for member, expires_s in heartbeats.items() if expires_s + grace_s < now_s)


def share(rate: Rate, live: int) -> Rate:
    """One replica's part of `rate` when `live` replicas share it.

    The rates add up to `rate.per_s`; the bursts add up to at most `rate.burst`
    while there are no more replicas than burst tokens (each keeps at least one).
    """
    if live < 1:
        raise ValueError(f"live must be >= 1, not {live}")
    return Rate(per_s=rate.per_s / live, burst=max(1, rate.burst // live))


def start_share(rate: Rate, members: int, start_fraction: float) -> Rate:
    """A replica's part of `rate` before it has agreed on the membership.

    `members` is how many replicas the last membership it could read names (live or
    not yet removed, itself included; 1 before any reading): it takes the smaller
    of 1/`members` and `start_fraction`, so that replicas starting together on an
    empty item, each of which may have seen only itself, add up to no more than the
    rate while there are at most 1/`start_fraction` of them.
    """
    if members < 1:
        raise ValueError(f"members must be >= 1, not {members}")
    if not 0 < start_fraction <= 1:
        raise ValueError(f"start_fraction must be in (0, 1], not {start_fraction}")
    fraction = min(start_fraction, 1 / members)
    return Rate(per_s=rate.per_s * fraction, burst=max(1, math.floor(rate.burst * fraction)))


def agreed(first_beat_s: float | None, beat_s: float, agree_s: float) -> bool:
    """Whether a heartbeat landing at `beat_s` shows the membership a replica may send by.

    Replicas that start together may each see only the heartbeats written before
    their own; one written `agree_s` after its first (long enough for the others'
    first ones, and for those already running to have re-read the item and made
    room) shows them. `first_beat_s` is when its first heartbeat landed (None: this
    is the first).
    """
    return beat_s - (beat_s if first_beat_s is None else first_beat_s) >= agree_s


def yet_to_reread(
    seen: Mapping[str, float], heartbeats: Mapping[str, float], now_s: float
) -> dict[str, float]:
    """Of the replicas `seen` live with these heartbeats, those that may not count a newcomer.

    A replica writes its heartbeat and reads the whole item in one call, so one whose
    heartbeat has changed since the newcomer's first reading has read the newcomer's;
    one whose heartbeat is gone (it left) or has expired is no longer sending.
    """
    return {
        member: expires_s
        for member, expires_s in seen.items()
        if heartbeats.get(member) == expires_s and expires_s > now_s
    }


# What a replica keeps of a rate while the others may have counted it out: the
# bucket cannot be sized to nothing, so to a millionth (a token every few days).
LAPSED_FRACTION = 1e-6


def lapsed_share(rate: Rate) -> Rate:
    """A replica's part of `rate` while its heartbeat has lapsed: next to nothing.

    The others no longer count it and have taken its share, so anything it sends is
    over the rate; it keeps one token (a bucket needs one) and a trickle.
    """
    return Rate(per_s=rate.per_s * LAPSED_FRACTION, burst=1)


@dataclass(frozen=True, slots=True)
class SharedBreaker:
    """One target's breaker as the table holds it."""

    state: BreakerState  # OPEN or CLOSED; half-open is OPEN with a holder
    episode: str
    opened_at_s: float
    holder: str | None = None
    held_until_s: float = 0.0


class Step(StrEnum):
    """What a replica does about one target's breaker after reading the table."""

    KEEP = "keep"  # nothing to change
    CLOSE = "close"  # adopt CLOSED
    HOLD = "hold"  # adopt OPEN and stay so: cooling down, or another replica has the canaries
    CLAIM = "claim"  # cooled down and nobody holds the canaries: try to take them


def next_step(
    shared: SharedBreaker,
    local: BreakerState,
    *,
    me: str,
    now_s: float,
    cooldown_s: float,
) -> Step:
    """What this replica (`me`), whose breaker is `local`, does about `shared`."""
    if shared.state is BreakerState.CLOSED:
        return Step.KEEP if local is BreakerState.CLOSED else Step.CLOSE
    if now_s < shared.opened_at_s + cooldown_s:
        return Step.HOLD
    held = shared.holder is not None and shared.held_until_s > now_s
    if held and shared.holder == me:
        return Step.KEEP
    if held:
        return Step.HOLD
    return Step.CLAIM
