"""The console's aiohttp application: pages and their JSON API, behind one security middleware."""

from __future__ import annotations

import structlog
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from retryd.console import api, pages
from retryd.console.auth import Authenticator
from retryd.console.context import CONSOLE, HERE, Console
from retryd.console.documents import failed_checks
from retryd.console.security import security_middleware

log = structlog.get_logger("retryd.console")


def build_app(console: Console, auth: Authenticator) -> web.Application:
    """The application, without binding a socket."""
    app = web.Application(
        middlewares=[security_middleware(auth, console.metrics)],
        # A pause, a cancel or a redrive's selectors: a few fields; nothing bigger is ever posted.
        client_max_size=64 * 1024,
    )
    app[CONSOLE] = console

    async def stop_jobs(_: web.Application) -> None:
        # Each job saves itself as stopped on its way out: resumable, from here or the CLI.
        await console.background.close()

    app.on_cleanup.append(stop_jobs)

    async def metrics(_: web.Request) -> web.Response:
        encode, content_type = choose_encoder("")
        return web.Response(
            body=encode(console.metrics.registry), headers={"Content-Type": content_type}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        failed = await failed_checks(console.sources)
        if not failed:
            return web.Response(text="ok\n")
        # /readyz answers anyone (an orchestrator's probe): it names the check that
        # failed, and the reason (paths, AWS errors) goes to the log only.
        for check, why in failed.items():
            log.warning("console-not-ready", check=check, error=why)
        return web.Response(status=503, text=f"not ready: {', '.join(failed)} failed\n")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_static("/static/", HERE / "static", append_version=False)
    api.add_routes(app.router)
    pages.add_routes(app.router)
    return app
