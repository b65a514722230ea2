"""Replicas of the cluster on one moto-server table, on fake clocks: the cluster tests' cast."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from retryd.admission.breaker import Breakers
from retryd.admission.ratelimit import RateLimits
from retryd.aws import AwsClients, open_clients
from retryd.cluster.dynamodb import AGREE_S as CLUSTER_AGREE_S
from retryd.cluster.dynamodb import DynamoDbCluster
from retryd.ledger import create_table
from retryd.models import Target
from retryd.settings import BreakerSettings, RateLimitSettings
from tests.clock_helpers import FakeClock
from tests.conftest import SettingsFactory
from tests.world import ACCOUNT, REGION

TARGET = Target.from_arn(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge")
BREAKER = BreakerSettings(
    window_calls=4, min_calls=2, failure_rate=0.5, cooldown_s=30, half_open_calls=2
)
TTL_S = 10.0
# How long a member keeps its start share (and how often it re-reads the membership).
AGREE_S = min(CLUSTER_AGREE_S, TTL_S / 4)
START_S = 1_700_000_000.0


class Member:
    """One replica's breakers, buckets (6/s) and cluster; its wall clock reads the table's
    time plus `skew_s`, and the table's time is what its answers' Date header would say."""

    def __init__(
        self,
        client: object,
        table: str,
        name: str,
        table_clock: FakeClock,
        *,
        skew_s: float = 0.0,
        start_fraction: float = 1.0,
        sync_gap_s: float = 0.0,
        while_asleep: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.mono = FakeClock()
        self.slept_s = 0.0

        async def sleep(seconds: float) -> None:
            # Time passes for everyone; what the others do meanwhile is `while_asleep`.
            table_clock.advance(seconds)
            self.mono.advance(seconds)
            self.slept_s += seconds
            if while_asleep is not None:
                await while_asleep()

        self.breakers = Breakers(BREAKER, self.mono)
        self.rates = RateLimits(RateLimitSettings(per_s=6.0, burst=6), self.mono, sleep=sleep)
        self.cluster = DynamoDbCluster(
            client,
            table,
            breakers=self.breakers,
            rates=self.rates,
            cooldown_s=BREAKER.cooldown_s,
            member_ttl_s=TTL_S,
            me=name,
            start_fraction=start_fraction,
            sync_gap_s=sync_gap_s,
            wall_s=lambda: table_clock() + skew_s,
            monotonic_s=self.mono,
            server_s=lambda _answer: table_clock(),
            sleep=sleep,
        )

    async def starts(self) -> None:
        """Its first cycle's start: a sync, then (before any send) the wait to be counted."""
        await self.cluster.sync()
        await self.cluster.join()

    def advance(self, seconds: float) -> None:
        self.mono.advance(seconds)


def on_table(
    make_settings: SettingsFactory,
    table: str,
    body: Callable[[AwsClients, FakeClock], Awaitable[None]],
) -> None:
    """Create the ledger table as `ledger create-table` does, then run `body` with clients
    on the moto server and the table's clock."""
    settings = make_settings(ledger={"backend": "dynamodb", "table": table})

    async def main() -> None:
        await create_table(settings)
        async with open_clients(settings.aws) as clients:
            await body(clients, FakeClock(START_S))

    anyio.run(main)
