"""`retryd console`: check the sign-in set-up, open the store and clients, serve until stopped."""

from __future__ import annotations

import anyio
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from retryd.aws import open_clients
from retryd.console.alb_oidc import AlbOidcAuth
from retryd.console.app import build_app
from retryd.console.auth import Authenticator, NoAuth, TokenAuth, check_none_allowed
from retryd.console.context import Console, templates
from retryd.console.documents import Sources
from retryd.console.metrics import ConsoleMetrics
from retryd.control import audit, control_store
from retryd.errors import ConfigError
from retryd.settings import Settings

log = structlog.get_logger("retryd.console")
_SHUTDOWN_TIMEOUT_S = 5.0


def split_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets) as (host, port); ConfigError when not."""
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:  # noqa: PLR2004
        raise ConfigError([f"console.listen: give HOST:PORT, not {listen!r}"])
    return host, int(port_text)


def authenticator(settings: Settings, host: str) -> Authenticator:
    """The sign-in of `[console] auth`, checked before anything listens."""
    mode = settings.console.auth
    if mode == "none":
        check_none_allowed(host)
        return NoAuth()
    if mode == "token":
        return TokenAuth(settings.console)
    return AlbOidcAuth(settings.console)


async def serve_console(settings: Settings, listen: str | None = None) -> None:
    """Serve the console until cancelled (Ctrl-C, SIGTERM)."""
    host, port = split_listen(listen or settings.console.listen)
    auth = authenticator(settings, host)
    async with open_clients(settings.aws) as clients:
        console = Console(
            sources=Sources(settings, control_store(settings.ledger, clients), clients),
            caller=await audit.caller_identity(settings.aws),
            metrics=ConsoleMetrics(CollectorRegistry()),
            templates=templates(),
        )
        runner = web.AppRunner(
            build_app(console, auth), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(
                    [f"console.listen: cannot listen on {host}:{port}: {exc}"]
                ) from None
            bound = runner.addresses[0]
            log.info(
                "console-listening", url=f"http://{host}:{bound[1]}/", auth=settings.console.auth
            )
            print(f"retryd console listening on http://{host}:{bound[1]}/", flush=True)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()
