"""The cluster item stays bounded: idle closed breakers are pruned, and entries are capped."""

from __future__ import annotations

from typing import Any

from retryd.admission.breaker import BreakerState
from retryd.aws import AwsClients
from retryd.cluster.dynamodb import BREAKER_PREFIX, MAX_BREAKER_ENTRIES, STATE_KEY
from retryd.ledger.dynamodb import KEY_ATTRIBUTE
from retryd.models import Target
from tests.clock_helpers import FakeClock
from tests.cluster.members import BREAKER, TTL_S, Member, on_table
from tests.conftest import SettingsFactory
from tests.world import ACCOUNT, REGION, World

TABLE = "retryd-ledger-cluster-size"
# Far more targets than one bound's worth, to show the item stops growing.
MANY = 700
KEY = {KEY_ATTRIBUTE: {"S": STATE_KEY}}


def _arn(n: int) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:target-{n:05d}"


def _entry(state: BreakerState, episode: str) -> dict[str, Any]:
    return {"M": {"s": {"S": state.value}, "e": {"S": episode}, "at": {"N": "1700000000"}}}


async def _fill(clients: AwsClients, count: int, state: BreakerState) -> None:
    """Breaker entries for `count` targets, as replicas before this one left them."""
    for start in range(0, count, 100):
        names = {f"#b{n}": BREAKER_PREFIX + _arn(n) for n in range(start, min(count, start + 100))}
        values = {f":v{n}": _entry(state, f"ep{n}") for n in range(start, min(count, start + 100))}
        await clients.dynamodb.update_item(
            TableName=TABLE,
            Key=KEY,
            UpdateExpression="SET "
            + ", ".join(f"#b{n} = :v{n}" for n in range(start, start + len(names))),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )


async def _entries(clients: AwsClients) -> dict[str, str]:
    answer = await clients.dynamodb.get_item(TableName=TABLE, Key=KEY, ConsistentRead=True)
    item: dict[str, Any] = dict(answer.get("Item", {}))
    return {
        name[len(BREAKER_PREFIX) :]: value["M"]["s"]["S"]
        for name, value in item.items()
        if name.startswith(BREAKER_PREFIX)
    }


def run(make_settings: SettingsFactory, body: Any) -> None:
    async def one(clients: AwsClients, wall: FakeClock) -> None:
        await body(clients, Member(clients.dynamodb, TABLE, "a", wall))

    on_table(make_settings, TABLE, one)


def test_closed_breakers_idle_for_a_heartbeat_are_pruned_and_open_ones_kept(
    world: World, make_settings: SettingsFactory
) -> None:
    """Many closed entries and one open: once they have stayed closed for a heartbeat's
    length, a sync removes the closed ones; the open one stays."""

    async def body(clients: AwsClients, a: Member) -> None:
        await _fill(clients, MANY, BreakerState.CLOSED)
        await clients.dynamodb.update_item(
            TableName=TABLE,
            Key=KEY,
            UpdateExpression="SET #b = :v",
            ExpressionAttributeNames={"#b": BREAKER_PREFIX + _arn(MANY)},
            ExpressionAttributeValues={":v": _entry(BreakerState.OPEN, "open")},
        )
        await a.cluster.sync()
        assert len(await _entries(clients)) == MANY + 1  # not idle long enough yet
        a.mono.advance(TTL_S + 1)
        await a.cluster.sync()
        await a.cluster.sync()
        assert await _entries(clients) == {_arn(MANY): BreakerState.OPEN.value}

    run(make_settings, body)


def test_a_closed_breaker_that_moved_since_it_was_read_is_not_pruned(
    world: World, make_settings: SettingsFactory
) -> None:
    """Another replica opens a target between the sync that finds it idle and the pruning:
    the conditional removal does not take its opening away."""

    async def body(clients: AwsClients, a: Member) -> None:
        await _fill(clients, 3, BreakerState.CLOSED)
        await a.cluster.sync()
        a.mono.advance(TTL_S + 1)
        original = a.cluster._prune

        async def opened_meanwhile(idle: dict[str, str]) -> None:
            await clients.dynamodb.update_item(
                TableName=TABLE,
                Key=KEY,
                UpdateExpression="SET #b = :v",
                ExpressionAttributeNames={"#b": BREAKER_PREFIX + _arn(1)},
                ExpressionAttributeValues={":v": _entry(BreakerState.OPEN, "new")},
            )
            await original(idle)

        a.cluster._prune = opened_meanwhile  # type: ignore[method-assign]
        await a.cluster.sync()
        assert (await _entries(clients)).get(_arn(1)) == BreakerState.OPEN.value

    run(make_settings, body)


def test_at_the_bound_a_new_opening_stays_on_its_replica(
    world: World, make_settings: SettingsFactory
) -> None:
    """With the item at MAX_BREAKER_ENTRIES open breakers, a new opening is not written
    (the item stops growing) and the replica runs that breaker itself: its own cool-down
    leads to half-open without a claim; the heartbeat goes on."""

    async def body(clients: AwsClients, a: Member) -> None:
        await _fill(clients, MAX_BREAKER_ENTRIES, BreakerState.OPEN)
        await a.cluster.sync()
        breaker = a.breakers.for_target(Target.from_arn(_arn(MANY)))
        while breaker.state is BreakerState.CLOSED:
            breaker.record(success=False)
        await a.cluster.flush()
        await a.cluster.sync()
        entries = await _entries(clients)
        assert len(entries) == MAX_BREAKER_ENTRIES
        assert _arn(MANY) not in entries
        a.mono.advance(BREAKER.cooldown_s + 1)
        assert breaker.permits(10) == BREAKER.half_open_calls
        assert a.cluster.live == 1

    run(make_settings, body)
