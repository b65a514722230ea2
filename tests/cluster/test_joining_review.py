"""Review of issue 23 (f094db3): ways a joiner's wait, or the re-reads while pacing, go wrong.

Each test is one defect found by the adversarial review (branch rv23), against the moto
server on fake clocks, as tests/cluster/test_dynamodb.py does.
"""

from __future__ import annotations

import anyio

from retryd.admission.breaker import Breakers, BreakerState
from retryd.admission.ratelimit import RateLimits
from retryd.aws import AwsClients
from retryd.cluster import DynamoDbCluster
from retryd.cluster.dynamodb import BREAKER_PREFIX, JOIN_WAIT_AGREES, STATE_KEY
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
    """Batches paced on one bucket compute the same wait and wake together; each then calls
    the cluster's flush (RateLimits.while_waiting). When the re-read is due, each of them
    finds it due (the time of the last heartbeat moves only once one has answered), so
    eight waiting batches write eight heartbeats, each billed for the whole item, where
    one re-read was meant (the item's 1,000 write units a second is shared by every
    replica). The same overlap runs the breakers' agreement eight times at once."""

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
    """B opened the shared breaker and left; A holds it open. Past the cool-down, two of A's
    batches waiting for tokens flush at once: both read the entry unclaimed, both try to
    claim it; one lands (A holds the canaries in the table, its breaker goes half-open),
    the other's condition fails and it adopts what it read (open, held elsewhere), over
    the winner. A then holds the claim but never sends the canaries: the target stays
    shut for another cool-down, until the claim lapses."""

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
    """A runs alone at 6/s. B's first heartbeat is throttled once: B has no reading, so
    nothing to wait for, and its first sync returns at once with its start share (1.5/s)
    while A holds the whole 6/s and has never heard of B: 7.5/s may be sent. The wait
    is meant for exactly this (a replica that may find others running); one retry 0.5 s
    later would have found A."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        a = await _running(clients, wall)
        world.faults.add(Fault("dynamodb", "UpdateItem", contains=":expires", times=1))
        b = Member(
            clients.dynamodb,
            TABLE,
            "b",
            wall,
            start_fraction=START_SHARE,
            while_asleep=a.cluster.flush,
        )
        await b.starts()
        world.faults.clear()
        assert _per_s(a, b) <= 6.0, (
            f"A at {_per_s(a)}/s, B at {_per_s(b)}/s after B's first sync (slept {b.slept_s} s)"
        )

    on_table(make_settings, TABLE, body)


def test_a_newcomer_whose_heartbeats_keep_failing_waits_once_not_at_every_sync(
    world: World, make_settings: SettingsFactory
) -> None:
    """B finds A running, then DynamoDB throttles its heartbeats: its first sync waits out
    the bound and goes on at its start share (as designed). Every later sync (each cycle
    of the daemon, each step of a redrive job) waits the whole bound again and writes
    eight more heartbeats into the throttled item, though B has been sending since the
    first: the wait protects nothing by then and costs 4 s of every cycle's budget."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        await _running(clients, wall)

        async def throttled() -> None:
            if not world.faults.faults:
                world.faults.add(Fault("dynamodb", "UpdateItem", contains=":expires"))

        b = Member(
            clients.dynamodb, TABLE, "b", wall, start_fraction=START_SHARE, while_asleep=throttled
        )
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
    """B's wait is timed on its host's wall clock (time.time), which NTP may step: a step
    of 5 s during B's first poll ends the wait after one poll, with A (at 6/s) not having
    re-read the item, and B goes on at its start share on top. Its table-clock bound
    (JOIN_WAIT_AGREES x AGREE_S after its first heartbeat) is not reached; the wait
    should be timed on a clock that does not step (the loop's, as the buckets are)."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        a = await _running(clients, wall)
        step = [0.0]

        async def ntp_steps_while_a_drains() -> None:
            step[0] = 5.0
            await a.cluster.flush()

        b = Member(
            clients.dynamodb,
            TABLE,
            "b",
            wall,
            start_fraction=START_SHARE,
            while_asleep=ntp_steps_while_a_drains,
        )
        b.cluster._wall_s = lambda: wall() + step[0]
        await b.starts()
        assert _per_s(a, b) <= 6.0, (
            f"A at {_per_s(a)}/s, B at {_per_s(b)}/s after B's wait of {b.slept_s} s"
        )

    on_table(make_settings, TABLE, body)


def test_a_newcomer_whose_host_clock_is_behind_by_more_than_a_heartbeat_waits_to_be_counted(
    world: World, make_settings: SettingsFactory
) -> None:
    """B's host clock is TTL_S + 5 s behind DynamoDB's. Its first heartbeat is written before
    it knows the offset, so it has already expired on the table's clock. A re-reads in the
    half second before B's first poll: it finds B's heartbeat expired and does not count
    B (it keeps 6/s), yet its heartbeat has changed, which is all B waits for: B goes on
    at 3/s on top, until A's next re-read about AGREE_S later."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        a = Member(clients.dynamodb, TABLE, "a", wall, start_fraction=START_SHARE)
        await a.cluster.sync()
        wall.advance(AGREE_S)
        await a.cluster.sync()
        # B starts when A's next re-read is almost due (A drains: it flushes after each batch).
        wall.advance(AGREE_S - 0.1)
        b = Member(
            clients.dynamodb,
            TABLE,
            "b",
            wall,
            skew_s=-(TTL_S + 5),
            start_fraction=START_SHARE,
            while_asleep=a.cluster.flush,
        )
        await b.starts()
        assert _per_s(a, b) <= 6.0, f"A at {_per_s(a)}/s (live {a.cluster.live}), B {_per_s(b)}/s"

    on_table(make_settings, TABLE, body)


def test_joiners_one_after_the_other_never_hold_more_than_the_rate(
    world: World, make_settings: SettingsFactory
) -> None:
    """Control (passes): A runs; B and C join one after the other while A drains; at every
    moment the replicas that may send hold at most 6/s."""

    async def body(clients: AwsClients, wall: FakeClock) -> None:
        a = await _running(clients, wall)
        sending = [a]

        async def others_drain() -> None:
            for member in sending:
                await member.cluster.flush()
            assert _per_s(*sending) <= 6.0

        for name in "bc":
            member = Member(
                clients.dynamodb,
                TABLE,
                name,
                wall,
                start_fraction=START_SHARE,
                while_asleep=others_drain,
            )
            await member.starts()
            sending.append(member)
            assert _per_s(*sending) <= 6.0

    on_table(make_settings, TABLE, body)


def test_batches_paced_on_one_bucket_re_read_the_membership_once_per_agree_s_between_them(
    world: World, make_settings: SettingsFactory
) -> None:
    """The same on the real event loop and clocks: eight batches of one replica pace 4
    messages each through one 40/s bucket (0.8 s), re-reading every 0.2 s (agree_s). They
    wake together after each wait, so each due re-read is written by every waiting batch."""
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
    """A's re-read now runs inside a batch (RateLimits.while_waiting), in that batch's cancel
    scope (its lease cap, a stop's drain timeout). Cut short after DynamoDB applied it, A's
    heartbeat has changed in the table but A never read the answer: it keeps 6/s, while B,
    which waits only for A's heartbeat to change, goes on at 3/s on top."""

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
        b = Member(
            clients.dynamodb,
            TABLE,
            "b",
            wall,
            start_fraction=START_SHARE,
            while_asleep=a_paces_and_its_batch_is_cut_off,
        )
        await b.starts()
        assert _per_s(a, b) <= 6.0, f"A at {_per_s(a)}/s (live {a.cluster.live}), B {_per_s(b)}/s"

    on_table(make_settings, TABLE, body)
