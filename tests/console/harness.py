"""The console served from a thread (so a test, or Playwright's sync API, can call it)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from anyio.from_thread import BlockingPortal, start_blocking_portal
from prometheus_client import CollectorRegistry

from retryd.aws import AwsClients
from retryd.console.app import build_app
from retryd.console.auth import Authenticator
from retryd.console.context import Console, templates
from retryd.console.documents import Sources
from retryd.console.metrics import ConsoleMetrics
from retryd.control.memory import MemoryControlStore, MemoryDocs
from retryd.control.store import ControlStore
from retryd.settings import Settings

CALLER = "arn:aws:sts::123456789012:assumed-role/retryd-console/task"
OPERATOR_TOKEN = "o" * 40
VIEWER_TOKEN = "v" * 40


def console_for(
    settings: Settings, store: ControlStore | None = None, clients: AwsClients | None = None
) -> Console:
    """A console over `store` (default: a fresh in-memory one of its own)."""
    return Console(
        sources=Sources(settings, store or MemoryControlStore(MemoryDocs()), clients),
        caller=CALLER,
        metrics=ConsoleMetrics(CollectorRegistry()),
        templates=templates(),
    )


@contextmanager
def serving(
    console: Console, auth: Authenticator, portal: BlockingPortal | None = None
) -> Iterator[str]:
    """The console on a free loopback port, for the block's length; yields its base URL."""
    with start_blocking_portal() if portal is None else _same(portal) as running:
        runner = web.AppRunner(build_app(console, auth), access_log=None)

        async def start() -> int:
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            port: int = runner.addresses[0][1]
            return port

        port = running.call(start)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            running.call(runner.cleanup)


@contextmanager
def _same(portal: BlockingPortal) -> Iterator[BlockingPortal]:
    yield portal


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    text: str
    location: str | None = None

    def json(self) -> Any:
        return json.loads(self.text)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_: Any, **__: Any) -> None:
        return None


@dataclass
class Caller:
    """Requests to the console as one client: its headers on every request."""

    base: str
    headers: dict[str, str] = field(default_factory=dict)

    def __call__(
        self,
        path: str,
        method: str = "GET",
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
    ) -> Reply:
        data = None
        sent = {**self.headers, **(headers or {})}
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(  # noqa: S310 - always http://127.0.0.1 here
            self.base + path, data=data, method=method, headers=sent
        )
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=10) as response:
                return Reply(response.status, dict(response.headers), response.read().decode())
        except urllib.error.HTTPError as error:
            return Reply(
                error.code,
                dict(error.headers),
                error.read().decode("utf-8", "replace"),
                error.headers.get("Location"),
            )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}
