"""Replicas that agree, through one item of the DynamoDB ledger table.

The item `retryd-cluster/state` (beside the ledger's records, so a deployment needs
no second table, IAM grant or TTL set-up) holds an attribute per replica,
`m:<replica>` = when its heartbeat expires (unix seconds), and one per target whose
breaker has ever opened, `b:<target ARN>` = {s: open|closed, e: episode token,
at: opened (unix s), h: canary holder, hx: held until}. One UpdateItem per cycle
writes this replica's heartbeat and returns the whole item (ReturnValues ALL_NEW),
so learning the membership and every breaker costs one call, whatever the number
of messages. Breaker moves are conditional writes on the episode token, so of two
replicas acting on the same reading only one lands; the other adopts the winner's.
Times in the item are on DynamoDB's clock (the Date header of each heartbeat's
answer), not on any replica's own.

The item stays small (DynamoDB caps an item at 400 KB, and every heartbeat writes,
and is billed for, the whole item): an entry that has stayed closed with the same
episode for a heartbeat's length (`member_ttl_s`, by which every live replica has
read it) is removed, conditionally on that episode; and at most MAX_BREAKER_ENTRIES
targets have an entry. A breaker that opens while the item is at that bound is not
shared: its replica runs it on its own (its own cool-down and canaries, as a single
replica would), and the other replicas open theirs on their own failures.

Conditional updates: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Expressions.ConditionExpressions.html
ReturnValues: https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_UpdateItem.html
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from retryd.admission.breaker import Breakers, BreakerState, CircuitBreaker
from retryd.admission.ratelimit import Rate, RateLimits
from retryd.classify import from_exception
from retryd.cluster.agree import (
    SharedBreaker,
    Step,
    agreed,
    lapsed_share,
    live_members,
    next_step,
    share,
    stale_members,
    start_share,
    yet_to_reread,
)
from retryd.ledger.dynamodb import KEY_ATTRIBUTE
from retryd.models import Target

if TYPE_CHECKING:
    # A type only: importing retryd.aws (aioboto3, a quarter of a second) here cost
    # `retryd config check`, which reaches this module through retryd.cluster's
    # re-exports, that much for a client it never opens.
    from retryd.aws import Client

log = structlog.get_logger("retryd.cluster")

STATE_KEY = "retryd-cluster/state"
MEMBER_PREFIX = "m:"
BREAKER_PREFIX = "b:"
_CONDITION_FAILED = "ConditionalCheckFailedException"
# At most this many targets have an entry: about 190 bytes each with a typical Lambda
# ARN and about 420 with the longest (an event bus of 256 characters), by DynamoDB's
# item-size rules, so 90 KB to 205 KB of the 400 KB an item may hold, leaving room for
# thousands of replicas' heartbeats (about 60 bytes each).
MAX_BREAKER_ENTRIES = 500
# Idle entries removed per call (its condition names each one's episode).
PRUNE_BATCH = 100
# Canary claims a leave hands back in its one call: each adds about 50 bytes and four
# operators, and DynamoDB refuses an expression past 4 KB or 300 operators
# (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Constraints.html).
# Any claims beyond lapse as they would have.
RELEASE_BATCH = 40
_FAILURES = (BotoCoreError, ClientError)
# How often a replica re-reads the membership while it drains (after a batch, or
# while it waits for tokens, once this long has passed since its last heartbeat),
# and how long a replica that has just started keeps its start share: by then the
# replicas that started with it have written their first heartbeats, and those
# already running have re-read the item and made room for it. Short, because a
# start share costs throughput (a lone replica at a quarter of 5/s for 2 s sends 7
# messages fewer); cheap, because it is one small UpdateItem. A quarter of the
# heartbeat's length when that is shorter.
AGREE_S = 2.0
# A replica that finds others already sending at its first heartbeat waits, before its
# first receive, until each of them has re-read the item (and so counts it and has
# made room), polling this many times per AGREE_S; at most JOIN_WAIT_AGREES * AGREE_S.
# Those that drain re-read within AGREE_S of their last heartbeat (after a batch, or
# while waiting for tokens); one that does not within twice that is resting between
# cycles, and reads the item again before it sends.
JOIN_POLLS_PER_AGREE = 4
JOIN_WAIT_AGREES = 2


def server_time(answer: Mapping[str, Any]) -> float | None:
    """The time (unix seconds, whole) in an answer's Date header; None without a usable one.

    Every replica reads the same clock this way, whatever its own says: heartbeats,
    openings and claims are all compared in it.
    """
    headers = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    try:
        return parsedate_to_datetime(headers["date"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def _new_episode() -> str:
    return uuid.uuid4().hex


def parse_breaker(value: dict[str, Any]) -> SharedBreaker | None:
    fields = value.get("M", {})
    try:
        state = BreakerState(fields["s"]["S"])
        return SharedBreaker(
            state=state,
            episode=fields["e"]["S"],
            opened_at_s=float(fields.get("at", {"N": "0"})["N"]),
            holder=fields["h"]["S"] if "h" in fields else None,
            held_until_s=float(fields.get("hx", {"N": "0"})["N"]),
        )
    except (KeyError, ValueError):
        # Written by a later version, or by hand: not a reason to stop agreeing on the rest.
        return None


@dataclass(frozen=True, slots=True)
class _Move:
    """A move of this replica's breaker not yet written: to OPEN or to CLOSED."""

    state: BreakerState
    at_s: float


class DynamoDbCluster:
    """Membership, shared rate budgets and shared breakers on the ledger table."""

    def __init__(
        self,
        client: Client,
        table: str,
        *,
        breakers: Breakers,
        rates: RateLimits,
        cooldown_s: float,
        member_ttl_s: float,
        me: str,
        start_fraction: float = 1.0,
        agree_s: float | None = None,
        sync_gap_s: float = 0.0,
        wall_s: Callable[[], float] = time.time,
        monotonic_s: Callable[[], float] = anyio.current_time,
        server_s: Callable[[Mapping[str, Any]], float | None] = server_time,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        """`wall_s` and `sleep` must agree (the host's in retryd; a fake clock's in tests)."""
        self._client = client
        self._table = table
        self._breakers = breakers
        self._rates = rates
        self._cooldown_s = cooldown_s
        self._member_ttl_s = member_ttl_s
        self._me = me
        self._start_fraction = start_fraction
        self._agree_s = min(AGREE_S, member_ttl_s / 4) if agree_s is None else agree_s
        self._join_wait_s = JOIN_WAIT_AGREES * self._agree_s
        # A sync within this long of the last heartbeat writes only what moved: busy cycles
        # follow each other at once (schedule.busy_interval_s), several a second on a DLQ
        # that keeps filling, and one item takes at most 1,000 write units a second across
        # every replica; membership needs a heartbeat per agree_s, not one per cycle.
        self._sync_gap_s = min(sync_gap_s, self._agree_s)
        self._wall_s = wall_s
        self._monotonic_s = monotonic_s
        self._server_s = server_s
        self._sleep = sleep
        # The table's clock minus this host's, as of the last heartbeat's answer: a
        # replica whose clock is off by more than a heartbeat would otherwise find the
        # others' heartbeats expired (and remove them), or take an opening for an old one.
        self._offset_s = 0.0
        self._live = 1
        # Set while this replica's heartbeat may have expired in the table (its writes
        # failed for a heartbeat's length): its buckets then hold next to nothing.
        self._lapsed = False
        # When this replica's last heartbeat landed (wall seconds; never, at first).
        self._beat_at_s = wall_s()
        # Set while a heartbeat is in flight: batches waiting for tokens wake together and
        # each flushes; one re-read is enough (and two would agree on the breakers at once).
        self._beating = False
        # When its first one landed (table seconds), and whether one since has shown
        # the membership it may send by: until then it keeps its start share.
        self._first_beat_s: float | None = None
        self._agreed = False
        # The replicas live at its first reading, each with the heartbeat it had then,
        # that have not yet written another (so may not count this one): while any is
        # left, this one joined running replicas and has not been made room for.
        self._not_yet_counted_by: dict[str, float] = {}
        # Whether its first sync has waited to be counted (it waits once, then sends).
        self._joined = False
        # The episode token of each target's shared breaker as this replica last wrote or read it.
        self._seen: dict[str, str] = {}
        self._pending: dict[str, _Move] = {}
        self._adopting = False
        # Per target with a closed entry: its episode, and since when (monotonic) this
        # replica has read it unchanged; past `member_ttl_s` the entry may go.
        self._closed_since: dict[str, tuple[str, float]] = {}
        # The targets with an entry at the last reading (so: whether a new one fits).
        self._entries: set[str] = set()
        # The breakers whose half-open canaries this replica holds, with the episode of
        # its claim: handed back when it leaves, so the others need not wait out the claim.
        self._holding: dict[str, str] = {}
        # Until it has agreed on the membership, the most conservative share (the
        # replicas that start with it may not have written their heartbeats yet); its
        # buckets start empty (see RateLimits), so it adds no burst to the total.
        rates.reshare(lambda rate: start_share(rate, 1, start_fraction))
        # A batch waiting for tokens re-reads the membership when it is due, so a replica
        # that joins is counted within AGREE_S even while this one paces a long batch.
        rates.while_waiting(self.flush)
        breakers.listen(self._heard)
        log.info("cluster-joining", replica=me, table=table, member_ttl_s=member_ttl_s)

    @property
    def live(self) -> int:
        return self._live

    def _heard(
        self, target: Target, breaker: CircuitBreaker, old: BreakerState, new: BreakerState
    ) -> None:
        if self._adopting or new is BreakerState.HALF_OPEN:
            # Adopted moves came from the table; half-open is handed out by claims.
            return
        if new is BreakerState.OPEN:
            # Its cool-down ends in a claim at a sync, not on its own: otherwise each
            # replica would send its own canaries.
            breaker.adopt_open(breaker.opened_at, held_elsewhere=True)
        self._pending[target.arn] = _Move(new, self._now_s())

    def _now_s(self) -> float:
        """The time on the table's clock, as this host's clock and the last offset tell."""
        return self._wall_s() + self._offset_s

    # -- calls --------------------------------------------------------------------------

    def _key(self) -> dict[str, Any]:
        return {KEY_ATTRIBUTE: {"S": STATE_KEY}}

    async def _update(self, **kwargs: Any) -> dict[str, Any]:
        answer: dict[str, Any] = await self._client.update_item(
            TableName=self._table, Key=self._key(), **kwargs
        )
        return answer

    async def _conditional(self, **kwargs: Any) -> bool:
        """A conditional update: False when its condition did not hold."""
        try:
            await self._update(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == _CONDITION_FAILED:
                return False
            raise
        return True

    async def _push(self, arn: str, move: _Move) -> None:
        if move.state is BreakerState.OPEN and self._full(arn):
            self._keep_local(arn)
            return
        episode = _new_episode()
        names = {"#b": BREAKER_PREFIX + arn}
        if move.state is BreakerState.OPEN:
            # Anyone may open a closed breaker; an open one only in the episode it knows
            # (its own canaries failed), or two replicas would each start a cool-down.
            values: dict[str, Any] = {
                ":v": {
                    "M": {
                        "s": {"S": BreakerState.OPEN.value},
                        "e": {"S": episode},
                        "at": {"N": repr(move.at_s)},
                    }
                },
                ":closed": {"S": BreakerState.CLOSED.value},
                ":seen": {"S": self._seen.get(arn, "")},
            }
            condition = "attribute_not_exists(#b) OR #b.s = :closed OR #b.e = :seen"
        else:
            # Only the canaries' holder, in its episode, closes a shared breaker.
            values = {
                ":v": {"M": {"s": {"S": BreakerState.CLOSED.value}, "e": {"S": episode}}},
                ":seen": {"S": self._seen.get(arn, "")},
                ":me": {"S": self._me},
            }
            condition = "#b.e = :seen AND #b.h = :me"
        landed = await self._conditional(
            UpdateExpression="SET #b = :v",
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
        if landed:
            self._seen[arn] = episode
            self._entries.add(arn)
            # The entry was written whole, with no holder.
            self._holding.pop(arn, None)
            log.info("cluster-breaker-written", target=arn, state=move.state.value)

    def _full(self, arn: str) -> bool:
        """Whether a new entry for `arn` would take the item past MAX_BREAKER_ENTRIES."""
        return arn not in self._entries and len(self._entries) >= MAX_BREAKER_ENTRIES

    def _keep_local(self, arn: str) -> None:
        """The item is full: this replica runs the breaker on its own, as a single replica."""
        breaker = self._breakers.known(arn)
        if breaker is None:
            return
        self._adopt(breaker, open_at=breaker.opened_at, held=False)
        log.warning(
            "cluster-breakers-full",
            target=arn,
            entries=len(self._entries),
            bound=MAX_BREAKER_ENTRIES,
            why="not shared: this replica runs this breaker on its own until an entry is free",
        )

    async def _claim(self, arn: str, shared: SharedBreaker, now_s: float) -> bool:
        episode = _new_episode()
        landed = await self._conditional(
            UpdateExpression="SET #b.h = :me, #b.hx = :until, #b.e = :new",
            ConditionExpression="#b.e = :seen",
            ExpressionAttributeNames={"#b": BREAKER_PREFIX + arn},
            ExpressionAttributeValues={
                ":me": {"S": self._me},
                # Another cool-down to send the canaries and hear back; past it the
                # canaries go to whoever claims next (this replica may have died).
                ":until": {"N": repr(now_s + self._cooldown_s)},
                ":new": {"S": episode},
                ":seen": {"S": shared.episode},
            },
        )
        if landed:
            self._seen[arn] = episode
            self._holding[arn] = episode
            log.info("cluster-canaries-claimed", target=arn, replica=self._me)
        return landed

    async def _heartbeat(self, now_s: float) -> dict[str, Any]:
        answer = await self._update(
            UpdateExpression="SET #me = :expires",
            ExpressionAttributeNames={"#me": MEMBER_PREFIX + self._me},
            ExpressionAttributeValues={":expires": {"N": repr(now_s + self._member_ttl_s)}},
            ReturnValues="ALL_NEW",
        )
        self._learn_offset(answer)
        attributes: dict[str, Any] = answer.get("Attributes", {})
        return attributes

    def _learn_offset(self, answer: Mapping[str, Any]) -> None:
        """The table's clock minus this host's, from an answer's Date header."""
        told = self._server_s(answer)
        if told is not None:
            offset_s = told - self._wall_s()
            if abs(offset_s - self._offset_s) > self._member_ttl_s / 4:
                log.warning(
                    "cluster-clock-offset",
                    offset_s=round(offset_s, 1),
                    replica=self._me,
                    why="this host's clock is not DynamoDB's; the cluster uses DynamoDB's",
                )
            self._offset_s = offset_s

    # -- the protocol -------------------------------------------------------------------

    async def flush(self) -> None:
        await self._write_moves()
        if not self._beating and self._wall_s() - self._beat_at_s >= self._agree_s:
            # A cycle can last minutes: re-read the membership within it, so that a
            # replica that joined or left is counted in seconds, not at the next cycle,
            # and one that has just started reaches its full share once agreed. Also
            # what a replica that was stopped within a cycle (a frozen VM, a long pause)
            # needs: the others may have counted it out and taken its share.
            await self._beat()

    async def _write_moves(self) -> None:
        try:
            await self._flush()
        except _FAILURES as exc:
            log.warning("cluster-write-failed", error=str(from_exception(exc)))

    async def _flush(self) -> None:
        while self._pending:
            arn, move = next(iter(self._pending.items()))
            await self._push(arn, move)
            # Dropped even when it did not land: the table's state wins, adopted at sync.
            if self._pending.get(arn) == move:
                del self._pending[arn]

    async def sync(self) -> None:
        # A move that cannot be written now (throttled) is kept for the next try; the
        # heartbeat must not wait for it, or the others would count this replica out
        # and take its share while it still sends at it.
        await self._write_moves()
        if self._first_beat_s is None or self._wall_s() - self._beat_at_s >= self._sync_gap_s:
            await self._beat()

    async def join(self) -> None:
        """Joining replicas that are already sending: wait until they have counted this one.

        Until each has re-read the item, they hold the whole rate between them, so
        anything this one sent (even at its start share) would be on top. Also while
        it has no reading yet (its first heartbeat failed): it may find others. Once,
        at its first sync, and bounded: a replica that does not re-read within
        JOIN_WAIT_AGREES * AGREE_S is not sending, and if the heartbeats fail meanwhile
        this one goes on at its start share, as before it had a reading. Timed on the
        loop's clock (`sleep`'s), which a step of the host's clock does not move.
        """
        if self._joined:
            return
        self._joined = True
        started_s = self._monotonic_s()
        poll_s = self._agree_s / JOIN_POLLS_PER_AGREE
        logged = False
        while not self._agreed and (self._first_beat_s is None or self._not_yet_counted_by):
            if self._not_yet_counted_by and not logged:
                logged = True
                log.info(
                    "cluster-waiting-to-be-counted",
                    replica=self._me,
                    running=sorted(self._not_yet_counted_by),
                    why="replicas already sending hold the whole rate until they re-read the "
                    "membership",
                )
            if self._monotonic_s() - started_s >= self._join_wait_s:
                return
            await self._sleep(poll_s)
            if self._first_beat_s is None:
                await self._beat()
            else:
                # Its heartbeat is written: reading is enough, and a read does not take
                # from the item's write budget (every write rewrites the whole item).
                await self._look()

    async def _look(self) -> None:
        """Read the item (strongly consistent) and agree on it, writing nothing of its own."""
        try:
            answer = await self._client.get_item(
                TableName=self._table, Key=self._key(), ConsistentRead=True
            )
            self._learn_offset(answer)
            await self._agree(answer.get("Item", {}), self._now_s())
        except _FAILURES as exc:
            log.warning("cluster-sync-failed", error=str(from_exception(exc)))

    async def _beat(self) -> None:
        self._beating = True
        try:
            await self._beat_once()
        finally:
            self._beating = False

    async def _beat_once(self) -> None:
        try:
            try:
                item = await self._heartbeat(self._now_s())
            except anyio.get_cancelled_exc_class():
                self._hold_until_heard()
                raise
            self._beat_at_s = self._wall_s()
            await self._agree(item, self._now_s())
        except _FAILURES as exc:
            # The last agreement stands: budgets as shared, breakers as they are...
            log.warning("cluster-sync-failed", error=str(from_exception(exc)))
            if not self._lapsed and self._wall_s() - self._beat_at_s >= self._member_ttl_s:
                # ...until the heartbeat written last has expired: the others have
                # counted this replica out and taken its share.
                self._hold_back()
                log.warning(
                    "cluster-heartbeat-lapsed",
                    replica=self._me,
                    why="no heartbeat landed for a heartbeat's length; not sending until one does",
                )

    def _hold_until_heard(self) -> None:
        """A heartbeat cut off with its request out (a batch's deadline, a stop).

        It may have landed: a newcomer that reads it takes it as this replica having
        counted it, though this one never read the answer. So next to nothing is sent
        until a heartbeat is heard; the next flush point (after the batch, or the next
        wait for tokens) writes one at once, as this one did not count as written.
        """
        self._hold_back()
        log.info(
            "cluster-heartbeat-unheard",
            replica=self._me,
            why="a heartbeat was cut off with its request out; holding back until one is heard",
        )

    def _hold_back(self) -> None:
        """Next to nothing until a heartbeat is heard: the others may hold this one's share."""
        self._lapsed = True
        self._rates.reshare(lapsed_share)

    async def _agree(self, item: dict[str, Any], now_s: float) -> None:
        stale = self._agree_members(item, now_s)
        idle = await self._agree_breakers(item, now_s)
        self._release_orphans()
        if stale:
            await self._remove_stale(stale)
        if idle:
            await self._prune(idle)

    def _agree_members(self, item: dict[str, Any], now_s: float) -> dict[str, str]:
        """Count the live replicas and reshare; the long-expired heartbeats, as read."""
        heartbeats = {
            name[len(MEMBER_PREFIX) :]: float(value["N"])
            for name, value in item.items()
            if name.startswith(MEMBER_PREFIX) and "N" in value
        }
        live = max(1, len(live_members(heartbeats, now_s) | {self._me}))
        was_agreed = self._agreed
        if self._first_beat_s is None and heartbeats.get(self._me, now_s) <= now_s:
            # Written before this host knew the table's clock, and already expired by it
            # (a host clock behind by more than a heartbeat): the others do not count this
            # one, so their next heartbeats say nothing about it. The next, written on
            # the table's clock, is its first.
            self._agreed = False
        elif self._first_beat_s is None:
            self._not_yet_counted_by = {
                member: expires_s
                for member, expires_s in heartbeats.items()
                if member != self._me and expires_s > now_s
            }
            self._agreed = agreed(None, now_s, self._agree_s)
            self._first_beat_s = now_s
        elif self._not_yet_counted_by:
            self._not_yet_counted_by = yet_to_reread(self._not_yet_counted_by, heartbeats, now_s)
            self._agreed = was_agreed or (
                not self._not_yet_counted_by or agreed(self._first_beat_s, now_s, self._join_wait_s)
            )
        else:
            self._agreed = was_agreed or agreed(self._first_beat_s, now_s, self._agree_s)
        if not self._agreed:
            # Every replica the item still names (a dead one's heartbeat too) may be sending.
            members = len(set(heartbeats) | {self._me})
            log.info(
                "cluster-starting",
                live=live,
                members=members,
                start_share=self._start_fraction,
                replica=self._me,
                why="not yet agreed on the membership: at most the start share of each rate",
            )
            self._live = live
            self._lapsed = False
            self._rates.reshare(lambda rate: start_share(rate, members, self._start_fraction))
        elif live != self._live or self._lapsed or not was_agreed:
            log.info("cluster-members", live=live, was=self._live, replica=self._me)
            self._live = live
            self._lapsed = False
            self._rates.reshare(lambda rate: _share_of(rate, live))
        return {
            member: item[MEMBER_PREFIX + member]["N"]
            for member in stale_members(heartbeats, now_s, self._member_ttl_s)
            if member != self._me
        }

    async def _agree_breakers(self, item: dict[str, Any], now_s: float) -> dict[str, str]:
        """Agree on every entry's breaker; the idle closed entries, with their episodes."""
        self._entries = set()
        # As the table says; a claim that lands below adds its own.
        self._holding = {}
        idle: dict[str, str] = {}
        for name, value in item.items():
            if not name.startswith(BREAKER_PREFIX):
                continue
            shared = parse_breaker(value)
            arn = name[len(BREAKER_PREFIX) :]
            self._entries.add(arn)
            if shared is None:
                continue
            if shared.state is BreakerState.OPEN and shared.holder == self._me:
                self._holding[arn] = shared.episode
            if self._idle(arn, shared):
                idle[arn] = shared.episode
            breaker = None if arn in self._pending else self._breaker(arn, shared)
            if breaker is None:
                continue
            try:
                await self._agree_breaker(arn, breaker, shared, now_s)
            except _FAILURES as exc:
                # A claim that failed (throttled) is tried again next sync; the other
                # breakers are still agreed on now.
                log.warning("cluster-claim-failed", target=arn, error=str(from_exception(exc)))
        self._closed_since = {
            arn: since for arn, since in self._closed_since.items() if arn in self._entries
        }
        return idle

    async def _remove_stale(self, stale: dict[str, str]) -> None:
        """Remove long-expired heartbeats, each only if it is still the one read.

        A replica that was stopped for a long while and has just heartbeaten again
        keeps its fresh heartbeat: removing it would have the others count it out for
        a cycle while it sends at its share.
        """
        names = {f"#x{n}": MEMBER_PREFIX + member for n, member in enumerate(sorted(stale))}
        values = {f":x{name[2:]}": {"N": stale[attribute[2:]]} for name, attribute in names.items()}
        landed = await self._conditional(
            UpdateExpression="REMOVE " + ", ".join(names),
            ConditionExpression=" AND ".join(f"{name} = :x{name[2:]}" for name in names),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
        if landed:
            log.info("cluster-members-removed", members=sorted(stale), replica=self._me)

    def _release_orphans(self) -> None:
        """Breakers held open for an entry that is gone run on their own again.

        Gone means pruned (closed, while this replica could not read the item) or the
        item deleted: either way nobody will hand out its canaries. Released, the
        breaker's own cool-down leads to its own canaries rather than to closing blind.
        """
        for arn in self._breakers.states():
            breaker = self._breakers.known(arn)
            if (
                breaker is None
                or not breaker.held_elsewhere
                or arn in self._entries
                or arn in self._pending
            ):
                continue
            self._seen.pop(arn, None)
            self._adopt(breaker, open_at=breaker.opened_at, held=False)
            log.info("cluster-breaker-released", target=arn, why="its entry is gone")

    def _idle(self, arn: str, shared: SharedBreaker) -> bool:
        """Whether `arn`'s entry has been read closed, unchanged, for a heartbeat's length."""
        if shared.state is not BreakerState.CLOSED:
            self._closed_since.pop(arn, None)
            return False
        now_s = self._monotonic_s()
        episode, since_s = self._closed_since.get(arn, ("", now_s))
        if episode != shared.episode:
            self._closed_since[arn] = (shared.episode, now_s)
            return False
        return now_s - since_s >= self._member_ttl_s

    async def _prune(self, idle: dict[str, str]) -> None:
        """Remove idle closed entries, each only if still in the episode read (in batches)."""
        arns = sorted(idle)
        for start in range(0, len(arns), PRUNE_BATCH):
            batch = arns[start : start + PRUNE_BATCH]
            names = {f"#p{n}": BREAKER_PREFIX + arn for n, arn in enumerate(batch)}
            values = {f":p{n}": {"S": idle[arn]} for n, arn in enumerate(batch)}
            landed = await self._conditional(
                UpdateExpression="REMOVE " + ", ".join(names),
                ConditionExpression=" AND ".join(f"{name}.e = :p{name[2:]}" for name in names),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
            if not landed:
                # One of them moved since it was read: all are looked at again next sync.
                continue
            for arn in batch:
                self._entries.discard(arn)
                self._closed_since.pop(arn, None)
                self._seen.pop(arn, None)
            log.info("cluster-breakers-pruned", entries=len(batch), left=len(self._entries))

    def _breaker(self, arn: str, shared: SharedBreaker) -> CircuitBreaker | None:
        """This replica's breaker for `arn`; made now if the target is open and not yet met.

        A replica that has not sent to a target yet (one just started, a redrive job)
        must find it open before its first send, not after opening its own.
        """
        breaker = self._breakers.known(arn)
        if breaker is not None or shared.state is not BreakerState.OPEN:
            return breaker
        try:
            target = Target.from_arn(arn)
        except ValueError:
            return None
        return self._breakers.for_target(target)

    async def _agree_breaker(
        self, arn: str, breaker: CircuitBreaker, shared: SharedBreaker, now_s: float
    ) -> None:
        step = next_step(
            shared, breaker.state, me=self._me, now_s=now_s, cooldown_s=self._cooldown_s
        )
        if step is Step.CLAIM and await self._claim(arn, shared, now_s):
            # Cooled down as of now on this breaker's clock: its next read is half-open.
            self._adopt(breaker, open_at=self._monotonic_s() - self._cooldown_s, held=False)
            return
        if step is Step.KEEP:
            self._seen[arn] = shared.episode
            return
        self._seen[arn] = shared.episode
        if step is Step.CLOSE or shared.state is BreakerState.CLOSED:
            self._adopt(breaker, open_at=None, held=False)
            return
        opened_at = self._monotonic_s() - max(0.0, now_s - shared.opened_at_s)
        self._adopt(breaker, open_at=opened_at, held=True)

    def _adopt(self, breaker: CircuitBreaker, *, open_at: float | None, held: bool) -> None:
        self._adopting = True
        try:
            if open_at is None:
                breaker.adopt_closed()
            else:
                breaker.adopt_open(open_at, held_elsewhere=held)
        finally:
            self._adopting = False

    async def leave(self) -> None:
        # Canaries that came back since the last flush: their verdict is written first
        # (a breaker written whole is no longer held by anyone).
        if self._pending:
            await self._write_moves()
        released: list[str] = []
        if self._holding:
            try:
                released = await self._leave_releasing()
            except _FAILURES as exc:
                # Refused for more than its condition (throttled, or past an expression
                # limit): the claims lapse as before, but the heartbeat must still go, or
                # the others keep this replica's rate share until its TTL.
                log.warning("cluster-canaries-not-released", error=str(from_exception(exc)))
        try:
            if not released:
                await self._update(
                    UpdateExpression="REMOVE #me",
                    ExpressionAttributeNames={"#me": MEMBER_PREFIX + self._me},
                )
        except _FAILURES as exc:
            log.warning("cluster-leave-failed", error=str(from_exception(exc)))
        else:
            log.info("cluster-left", replica=self._me, canaries_released=released)

    async def _leave_releasing(self) -> list[str]:
        """Leave, handing back the canary claims still ours (up to RELEASE_BATCH), in one call.

        Otherwise the others would wait out the claim (up to a cool-down) before one
        of them could send the canaries. Handed back means no holder: the next
        replica to sync claims them. The condition names each claim's holder and
        episode, so a claim that has lapsed and been taken since is left alone; then
        nothing is handed back and the caller leaves the plain way. The targets
        handed back; [] when that condition did not hold.
        """
        arns = sorted(self._holding)[:RELEASE_BATCH]
        names = {"#me": MEMBER_PREFIX + self._me}
        values: dict[str, Any] = {":me": {"S": self._me}}
        conditions = []
        for n, arn in enumerate(arns):
            names[f"#h{n}"] = BREAKER_PREFIX + arn
            values[f":h{n}"] = {"S": self._holding[arn]}
            conditions.append(f"#h{n}.h = :me AND #h{n}.e = :h{n}")
        landed = await self._conditional(
            UpdateExpression="REMOVE #me, "
            + ", ".join(f"#h{n}.h, #h{n}.hx" for n in range(len(arns))),
            ConditionExpression=" AND ".join(conditions),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
        if not landed:
            log.info(
                "cluster-canaries-not-released",
                targets=arns,
                why="a claim lapsed and was taken since this replica read it",
            )
            return []
        for arn in arns:
            del self._holding[arn]
        return arns


def _share_of(rate: Rate, live: int) -> Rate:
    return share(rate, live)
