"""A joiner's wait and the re-reads while pacing, in the ways a review found them wrong.

Each test is one defect the adversarial review of issue 23's first version (f094db3)
found, and failed on it: overlapping flushes writing a heartbeat each and undoing a
claim, a failed first heartbeat skipping the wait, a wait repeated at every sync, a
host clock step cutting it short, a host clock behind by more than a heartbeat, a
re-read cut short taken as room made. Against the moto server on fake clocks, as
tests/cluster/test_dynamodb.py does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from retryd.admission.breaker import Breakers, BreakerState
from retryd.admission.ratelimit import RateLimits
from retryd.aws import AwsClients
from retryd.cluster.dynamodb import BREAKER_PREFIX, JOIN_WAIT_AGREES, STATE_KEY, DynamoDbCluster
from retryd.ledger.dynamodb import KEY_ATTRIBUTE
from retryd.settings import RateLimitSettings
from tests.clock_helpers import FakeClock
from tests.cluster.members import AGREE_S, BREAKER, TARGET, TTL_S, Member, on_table
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.world import World

TABLE = "retryd-ledger-join-review"
# The production default of rate_limit.start_share.
START_SHARE = 0.25


def _heartbeats(world: World) -> int:
    """UpdateItems recorded since world.record() (every one here is a heartbeat)."""
    return sum(
        entry["headers"].get("X-Amz-Target") == "DynamoDB_20120810.UpdateItem"
        for entry in world.server.recording()
    )


def _per_s(*members: Member) -> float:
    return sum(member.rates.for_target(TARGET.arn).per_s for member in members)


def _newcomer(
    clients: AwsClients,
    wall: FakeClock,
    while_asleep: Callable[[], Awaitable[None]],
    *,
    name: str = "b",
    skew_s: float = 0.0,
) -> Member:
    """A replica joining at the production start share; `while_asleep` is what the others
    do while it waits."""
    return Member(
        clients.dynamodb,
        TABLE,
        name,
        wall,
        skew_s=skew_s,
        start_fraction=START_SHARE,
        while_asleep=while_asleep,
    )


async def _running(clients: AwsClients, wall: FakeClock) -> Member:
    """A, alone and agreed, at the whole 6/s; its last heartbeat just now."""
    a = Member(clients.dynamodb, TABLE, "a", wall, start_fraction=START_SHARE)
    await a.cluster.sync()
    wall.advance(AGREE_S)
    await a.cluster.sync()
    assert _per_s(a) == 6.0
    return a


def test_many_batches_waiting_for_tokens_at_once_write_one_heartbeat_not_one_each(
    world: World, make_settings: SettingsFactory
) -> None:
    """Eight batches waking together from a wait for tokens each flush when the re-read is
    due: one heartbeat is written, not eight (each rewrites the whole item, whose 1,000
    write units a second every replica shares)."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        a = await _running(clients, wall)
        wall.advance(AGREE_S)
        world.record()
        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(a.cluster.flush)
        assert _heartbeats(world) == 1

    on_table(make_settings, TABLE, body)


def test_a_claim_won_by_one_of_two_overlapping_flushes_is_not_undone_by_the_other(
    world: World, make_settings: SettingsFactory
) -> None:
    """B opened the shared breaker and left; past the cool-down two of A's batches flush at
    once: the canary claim one of them lands stays A's (its breaker half-open, so the
    canaries go), not undone by the other reading the entry as held elsewhere."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        a = Member(clients.dynamodb, TABLE, "a", wall)
        b = Member(clients.dynamodb, TABLE, "b", wall)
        await b.starts()
        breaker_b = b.breakers.for_target(TARGET)
        while breaker_b.state is BreakerState.CLOSED:
            breaker_b.record(success=False)
        await b.cluster.flush()
        await b.cluster.leave()
        await a.cluster.sync()
        breaker = a.breakers.for_target(TARGET)
        assert breaker.state is BreakerState.OPEN
        assert breaker.held_elsewhere
        wall.advance(BREAKER.cooldown_s + 1)
        a.advance(BREAKER.cooldown_s + 1)
        async with anyio.create_task_group() as group:
            for _ in range(2):
                group.start_soon(a.cluster.flush)
        item = await clients.dynamodb.get_item(
            TableName=TABLE, Key={KEY_ATTRIBUTE: {"S": STATE_KEY}}, ConsistentRead=True
        )
        entry = item["Item"][BREAKER_PREFIX + TARGET.arn]["M"]
        assert entry["h"]["S"] == "a", "A holds the canaries in the table"
        assert not breaker.held_elsewhere, "so A's breaker must let them through"
        assert breaker.state is BreakerState.HALF_OPEN

    on_table(make_settings, TABLE, body)


def test_a_newcomer_whose_first_heartbeat_fails_does_not_send_on_top_of_the_running_replica(
    world: World, make_settings: SettingsFactory
) -> None:
    """A runs alone at 6/s; B's first heartbeat is throttled once, so B has no reading yet:
    it polls until it has one and waits for A to count it, and the two never hold more
    than 6/s."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        a = await _running(clients, wall)
        world.faults.add(Fault("dynamodb", "UpdateItem", contains=":expires", times=1))
        b = _newcomer(clients, wall, a.cluster.flush)
        await b.starts()
        world.faults.clear()
        assert _per_s(a, b) <= 6.0, (
            f"A at {_per_s(a)}/s, B at {_per_s(b)}/s after B's first sync (slept {b.slept_s} s)"
        )

    on_table(make_settings, TABLE, body)


def test_a_newcomer_whose_heartbeats_keep_failing_waits_once_not_at_every_sync(
    world: World, make_settings: SettingsFactory
) -> None:
    """B finds A running, then DynamoDB throttles its heartbeats: its first start waits out
    the bound (then its start share); a later one (the next cycle, a redrive's next step)
    does not wait again, and writes at most one heartbeat."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        await _running(clients, wall)

        async def throttled() -> None:
            if not world.faults.faults:
                world.faults.add(Fault("dynamodb", "UpdateItem", contains=":expires"))

        b = _newcomer(clients, wall, throttled)
        await b.starts()
        first_s = b.slept_s
        assert first_s >= JOIN_WAIT_AGREES * AGREE_S
        wall.advance(AGREE_S)
        world.record()
        await b.starts()
        assert b.slept_s == first_s, f"the next sync waited {b.slept_s - first_s} s more"
        assert _heartbeats(world) <= 1

    on_table(make_settings, TABLE, body)


def test_a_host_clock_stepping_forward_does_not_cut_a_newcomers_wait_short(
    world: World, make_settings: SettingsFactory
) -> None:
    """B's host clock steps 5 s forward (NTP) during its first poll: the wait, timed on the
    loop's clock, goes on until A has counted B, and the two never hold more than 6/s."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        a = await _running(clients, wall)
        step = [0.0]

        async def ntp_steps_while_a_drains() -> None:
            step[0] = 5.0
            await a.cluster.flush()

        b = _newcomer(clients, wall, ntp_steps_while_a_drains)
        b.cluster._wall_s = lambda: wall() + step[0]
        await b.starts()
        assert _per_s(a, b) <= 6.0, (
            f"A at {_per_s(a)}/s, B at {_per_s(b)}/s after B's wait of {b.slept_s} s"
        )

    on_table(make_settings, TABLE, body)


def test_a_newcomer_whose_host_clock_is_behind_by_more_than_a_heartbeat_waits_to_be_counted(
    world: World, make_settings: SettingsFactory
) -> None:
    """B's host clock is TTL_S + 5 s behind DynamoDB's, so its first heartbeat is already
    expired on the table's clock and A, re-reading, does not count B: B does not take A's
    changed heartbeat as room made, and the two never hold more than 6/s."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        a = Member(clients.dynamodb, TABLE, "a", wall, start_fraction=START_SHARE)
        await a.cluster.sync()
        wall.advance(AGREE_S)
        await a.cluster.sync()
        # B starts when A's next re-read is almost due (A drains: it flushes after each batch).
        wall.advance(AGREE_S - 0.1)
        b = _newcomer(clients, wall, a.cluster.flush, skew_s=-(TTL_S + 5))
        await b.starts()
        assert _per_s(a, b) <= 6.0, f"A at {_per_s(a)}/s (live {a.cluster.live}), B {_per_s(b)}/s"

    on_table(make_settings, TABLE, body)


def test_joiners_one_after_the_other_never_hold_more_than_the_rate(
    world: World, make_settings: SettingsFactory
) -> None:
    """A runs; B and C join one after the other while A drains: at every moment the
    replicas that may send hold at most 6/s."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        a = await _running(clients, wall)
        sending = [a]

        async def others_drain() -> None:
            for member in sending:
                await member.cluster.flush()
            assert _per_s(*sending) <= 6.0

        for name in "bc":
            member = _newcomer(clients, wall, others_drain, name=name)
            await member.starts()
            sending.append(member)
            assert _per_s(*sending) <= 6.0

    on_table(make_settings, TABLE, body)


def test_batches_paced_on_one_bucket_re_read_the_membership_once_per_agree_s_between_them(
    world: World, make_settings: SettingsFactory
) -> None:
    """On the real event loop and clocks, eight batches of one replica pace 4 messages each
    through one 40/s bucket (0.8 s), re-reading every 0.2 s (agree_s): they write about one
    heartbeat per agree_s between them, not one each."""
    agree_s = 0.2

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        rates = RateLimits(RateLimitSettings(per_s=40.0, burst=1), anyio.current_time)
        cluster = DynamoDbCluster(
            clients.dynamodb,
            TABLE,
            breakers=Breakers(BREAKER, anyio.current_time),
            rates=rates,
            cooldown_s=BREAKER.cooldown_s,
            member_ttl_s=60.0,
            me="a",
            agree_s=agree_s,
        )
        await cluster.sync()
        await anyio.sleep(agree_s)
        await cluster.sync()
        world.record()
        started = anyio.current_time()

        async def batch() -> None:
            async for _ in rates.paced(TARGET.arn, 4, 10.0):
                pass

        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(batch)
        due = (anyio.current_time() - started) / agree_s
        written = _heartbeats(world)
        assert written <= due + 2, f"{written} heartbeats in {due:.1f} x agree_s"

    on_table(make_settings, TABLE, body)


def test_a_reread_cut_short_by_a_batchs_deadline_is_not_taken_by_a_newcomer_as_room_made(
    world: World, make_settings: SettingsFactory
) -> None:
    """A's re-read runs inside a batch (RateLimits.while_waiting) and is cut off by the
    batch's deadline after DynamoDB applied it, so B finds A's heartbeat changed: A, which
    never read B, holds back until its next heartbeat, and the two never hold more than
    6/s."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        a = await _running(clients, wall)
        cut = [False]

        async def a_paces_and_its_batch_is_cut_off() -> None:
            if cut[0]:
                return
            cut[0] = True
            # A's heartbeat reaches DynamoDB late; the batch it runs in is cut off meanwhile.
            late = Fault("dynamodb", "UpdateItem", code=None, contains='"m:a"', delay_s=0.5)
            world.faults.add(late)
            with anyio.move_on_after(0.2):
                await a.cluster.flush()
            await anyio.sleep(0.6)
            world.faults.clear()

        # B starts half a poll before A's re-read is due.
        wall.advance(AGREE_S - 0.5)
        b = _newcomer(clients, wall, a_paces_and_its_batch_is_cut_off)
        await b.starts()
        assert _per_s(a, b) <= 6.0, f"A at {_per_s(a)}/s (live {a.cluster.live}), B {_per_s(b)}/s"

    on_table(make_settings, TABLE, body)
