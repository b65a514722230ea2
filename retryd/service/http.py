"""The /metrics, /healthz and /readyz listener.

/healthz answers "is the scheduler loop still turning?" (an orchestrator
restarts the process when it is not); /readyz answers "has retryd loaded its
settings and found its queues at least once?". Both are cheap: they read two
timestamps and a flag, and never call AWS, so a slow AWS cannot make a probe
time out and get a healthy process killed.
"""

from __future__ import annotations

import os
from http import HTTPStatus

import anyio
import anyio.abc
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from retryd.errors import ConfigError
from retryd.service.health import Health
from retryd.settings import HttpSettings

# Probes and scrapes finish in milliseconds; a stop must not wait long for a slow client.
_SHUTDOWN_TIMEOUT_S = 2.0


def build_app(registry: CollectorRegistry, health: Health) -> web.Application:
    """The aiohttp application behind the listener, without binding any socket."""

    async def metrics(request: web.Request) -> web.Response:
        # Prometheus asks for OpenMetrics in its Accept header; curl gets the plain text format.
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(registry), headers={"Content-Type": content_type})

    async def healthz(_request: web.Request) -> web.Response:
        if health.alive:
            return web.Response(text="ok\n")
        reason = (
            f"stalled: no scheduler tick for {health.since_tick_s:.0f} s "
            f"(limit {health.stall_after_s:.0f} s)\n"
        )
        return web.Response(status=HTTPStatus.SERVICE_UNAVAILABLE, text=reason)

    async def readyz(_request: web.Request) -> web.Response:
        if health.ready:
            return web.Response(text="ok\n")
        reason = "not ready: waiting for the first successful discovery\n"
        return web.Response(status=HTTPStatus.SERVICE_UNAVAILABLE, text=reason)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve_http(
    settings: HttpSettings,
    registry: CollectorRegistry,
    health: Health,
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port through `task_status` (port 0 picks one).

    A port already in use raises OSError from `task_group.start()`, before the
    caller goes on as if the listener were up.
    """
    # Scrapes every few seconds would drown the decision logs, so no access log.
    runner = web.AppRunner(
        build_app(registry, health), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        # With port 0 only the socket knows which port the kernel gave it.
        bound_port: int = runner.addresses[0][1]
        task_status.started(bound_port)
        await anyio.sleep_forever()
    finally:
        # Cancellation brought us here; without the shield the cleanup would be cancelled too
        # and leave the socket bound.
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


async def start_http(
    group: anyio.abc.TaskGroup, settings: HttpSettings, registry: CollectorRegistry, health: Health
) -> int:
    """Serve in `group` and return the bound port; a port that cannot be had is a
    ConfigError naming the setting (said once, instead of a traceback per task)."""
    try:
        port: int = await group.start(serve_http, settings, registry, health)
    except OSError as exc:
        address = f"{settings.host}:{settings.port}"
        # aiohttp rewords the OS's message around the address; the errno says it plainly.
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError([f"http.port: cannot listen on {address}: {why}"]) from None
    return port
