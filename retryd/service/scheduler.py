"""Ticks: one cycle, then a wait of `interval_s` (or less, if told to stop)."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import structlog

from retryd.drain.cycle import Cycle
from retryd.service.http import Health

log = structlog.get_logger("retryd.scheduler")


async def run_schedule(
    cycle: Cycle,
    interval_s: float,
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
        log.info("cycle", summary=report.summary(), ok=report.ok)
        # Waiting on the event rather than sleeping lets SIGTERM end the idle wait at once.
        with anyio.move_on_after(interval_s):
            await stopping.wait()
    log.info("scheduler-stopped")
