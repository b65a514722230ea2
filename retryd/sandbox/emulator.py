"""An in-process moto server on a free loopback port, for the sandbox, tests and benchmarks.

moto is an optional extra (`retryd-aws[sandbox]`): this module imports it lazily so
that production images, which leave it out, never pay for it.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any
from wsgiref.util import request_uri

from retryd.errors import SandboxUnavailableError
from retryd.sandbox.turns import WsgiApp, one_at_a_time, request_body
from retryd.version import SANDBOX_INSTALL_HINT

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

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


class _Recorder:
    """Every request that reaches moto, kept in this server's memory while recording is on.

    moto's own recorder is one per process, appends to one file named by an environment
    variable (which subprocesses inherit) and writes an entry and its newline as two writes:
    two servers, or two concurrent requests on one, interleave or truncate each other's
    entries (a test once read two requests on one line, and another read none of nine).
    Entries have moto's shape (headers, method, url, body, body_encoded), so readers of
    either are the same.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._on = False
        self._entries: list[dict[str, Any]] = []

    def start(self) -> None:
        with self._lock:
            self._entries = []
            self._on = True

    def stop(self) -> None:
        with self._lock:
            self._on = False

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._entries)

    def wrap(self, app: WsgiApp) -> WsgiApp:
        def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if self._on:
                body = request_body(environ)
                headers = {
                    key[5:].replace("_", "-").title(): value
                    for key, value in environ.items()
                    if key.startswith("HTTP_")
                }
                if environ.get("CONTENT_TYPE"):
                    headers["Content-Type"] = environ["CONTENT_TYPE"]
                entry = {
                    "headers": headers,
                    "method": environ.get("REQUEST_METHOD", ""),
                    # Undecoded, as moto keeps it: an ARN in a Lambda path arrives escaped.
                    "url": request_uri(environ, include_query=True),
                    "body": base64.b64encode(body).decode("ascii"),
                    "body_encoded": True,
                }
                with self._lock:
                    if self._on:
                        self._entries.append(entry)
            return app(environ, start_response)

        return serve


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
        self._recorder = _Recorder()

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
        # Around moto alone: a middleware's delay (the tests' faults) holds no other request.
        app = one_at_a_time(app)
        # Innermost but that: what is recorded is what reached moto, after any middleware's
        # answer.
        app = self._recorder.wrap(app)
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
        """Forget what was recorded and record every request from now on."""
        self._recorder.start()

    def stop_recording(self) -> None:
        self._recorder.stop()

    def recording(self) -> list[dict[str, Any]]:
        """Every request this server passed to moto since `start_recording`, oldest first."""
        return self._recorder.entries()
