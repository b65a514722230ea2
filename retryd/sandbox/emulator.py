"""An in-process moto server on a free loopback port, for the sandbox, tests and benchmarks.

moto is an optional extra (`retryd-aws[sandbox]`): this module imports it lazily so
that production images, which leave it out, never pay for it.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from retryd.errors import SandboxUnavailableError
from retryd.version import SANDBOX_INSTALL_HINT

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Middleware = Callable[[WsgiApp], WsgiApp]

INSTALL_HINT = SANDBOX_INSTALL_HINT


def _moto_app() -> tuple[WsgiApp, type[Any]]:
    # moto's recorder writes to ./moto_recording by default, littering the caller's
    # working directory; it reads this once, when moto is first imported.
    os.environ.setdefault(
        "MOTO_RECORDER_FILEPATH",
        os.path.join(tempfile.gettempdir(), f"retryd-moto-recording-{os.getpid()}"),
    )
    try:
        from moto.moto_server.werkzeug_app import (  # noqa: PLC0415 - optional extra
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
    except ImportError as exc:
        raise SandboxUnavailableError(
            f"the embedded AWS emulator needs moto, which is not installed: {INSTALL_HINT}"
        ) from exc
    return DomainDispatcherApplication(create_backend_app), MotoRequestHandler


class MotoServer:
    """moto's WSGI app served by werkzeug in a daemon thread; `middleware` may wrap it."""

    def __init__(
        self, middleware: Middleware | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._middleware = middleware
        self._host = host
        self._port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("server not started")
        return f"http://{self._host}:{self._server.server_port}"

    def start(self) -> MotoServer:
        app, moto_handler = _moto_app()
        try:
            from werkzeug.serving import make_server  # noqa: PLC0415 - only with the extra
        except ImportError as exc:
            # moto[server] brings werkzeug; a moto installed without the extra does not.
            raise SandboxUnavailableError(
                f"the embedded AWS emulator needs werkzeug, which is not installed: {INSTALL_HINT}"
            ) from exc

        class _QuietHandler(moto_handler):  # type: ignore[misc, valid-type]
            # One access-log line per AWS call would drown the sandbox's own output.
            def log_request(self, *args: object, **kwargs: object) -> None:
                pass

        handler = _QuietHandler
        if self._middleware is not None:
            app = self._middleware(app)
        # Port 0 (the default): the kernel picks a free port, so parallel runs never collide.
        self._server = make_server(
            self._host, self._port, app, threaded=True, request_handler=handler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="moto-server", daemon=True
        )
        self._thread.start()
        self.configure({"lambda": {"use_docker": False}})
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _post(self, path: str, payload: object | None = None) -> bytes:
        data = json.dumps(payload).encode() if payload is not None else b""
        request = urllib.request.Request(  # noqa: S310 - our own loopback server
            f"{self.url}{path}", data=data, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            body: bytes = response.read()
            return body

    def configure(self, config: dict[str, Any]) -> None:
        """POST /moto-api/config (e.g. Lambda without Docker)."""
        self._post("/moto-api/config", config)

    def reset(self) -> None:
        """Forget every resource, then re-apply the no-Docker Lambda setting."""
        self._post("/moto-api/reset")
        self.configure({"lambda": {"use_docker": False}})

    def start_recording(self) -> None:
        self._post("/moto-api/recorder/reset-recording")
        self._post("/moto-api/recorder/start-recording")

    def recording(self) -> list[dict[str, Any]]:
        """Every request moto recorded since `start_recording`, oldest first."""
        with urllib.request.urlopen(  # noqa: S310 - our own loopback server
            f"{self.url}/moto-api/recorder/download-recording", timeout=30
        ) as response:
            lines = response.read().decode().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
