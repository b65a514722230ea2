"""Two DynamoDbCluster members on one moto-server table: membership, shares, breakers."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable

import pytest

from retryd.admission.breaker import BreakerState
from retryd.aws import AwsClients
from retryd.cluster.dynamodb import (
    JOIN_POLLS_PER_AGREE,
    JOIN_WAIT_AGREES,
    RELEASE_BATCH,
    STATE_KEY,
)
from retryd.ledger.dynamodb import KEY_ATTRIBUTE
from retryd.models import Target
from tests.clock_helpers import FakeClock
from tests.cluster.members import AGREE_S, BREAKER, TARGET, TTL_S, Member, on_table
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.world import ACCOUNT, REGION, World

TABLE = "retryd-ledger-cluster"


def run_pair(
    world: World,
    make_settings: SettingsFactory,
    body: Callable[[Member, Member, FakeClock], Awaitable[None]],
) -> None:

    async def pair(clients: AwsClients, wall: FakeClock) -> None:
        a = Member(clients.dynamodb, TABLE, "a", wall)
        b = Member(clients.dynamodb, TABLE, "b", wall)
        await body(a, b, wall)

    on_table(make_settings, TABLE, pair)


def test_members_count_each_other_until_a_heartbeat_expires_or_one_leaves(
    world: World, make_settings: SettingsFactory
) -> None:
    """Both live after both sync; a silent member drops out after its TTL; a leaver at once;
    the buckets follow (6/s alone, 3/s each when two)."""

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        bucket = a.rates.for_target(TARGET.arn)
        await a.cluster.sync()
        assert a.cluster.live == 1
        await b.cluster.sync()
        await a.cluster.sync()
        assert (a.cluster.live, b.cluster.live) == (2, 2)
        assert bucket.per_s == 3.0
        wall.advance(TTL_S + 1)
        await a.cluster.sync()
        assert a.cluster.live == 1
        assert bucket.per_s == 6.0
        await b.cluster.sync()
        await a.cluster.sync()
        assert a.cluster.live == 2
        await b.cluster.leave()
        await a.cluster.sync()
        assert a.cluster.live == 1

    run_pair(world, make_settings, body)


def test_syncs_within_the_gap_write_moves_but_heartbeat_once_per_gap(
    world: World, make_settings: SettingsFactory
) -> None:
    """With sync_gap_s (busy cycles back to back): the first sync heartbeats, a second at once
    does not, though a breaker it opened meanwhile is written; one a gap later heartbeats."""

    def updates() -> int:
        return sum(
            entry["headers"].get("X-Amz-Target") == "DynamoDB_20120810.UpdateItem"
            for entry in world.server.recording()
        )

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        a = Member(clients.dynamodb, TABLE, "a", wall, sync_gap_s=AGREE_S)
        b = Member(clients.dynamodb, TABLE, "b", wall)
        world.record()
        await a.cluster.sync()
        assert updates() == 1
        _fail(a)
        await a.cluster.sync()
        assert updates() == 2, "the breaker's move is written within the gap"
        await a.cluster.sync()
        assert updates() == 2, "no heartbeat within the gap"
        await b.cluster.sync()
        assert b.breakers.for_target(TARGET).state is BreakerState.OPEN
        wall.advance(AGREE_S)
        # b, joining a, wrote its heartbeat until a counted it (or its wait ran out).
        before = updates()
        await a.cluster.sync()
        assert updates() == before + 1
        assert a.cluster.live == 2

    on_table(make_settings, TABLE, body)


def _fail(member: Member) -> None:
    breaker = member.breakers.for_target(TARGET)
    while breaker.state is BreakerState.CLOSED:
        breaker.record(success=False)


@pytest.mark.parametrize("canaries_succeed", [True, False], ids=["recover", "still-broken"])
def test_a_breaker_opened_by_one_is_open_on_the_other_and_only_one_sends_canaries(
    world: World, make_settings: SettingsFactory, canaries_succeed: bool
) -> None:
    """A opens and writes; B's next sync opens B. After the cool-down exactly one claims the
    canaries; its result (closed, or open again) reaches the other at its next sync."""

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        b.breakers.for_target(TARGET)  # B has met the target, still closed
        _fail(a)
        await a.cluster.flush()
        await b.cluster.sync()
        assert b.breakers.for_target(TARGET).state is BreakerState.OPEN
        # Past the cool-down on every clock: still held open until a sync hands out canaries.
        for member in (a, b):
            member.advance(BREAKER.cooldown_s + 1)
            assert member.breakers.for_target(TARGET).permits(10) == 0
        wall.advance(BREAKER.cooldown_s + 1)
        await a.cluster.sync()
        await b.cluster.sync()
        granted = [m.breakers.for_target(TARGET).permits(10) for m in (a, b)]
        assert sorted(granted) == [0, BREAKER.half_open_calls]
        holder, other = (a, b) if granted[0] else (b, a)
        canary = holder.breakers.for_target(TARGET)
        episode = canary.episode
        for _ in range(BREAKER.half_open_calls):
            canary.record(success=canaries_succeed, episode=episode)
        await holder.cluster.flush()
        await other.cluster.sync()
        expected = BreakerState.CLOSED if canaries_succeed else BreakerState.OPEN
        assert other.breakers.for_target(TARGET).state is expected

    run_pair(world, make_settings, body)


def test_two_replicas_opening_at_once_agree_on_one_cool_down(
    world: World, make_settings: SettingsFactory
) -> None:
    """Both open before either syncs: the second write loses and adopts the first's opening."""

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        _fail(a)
        _fail(b)
        await a.cluster.flush()
        wall.advance(5)
        await b.cluster.flush()
        await b.cluster.sync()
        # B's cool-down is A's: 25 s left rather than B's own 30.
        assert b.breakers.for_target(TARGET).retry_in_s() == pytest.approx(25, abs=0.5)

    run_pair(world, make_settings, body)


def test_a_replica_that_has_not_met_the_target_adopts_its_open_breaker(
    world: World, make_settings: SettingsFactory
) -> None:
    """B has never sent to the target (a replica just started, a redrive): after its sync the
    breaker A opened is open on B too, so B's first send does not hammer a broken target."""

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        _fail(a)
        await a.cluster.flush()
        await b.cluster.sync()
        assert b.breakers.for_target(TARGET).permits(10) == 0

    run_pair(world, make_settings, body)


def test_a_breaker_held_open_is_released_when_its_entry_is_gone(
    world: World, make_settings: SettingsFactory
) -> None:
    """B holds A's opening; the item is deleted (the docs call that safe) before anyone
    claims the canaries: B's breaker does not stay open forever, but closes at its sync."""

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        _fail(a)
        await a.cluster.flush()
        await b.cluster.sync()
        breaker = b.breakers.for_target(TARGET)
        assert breaker.state is BreakerState.OPEN
        await a.cluster._client.delete_item(TableName=TABLE, Key={KEY_ATTRIBUTE: {"S": STATE_KEY}})
        await b.cluster.sync()
        b.advance(BREAKER.cooldown_s + 1)
        wall.advance(BREAKER.cooldown_s + 1)
        await b.cluster.sync()
        assert breaker.permits(10) > 0

    run_pair(world, make_settings, body)


def test_a_throttled_breaker_write_does_not_stop_the_heartbeat(
    world: World, make_settings: SettingsFactory
) -> None:
    """DynamoDB throttles A's write of an opening for longer than a heartbeat lasts: A's
    heartbeat still lands every sync, so B goes on counting A (and keeps to half the rate)."""

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        await a.cluster.sync()
        await b.cluster.sync()
        world.faults.add(Fault("dynamodb", "UpdateItem", contains="attribute_not_exists(#b)"))
        _fail(a)
        await a.cluster.flush()
        for _ in range(3):
            wall.advance(TTL_S / 2)
            await a.cluster.sync()
            await b.cluster.sync()
            assert b.cluster.live == 2
        world.faults.clear()
        await a.cluster.sync()
        await b.cluster.sync()
        assert b.breakers.for_target(TARGET).state is BreakerState.OPEN

    run_pair(world, make_settings, body)


def test_a_throttled_claim_does_not_keep_the_other_breakers_from_being_agreed(
    world: World, make_settings: SettingsFactory
) -> None:
    """One target is cooled down (B tries to claim its canaries, throttled) and another has
    just opened: B still adopts the second opening in that same sync."""
    cooled = Target.from_arn(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:aaa-cooled")
    fresh = Target.from_arn(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:zzz-fresh")

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        for target in (cooled, fresh):
            b.breakers.for_target(target)
        _fail_target(a, cooled)
        await a.cluster.flush()
        wall.advance(BREAKER.cooldown_s + 1)
        _fail_target(a, fresh)
        await a.cluster.flush()
        world.faults.add(Fault("dynamodb", "UpdateItem", contains="#b.h = :me"))
        await b.cluster.sync()
        assert b.breakers.for_target(fresh).state is BreakerState.OPEN

    run_pair(world, make_settings, body)


def _fail_target(member: Member, target: Target) -> None:
    breaker = member.breakers.for_target(target)
    while breaker.state is BreakerState.CLOSED:
        breaker.record(success=False)


def test_a_replica_that_resumes_after_a_pause_heartbeats_before_its_cycle_ends(
    world: World, make_settings: SettingsFactory
) -> None:
    """A stops mid-cycle (a frozen VM) for longer than its heartbeat and B counts it out; on
    resuming, A's flush after its next batch writes a heartbeat and learns B, so neither goes
    on sending at a share the other does not count."""

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        await a.cluster.sync()
        await b.cluster.sync()
        wall.advance(2 * TTL_S + 1)
        await b.cluster.sync()
        assert b.cluster.live == 1
        await a.cluster.flush()
        await b.cluster.sync()
        assert (a.cluster.live, b.cluster.live) == (2, 2)

    run_pair(world, make_settings, body)


def test_a_long_dead_replicas_heartbeat_is_removed_from_the_item(
    world: World, make_settings: SettingsFactory
) -> None:
    """B dies; once its heartbeat has been expired for another heartbeat's length, A's sync
    removes it from the item, so dead replicas do not pile up in it."""

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        await b.cluster.sync()
        await a.cluster.sync()
        wall.advance(2 * TTL_S + 1)
        await a.cluster.sync()
        answer = await a.cluster._client.get_item(
            TableName=TABLE, Key={KEY_ATTRIBUTE: {"S": STATE_KEY}}, ConsistentRead=True
        )
        assert sorted(name for name in answer["Item"] if name.startswith("m:")) == ["m:a"]

    run_pair(world, make_settings, body)


def test_a_replica_whose_heartbeat_is_throttled_past_its_ttl_stops_sending(
    world: World, make_settings: SettingsFactory
) -> None:
    """A's heartbeats are throttled until B counts A out and takes the whole rate: A's
    buckets then give at most one more token, and get their share back once A's heartbeat
    lands again."""

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        bucket = a.rates.for_target(TARGET.arn)
        await a.cluster.sync()
        await b.cluster.sync()
        await a.cluster.sync()
        world.faults.add(Fault("dynamodb", "UpdateItem", contains=":expires"))
        wall.advance(TTL_S / 2)
        await a.cluster.sync()
        a.advance(10)
        assert bucket.take(100) == 3  # still within its heartbeat: its share of 6/s
        wall.advance(TTL_S / 2 + 1)
        await a.cluster.sync()
        world.faults.clear()
        await b.cluster.sync()
        assert b.cluster.live == 1
        a.advance(10)
        assert bucket.take(100) <= 1
        await a.cluster.sync()
        a.advance(10)
        assert bucket.take(100) == 3

    run_pair(world, make_settings, body)


async def _claimed(a: Member, b: Member, wall: FakeClock) -> tuple[Member, Member]:
    """A opens the breaker; past the cool-down one of them claims the canaries: (holder, other)."""
    b.breakers.for_target(TARGET)
    _fail(a)
    await a.cluster.flush()
    await b.cluster.sync()
    for member in (a, b):
        member.advance(BREAKER.cooldown_s + 1)
    wall.advance(BREAKER.cooldown_s + 1)
    await a.cluster.sync()
    await b.cluster.sync()
    granted = [m.breakers.for_target(TARGET).peek(10) for m in (a, b)]
    assert sorted(granted) == [0, BREAKER.half_open_calls]
    return (a, b) if granted[0] else (b, a)


async def _item(member: Member) -> dict[str, object]:
    answer = await member.cluster._client.get_item(
        TableName=TABLE, Key={KEY_ATTRIBUTE: {"S": STATE_KEY}}, ConsistentRead=True
    )
    item: dict[str, object] = answer["Item"]
    return item


def test_a_replica_that_leaves_hands_its_canary_claim_back_at_once(
    world: World, make_settings: SettingsFactory
) -> None:
    """The canaries' holder stops cleanly: its leave hands the claim back, so the other
    claims the canaries at its next sync rather than after the claim runs out (a cool-down)."""

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        holder, other = await _claimed(a, b, wall)
        assert other.breakers.for_target(TARGET).permits(10) == 0
        await holder.cluster.leave()
        item = await _item(other)
        assert f"m:{'a' if holder is a else 'b'}" not in item
        # Not a second later on any clock: the claim is free now, not when it lapses.
        await other.cluster.sync()
        assert other.breakers.for_target(TARGET).permits(10) == BREAKER.half_open_calls

    run_pair(world, make_settings, body)


def test_a_leaver_whose_claim_was_taken_since_leaves_the_new_holders_claim_alone(
    world: World, make_settings: SettingsFactory
) -> None:
    """The holder's claim lapsed and the other took it: the leave still removes the leaver's
    heartbeat, and the new holder keeps its canaries."""

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        holder, other = await _claimed(a, b, wall)
        wall.advance(BREAKER.cooldown_s + 1)
        other.advance(BREAKER.cooldown_s + 1)
        await other.cluster.sync()
        assert other.breakers.for_target(TARGET).permits(10) == BREAKER.half_open_calls
        await holder.cluster.leave()
        item = await _item(other)
        assert f"m:{'a' if holder is a else 'b'}" not in item
        entry = item["b:" + TARGET.arn]
        assert isinstance(entry, dict)
        assert entry["M"]["h"] == {"S": "a" if other is a else "b"}

    run_pair(world, make_settings, body)


def test_a_leaver_writes_its_canaries_verdict_before_it_goes(
    world: World, make_settings: SettingsFactory
) -> None:
    """The holder's canaries succeed and it stops before its next flush: its leave writes the
    breaker closed, so the other closes at its next sync instead of sending canaries again."""

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        holder, other = await _claimed(a, b, wall)
        canary = holder.breakers.for_target(TARGET)
        assert canary.permits(10) == BREAKER.half_open_calls
        episode = canary.episode
        for _ in range(BREAKER.half_open_calls):
            canary.record(success=True, episode=episode)
        await holder.cluster.leave()
        await other.cluster.sync()
        assert other.breakers.for_target(TARGET).state is BreakerState.CLOSED

    run_pair(world, make_settings, body)


def test_a_leaver_whose_hand_back_fails_still_removes_its_heartbeat(
    world: World, make_settings: SettingsFactory
) -> None:
    """Handing the canary claim back fails for a reason other than its condition (refused as
    invalid): the leave still removes the leaver's heartbeat, the plain way."""

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        holder, other = await _claimed(a, b, wall)
        world.faults.add(
            Fault("dynamodb", "UpdateItem", code="ValidationException", contains="#h0.hx")
        )
        await holder.cluster.leave()
        world.faults.clear()
        assert f"m:{'a' if holder is a else 'b'}" not in await _item(other)

    run_pair(world, make_settings, body)


def test_a_leaver_holding_many_claims_hands_back_a_bounded_number_in_its_leave(
    world: World, make_settings: SettingsFactory
) -> None:
    """A leaver holding more claims than one expression may name (DynamoDB refuses one past
    4 KB or 300 operators; the fault stands in for it) hands back the first RELEASE_BATCH."""

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        arns = [f"{TARGET.arn}-{n:03d}" for n in range(RELEASE_BATCH + 20)]
        until = repr(wall() + 1000)
        names = {f"#b{n}": "b:" + arn for n, arn in enumerate(arns)}
        values = {
            f":v{n}": {
                "M": {
                    "s": {"S": BreakerState.OPEN.value},
                    "e": {"S": f"episode-{n}"},
                    "at": {"N": repr(wall())},
                    "h": {"S": "a"},
                    "hx": {"N": until},
                }
            }
            for n in range(len(arns))
        }
        await b.cluster._client.update_item(
            TableName=TABLE,
            Key={KEY_ATTRIBUTE: {"S": STATE_KEY}},
            UpdateExpression="SET " + ", ".join(f"#b{n} = :v{n}" for n in range(len(arns))),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )
        await a.cluster.sync()
        world.faults.add(
            Fault(
                "dynamodb",
                "UpdateItem",
                code="ValidationException",
                contains=f"#h{RELEASE_BATCH}.hx",
            )
        )
        await a.cluster.leave()
        world.faults.clear()
        item = await _item(b)
        assert "m:a" not in item
        held = [arn for arn in arns if "h" in item["b:" + arn]["M"]]  # type: ignore[index]
        assert held == sorted(arns)[RELEASE_BATCH:]

    run_pair(world, make_settings, body)


def test_replicas_starting_together_keep_to_the_rate_until_they_agree(
    world: World, make_settings: SettingsFactory
) -> None:
    """Three replicas (6/s, start share 1/4) start one after the other on an empty item: the
    first takes its start share; each later one finds the others live and sends nothing until
    they have re-read the item (every AGREE_S while they drain), so the replicas that may send
    never hold more than 6/s together; once all have agreed, 2/s each."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        sending: list[Member] = []

        def total() -> float:
            return sum(m.rates.for_target(TARGET.arn).per_s for m in sending)

        async def others_drain() -> None:
            for member in sending:
                await member.cluster.flush()
            assert total() <= 6.0

        members = [
            Member(
                clients.dynamodb,
                TABLE,
                name,
                wall,
                start_fraction=0.25,
                while_asleep=others_drain,
            )
            for name in "abc"
        ]
        for member in members:
            await member.starts()
            sending.append(member)
            assert total() <= 6.0
            if member is members[0]:
                assert total() == 1.5, "alone on an empty item: its start share"
        assert members[0].slept_s == 0, "the first found nobody to wait for"
        assert all(0 < member.slept_s <= AGREE_S * 1.25 for member in members[1:])
        wall.advance(AGREE_S)
        for member in members:
            await member.cluster.flush()
        assert [member.cluster.live for member in members] == [3] * 3
        assert [m.rates.for_target(TARGET.arn).per_s for m in members] == [2.0] * 3
        assert sum(m.rates.for_target(TARGET.arn).burst for m in members) <= 6

    on_table(make_settings, TABLE, body)


def test_a_replica_restarting_beside_a_dead_ones_heartbeat_starts_at_one_over_the_members(
    world: World, make_settings: SettingsFactory
) -> None:
    """The item still names five replicas (four, and one killed): a new one with start share 1
    takes 1/6 of the rate until it agrees, then 1/live."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        old = [Member(clients.dynamodb, TABLE, f"old-{n}", wall) for n in range(5)]
        for member in old:
            await member.cluster.sync()
        wall.advance(AGREE_S)
        for member in old[:4]:
            await member.cluster.sync()
        new = Member(clients.dynamodb, TABLE, "new", wall)
        bucket = new.rates.for_target(TARGET.arn)
        await new.cluster.sync()
        assert bucket.per_s == 1.0
        wall.advance(AGREE_S)
        await new.cluster.sync()
        assert new.cluster.live == 6
        assert bucket.per_s == 1.0

    on_table(make_settings, TABLE, body)


def test_a_newcomer_sends_nothing_until_the_running_replica_has_counted_it(
    world: World, make_settings: SettingsFactory
) -> None:
    """A runs alone at 6/s; B starts beside it. B's first sync returns only after A's flush
    after a batch (not its next cycle) has re-read the item and taken 3/s: the two never
    hold more than 6/s together, and B waits about one AGREE_S, not its bound."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        a = Member(clients.dynamodb, TABLE, "a", wall)
        a_bucket = a.rates.for_target(TARGET.arn)
        b = Member(clients.dynamodb, TABLE, "b", wall, while_asleep=a.cluster.flush)
        b_bucket = b.rates.for_target(TARGET.arn)
        await a.cluster.sync()
        wall.advance(AGREE_S)
        await a.cluster.sync()
        assert a_bucket.per_s == 6.0
        world.record()
        await b.starts()
        assert (a_bucket.per_s, b_bucket.per_s) == (3.0, 3.0)
        assert b.slept_s <= AGREE_S * 1.25
        b_calls = [
            entry["headers"].get("X-Amz-Target", "").rsplit(".", 1)[-1]
            for entry in world.server.recording()
            if b'"m:b"' in base64.b64decode(entry["body"])
            or entry["headers"].get("X-Amz-Target", "").endswith(".GetItem")
        ]
        assert b_calls.count("UpdateItem") == 1, "one heartbeat; the polls only read the item"
        assert b_calls.count("GetItem") >= 1

    on_table(make_settings, TABLE, body)


def test_a_replica_pacing_a_long_batch_counts_a_newcomer_while_it_waits_for_tokens(
    world: World, make_settings: SettingsFactory
) -> None:
    """A paces a batch at 6/s (no batch ends, so no flush after one) while B starts: A re-reads
    the membership between its grants, so it is at 3/s when B first may send."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        a = Member(clients.dynamodb, TABLE, "a", wall)
        a_bucket = a.rates.for_target(TARGET.arn)
        await a.cluster.sync()
        wall.advance(AGREE_S)
        await a.cluster.sync()
        batch = a.rates.paced(TARGET.arn, 1_000, 600.0)

        async def a_sends_one() -> None:
            await anext(batch)

        b = Member(clients.dynamodb, TABLE, "b", wall, while_asleep=a_sends_one)
        await b.starts()
        assert (a_bucket.per_s, b.rates.for_target(TARGET.arn).per_s) == (3.0, 3.0)
        await batch.aclose()

    on_table(make_settings, TABLE, body)


def test_a_newcomer_beside_a_resting_replica_waits_no_longer_than_its_bound(
    world: World, make_settings: SettingsFactory
) -> None:
    """A rests between cycles (it re-reads the item before it sends again): B waits at most
    JOIN_WAIT_AGREES x AGREE_S for it, then takes its share of two."""

    async def body(a: Member, b: Member, wall: FakeClock) -> None:
        await a.cluster.sync()
        wall.advance(AGREE_S)
        await a.cluster.sync()
        await b.starts()
        bound_s = JOIN_WAIT_AGREES * AGREE_S
        assert bound_s <= b.slept_s <= bound_s + AGREE_S / JOIN_POLLS_PER_AGREE
        assert b.cluster.live == 2
        assert b.rates.for_target(TARGET.arn).per_s == 3.0

    run_pair(world, make_settings, body)


def test_a_newcomer_whose_heartbeats_fail_while_it_waits_goes_on_at_its_start_share(
    world: World, make_settings: SettingsFactory
) -> None:
    """B's first heartbeat finds A running, then DynamoDB refuses its writes: B stops waiting
    at its bound and keeps the start share of the two members it read (it has no agreement)."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        a = Member(clients.dynamodb, TABLE, "a", wall)
        await a.cluster.sync()
        wall.advance(AGREE_S)
        await a.cluster.sync()

        async def throttled() -> None:
            if not world.faults.faults:
                world.faults.add(Fault("dynamodb", "UpdateItem", contains=":expires"))

        b = Member(clients.dynamodb, TABLE, "b", wall, while_asleep=throttled)
        await b.starts()
        world.faults.clear()
        assert b.slept_s <= JOIN_WAIT_AGREES * AGREE_S + AGREE_S / JOIN_POLLS_PER_AGREE
        assert b.rates.for_target(TARGET.arn).per_s == 3.0

    on_table(make_settings, TABLE, body)
