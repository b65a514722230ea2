"""/readyz turns ready the moment discovery first succeeds, not when the first cycle ends."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import anyio
from prometheus_client import CollectorRegistry

from retryd.aws import open_clients
from retryd.drain.cycle import Cycle, CycleReport
from retryd.metrics import Metrics
from retryd.service.health import Health
from retryd.service.scheduler import run_schedule
from retryd.settings import ScheduleSettings
from tests.conftest import SettingsFactory
from tests.world import World, envelope


def test_cycle_reports_discovery_before_draining(
    world: World, make_settings: SettingsFactory
) -> None:
    """`on_discovered` is called while the DLQ still holds its message, then it is drained."""
    world.create_queue("retryd-parking")
    world.create_queue("retry-a")
    world.create_queue("dest")
    world.send("retry-a", envelope("sqs", world.queue_arn("dest"), "hello"))
    settings = make_settings()
    depth_when_discovered: list[int] = []

    async def one_cycle() -> CycleReport:
        async with open_clients(settings.aws) as clients:
            cycle = Cycle(settings, clients, Metrics(CollectorRegistry()))
            return await cycle.run(
                anyio.Event(),
                on_discovered=lambda: depth_when_discovered.append(world.depth("retry-a")),
            )

    report = anyio.run(one_cycle)

    assert depth_when_discovered == [1]
    assert report.outcomes == {"resubmitted": 1}
    assert world.depth("retry-a") == 0


class _SlowCycle:
    """A cycle that discovers, then is still draining when it looks at the probe."""

    def __init__(self, health: Health, stopping: anyio.Event) -> None:
        self.health = health
        self.stopping = stopping
        self.ready_while_draining: list[bool] = []

    async def run(
        self, stopping: anyio.Event, *, on_discovered: Callable[[], None] | None = None
    ) -> CycleReport:
        if on_discovered is not None:
            on_discovered()
        self.ready_while_draining.append(self.health.ready)
        self.stopping.set()
        return CycleReport(discovered=True)


def test_scheduler_marks_ready_during_the_first_cycle() -> None:
    """The scheduler hands health.mark_ready to the cycle: ready before the cycle returns."""
    health = Health(interval_s=60)
    stopping = anyio.Event()
    cycle = _SlowCycle(health, stopping)

    anyio.run(run_schedule, cast(Cycle, cycle), ScheduleSettings(), stopping, health)

    assert cycle.ready_while_draining == [True]
