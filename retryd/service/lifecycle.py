"""Lifecycle: clients, the HTTP listener, signals, and a two-phase stop.

On the first SIGTERM/SIGINT retryd stops receiving and lets in-flight batches
settle for up to `shutdown.drain_timeout_s`; what is still running then is
cancelled (a cancelled message is left in its DLQ to reappear after its lease).
A second signal cancels at once.
"""

from __future__ import annotations

import signal
from contextlib import nullcontext

import anyio
import structlog
from prometheus_client import CollectorRegistry

from retryd.drain.cycle import Cycle, CycleReport
from retryd.drain.shard import WHOLE, Shard
from retryd.ledger import open_ledger
from retryd.metrics import Metrics
from retryd.places import open_places
from retryd.resolve.hooks import Hooks
from retryd.service import heap
from retryd.service.health import Health
from retryd.service.scheduler import run_schedule
from retryd.service.systemd import SystemdNotifier
from retryd.settings import Settings

log = structlog.get_logger("retryd.service")


async def run_once(
    settings: Settings,
    *,
    collect: bool = False,
    registry: CollectorRegistry | None = None,
    shard: Shard = WHOLE,
    settle_heap: bool = False,
) -> CycleReport:
    """One deterministic cycle, then return: the `once` command and the tests' entry point.

    `shard`: as one of drain.processes workers, only the DLQs that fall to it.
    `settle_heap`: the process is retryd's own; set its garbage collector (service.heap)
    once the engine is built.
    """
    # Hooks that cannot be loaded stop here, before any AWS client is opened.
    Hooks.from_settings(settings)
    metrics = Metrics(registry or CollectorRegistry())
    async with open_places(settings) as places:
        # The ledger, the operator state and the cluster item live in the home place.
        clients = await places.home_clients()
        async with open_ledger(settings.ledger, clients, metrics) as ledger:
            cycle = Cycle(settings, clients, metrics, ledger=ledger, places=places, shard=shard)
            with heap.settled() if settle_heap else nullcontext():
                try:
                    return await cycle.run(anyio.Event(), collect=collect)
                finally:
                    await cycle.leave()


async def _watch_signals(
    stopping: anyio.Event,
    work: anyio.CancelScope,
    drain_timeout_s: float,
    notifier: SystemdNotifier,
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stopping.is_set():
                # Only flags and a deadline here: the work itself notices and winds down.
                stopping.set()
                work.deadline = anyio.current_time() + drain_timeout_s
                notifier.stopping()
                log.info("stopping", signal=name, drain_timeout_s=drain_timeout_s)
            else:
                log.warning("stopping-now", signal=name)
                work.cancel()


async def run_daemon(
    settings: Settings,
    registry: CollectorRegistry | None = None,
    *,
    shard: Shard = WHOLE,
    health: Health | None = None,
    settle_heap: bool = False,
) -> None:
    """Cycle every `schedule.interval_s` until a signal; returns normally after a clean stop.

    As one of drain.processes workers: `shard` picks its DLQs and `health` passes
    its ticks on to the parent, which serves the probes. `settle_heap`: as run_once's.
    """
    # A transform or schema that cannot be loaded is a ConfigError (exit 2): raised here,
    # before the task group below would wrap it in an exception group.
    Hooks.from_settings(settings)
    registry = registry or CollectorRegistry()
    metrics = Metrics(registry)
    health = health or Health.for_settings(settings)
    stopping = anyio.Event()
    work = anyio.CancelScope()
    # Under systemd (Type=notify): READY once serving, WATCHDOG per tick, STOPPING on a signal.
    notifier = SystemdNotifier.from_environ()
    async with anyio.create_task_group() as group:
        group.start_soon(
            _watch_signals, stopping, work, settings.shutdown.drain_timeout_s, notifier
        )
        if settings.http.enabled:
            # Imported only to serve: aiohttp's web server is not what `once` or a daemon
            # without the listener needs.
            from retryd.service.http import start_http  # noqa: PLC0415

            port = await start_http(group, settings.http, registry, health)
            log.info("http-listening", host=settings.http.host, port=port)
        async with (
            open_places(settings) as places,
            # Opened once per run: the memory backend's counts then last the whole run.
            open_ledger(settings.ledger, await places.home_clients(), metrics) as ledger,
        ):
            cycle = Cycle(
                settings,
                await places.home_clients(),
                metrics,
                ledger=ledger,
                places=places,
                shard=shard,
            )
            with heap.settled() if settle_heap else nullcontext():
                log.info("started", interval_s=settings.schedule.interval_s)
                notifier.ready()
                with work:
                    await run_schedule(
                        cycle, settings.schedule, stopping, health, notifier.watchdog
                    )
                await cycle.leave()
        if work.cancelled_caught:
            log.warning("drain-timeout", why="in-flight work was cancelled; it stays in its DLQ")
        group.cancel_scope.cancel()
    log.info("stopped")
