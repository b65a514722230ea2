"""Replicas whose clocks are off agree on the table's time (DynamoDB's Date header)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from retryd.admission.breaker import Breakers, BreakerState
from retryd.admission.ratelimit import RateLimits
from retryd.aws import AwsClients, open_clients
from retryd.cluster.dynamodb import MEMBER_PREFIX, STATE_KEY, DynamoDbCluster, server_time
from retryd.ledger import create_table
from retryd.ledger.dynamodb import KEY_ATTRIBUTE
from retryd.settings import RateLimitSettings
from tests.clock_helpers import FakeClock
from tests.cluster.members import BREAKER, TARGET, TTL_S, Member, on_table
from tests.conftest import SettingsFactory
from tests.world import World

TABLE = "retryd-ledger-cluster-clocks"


def run_pair(
    world: World,
    make_settings: SettingsFactory,
    skews_s: tuple[float, float],
    body: Callable[[Member, Member, FakeClock], Awaitable[None]],
) -> None:

    async def pair(clients: AwsClients, table_clock: FakeClock) -> None:
        a = Member(clients.dynamodb, TABLE, "a", table_clock, skew_s=skews_s[0])
        b = Member(clients.dynamodb, TABLE, "b", table_clock, skew_s=skews_s[1])
        await body(a, b, table_clock)

    on_table(make_settings, TABLE, pair)


def test_a_replica_whose_clock_is_far_ahead_neither_evicts_nor_ignores_the_others(
    world: World, make_settings: SettingsFactory
) -> None:
    """A's clock is three heartbeats ahead: both still count two replicas, sync after sync
    (A used to find B's heartbeat long expired, remove it, and take the whole rate)."""

    async def body(a: Member, b: Member, table_clock: FakeClock) -> None:
        for _ in range(3):
            await b.cluster.sync()
            await a.cluster.sync()
            await b.cluster.sync()
            assert (a.cluster.live, b.cluster.live) == (2, 2)
            table_clock.advance(TTL_S / 4)

    run_pair(world, make_settings, (3 * TTL_S, 0.0), body)


def test_a_breaker_opened_by_a_replica_whose_clock_is_behind_keeps_its_cool_down(
    world: World, make_settings: SettingsFactory
) -> None:
    """B's clock is two cool-downs behind when it opens the breaker: A does not take the
    opening for an old one and claim the canaries at once."""

    async def body(a: Member, b: Member, table_clock: FakeClock) -> None:
        await a.cluster.sync()
        await b.cluster.sync()
        breaker = b.breakers.for_target(TARGET)
        while breaker.state is BreakerState.CLOSED:
            breaker.record(success=False)
        await b.cluster.flush()
        await a.cluster.sync()
        assert a.breakers.for_target(TARGET).permits(10) == 0

    run_pair(world, make_settings, (0.0, -2 * BREAKER.cooldown_s), body)


async def _heartbeat_expiry(clients: AwsClients, member: str) -> float:
    answer = await clients.dynamodb.get_item(
        TableName=TABLE, Key={KEY_ATTRIBUTE: {"S": STATE_KEY}}, ConsistentRead=True
    )
    item: dict[str, Any] = dict(answer["Item"])
    return float(item[MEMBER_PREFIX + member]["N"])


def test_the_table_time_comes_from_the_answers_date_header(
    world: World, make_settings: SettingsFactory
) -> None:
    """A replica an hour ahead, reading the moto server's Date header: from its second sync
    its heartbeat expires a heartbeat's length after the server's time, not its own."""
    settings = make_settings(ledger={"backend": "dynamodb", "table": TABLE})
    hour_s = 3600.0

    async def main() -> tuple[float, float, float]:
        await create_table(settings)
        async with open_clients(settings.aws) as clients:
            cluster = DynamoDbCluster(
                clients.dynamodb,
                TABLE,
                breakers=Breakers(BREAKER, anyio.current_time),
                rates=RateLimits(RateLimitSettings(per_s=6.0, burst=6), anyio.current_time),
                cooldown_s=BREAKER.cooldown_s,
                member_ttl_s=TTL_S,
                me="ahead",
                wall_s=lambda: time.time() + hour_s,
            )
            await cluster.sync()
            await cluster.sync()
            before = time.time()
            expiry = await _heartbeat_expiry(clients, "ahead")
            return before, expiry, time.time()

    before, expiry, after = anyio.run(main)
    # The Date header has whole seconds: the expiry is within a couple of them.
    assert before - 5 + TTL_S <= expiry <= after + 5 + TTL_S


def test_server_time_reads_the_date_header_and_nothing_else() -> None:
    """A Date header gives its unix time; no header, or a garbled one, gives None."""
    answer = {"ResponseMetadata": {"HTTPHeaders": {"date": "Mon, 30 Nov 2026 05:45:05 GMT"}}}
    assert server_time(answer) == 1796017505.0
    assert server_time({}) is None
    assert server_time({"ResponseMetadata": {"HTTPHeaders": {"date": "yesterday"}}}) is None
