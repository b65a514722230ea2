"""Ticks: one cycle, then a wait of `interval_s` — or `busy_interval_s` after a busy one."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import structlog

from retryd.drain.cycle import Cycle, CycleReport
from retryd.models import DELETED_OUTCOMES
from retryd.service.health import Health
from retryd.settings import ScheduleSettings

log = structlog.get_logger("retryd.scheduler")


def rest_s(report: CycleReport, schedule: ScheduleSettings) -> float:
    """How long to wait before the next cycle: briefly while messages are leaving their DLQs.

    Only resubmitted and parked messages count: a deferred one is hidden until it is due and
    a failed one until its lease ends, so another cycle at once would find neither, and a
    DLQ whose messages only defer rests the full interval.
    """
    moved = sum(report.outcomes.get(outcome.value, 0) for outcome in DELETED_OUTCOMES)
    if moved and not report.errors:
        return min(schedule.busy_interval_s, schedule.interval_s)
    return schedule.interval_s


async def run_schedule(
    cycle: Cycle,
    schedule: ScheduleSettings,
    stopping: anyio.Event,
    health: Health,
    on_tick: Callable[[], None] | None = None,
) -> None:
    """Run cycles until `stopping` is set; a cycle in progress is let finish its batch.

    `on_tick` is called each time round (the systemd watchdog ping), like `health.tick`.
    """
    while not stopping.is_set():
        health.tick()
        if on_tick is not None:
            on_tick()
        # Ready once discovery works, not once the cycle ends (a first cycle on a
        # backlog can take its whole budget): one unreadable DLQ (say, a KMS key
        # retryd may not use) is an alert on that queue, not a reason to take the
        # whole service out.
        report = await cycle.run(stopping, on_discovered=health.mark_ready)
        wait_s = rest_s(report, schedule)
        log.info("cycle", summary=report.summary(), ok=report.ok, next_in_s=wait_s)
        # Waiting on the event rather than sleeping lets SIGTERM end the idle wait at once.
        with anyio.move_on_after(wait_s):
            await stopping.wait()
    log.info("scheduler-stopped")
