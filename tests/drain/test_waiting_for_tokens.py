"""A receiver waiting for its targets' tokens keeps to the cycle's budget and sees a share grow."""

from __future__ import annotations

import anyio
from prometheus_client import CollectorRegistry

from retryd.aws import open_clients
from retryd.drain.cycle import Cycle, CycleReport
from retryd.ledger import open_ledger
from retryd.metrics import Metrics
from tests.conftest import SettingsFactory
from tests.world import World, envelope


def test_a_token_days_away_does_not_hold_the_cycle_past_its_budget(
    world: World, make_settings: SettingsFactory
) -> None:
    """A target limited to one message in 1,000 s (buckets start empty) and a backlog: the
    cycle defers what it received and ends near its 2 s budget, not when a token comes.

    Before, the receiver slept until its next token: a replica whose heartbeat had lapsed
    (its share next to nothing until one lands) slept past its budget and its stop."""
    world.create_queue("retryd-parking")
    world.create_queue("retry-slowly")
    world.create_queue("dest")
    for n in range(20):
        world.send("retry-slowly", envelope("sqs", world.queue_arn("dest"), {"n": n}))
    settings = make_settings(
        rate_limit={"per_s": 0.001, "burst": 1},
        drain={"cycle_budget_s": 2, "workers_per_queue": 1, "visibility_timeout_s": 30},
    )

    async def main() -> tuple[CycleReport, float]:
        metrics = Metrics(CollectorRegistry())
        async with (
            open_clients(settings.aws) as clients,
            open_ledger(settings.ledger, clients, metrics) as ledger,
        ):
            cycle = Cycle(settings, clients, metrics, ledger=ledger)
            started_s = anyio.current_time()
            with anyio.fail_after(60):
                report = await cycle.run(anyio.Event())
            return report, anyio.current_time() - started_s

    report, took_s = anyio.run(main)
    assert report.outcomes["resubmitted"] == 0
    assert report.outcomes["deferred"] >= 1
    assert took_s < 30, took_s
    assert world.depth("dest") == 0
