"""Fault injection for the moto server: a WSGI middleware that answers chosen AWS calls with errors.

A fault matches on the signing service (from the SigV4 credential scope), the
operation (X-Amz-Target for JSON protocols, the Action form field for query
protocols, the path for Lambda's REST API) and, optionally, a substring of the
path or body (a function name, a queue URL). It answers in the wire format of
that protocol, so botocore parses it exactly as it would a real AWS error.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from retryd.sandbox.turns import WsgiApp, request_body

_CONTENT_TYPES = {
    "json": "application/x-amz-json-1.0",
    "rest-json": "application/json",
    "query": "text/xml",
    "rest-xml": "application/xml",
}
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")


@dataclass
class Fault:
    """Answer matching calls with `code`/`status`; `times` None means until removed.

    With `delay_s`, the call waits that long first; with `code=None` as well it is
    then passed on to moto unchanged (a slow but working AWS). With `answer`, the
    call is answered 200 with that body instead (a truncated answer, a proxy's page).
    With `landed`, the call reaches moto first and only its answer is replaced by the
    error: the write happened, and the caller never heard (a connection dropped).
    `fields` go into a JSON protocol's error body beside the code: an error's modelled
    members, such as a cancelled transaction's CancellationReasons.
    """

    service: str
    operation: str
    code: str | None = "ThrottlingException"
    status: int = 400
    contains: str | None = None
    times: int | None = None
    message: str = "injected fault"
    delay_s: float = 0.0
    answer: str | None = None
    landed: bool = False
    fields: dict[str, Any] = field(default_factory=dict)
    hits: int = 0


@dataclass
class _Request:
    service: str
    operation: str
    protocol: str
    text: str


def _describe(environ: dict[str, Any], body: bytes) -> _Request:
    scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    service = scope.group(1) if scope else ""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    path = environ.get("PATH_INFO", "")
    text = path + "\n" + body.decode("utf-8", "replace")
    if target:
        return _Request(service, target.rsplit(".", 1)[-1], "json", text)
    if service == "lambda":
        operation = "Invoke" if path.endswith("/invocations") else environ["REQUEST_METHOD"]
        return _Request(service, operation, "rest-json", text)
    if service == "s3":
        # S3's operations are HTTP methods on a bucket or key path; `contains` picks the path.
        return _Request(service, environ["REQUEST_METHOD"], "rest-xml", text)
    form = parse_qs(body.decode("utf-8", "replace"))
    return _Request(service, form.get("Action", [""])[0], "query", text)


def _error_response(request: _Request, fault: Fault) -> tuple[str, list[tuple[str, str]], bytes]:
    assert fault.code is not None
    status = f"{fault.status} Injected"
    if request.protocol == "json":
        body = json.dumps({"__type": fault.code, "message": fault.message, **fault.fields}).encode()
        headers = [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("x-amzn-query-error", f"{fault.code};Sender"),
        ]
    elif request.protocol == "rest-xml":
        body = (
            f"<Error><Code>{fault.code}</Code><Message>{fault.message}</Message>"
            "<RequestId>injected</RequestId></Error>"
        ).encode()
        headers = [("Content-Type", "application/xml")]
    elif request.protocol == "rest-json":
        body = json.dumps({"Type": "User", "message": fault.message}).encode()
        headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", fault.code)]
    else:
        body = (
            "<ErrorResponse><Error><Type>Sender</Type>"
            f"<Code>{fault.code}</Code><Message>{fault.message}</Message>"
            "</Error><RequestId>injected</RequestId></ErrorResponse>"
        ).encode()
        headers = [("Content-Type", "text/xml")]
    headers.append(("Content-Length", str(len(body))))
    return status, headers, body


@dataclass
class FaultInjector:
    """Holds the active faults; wrap moto's app with `middleware`."""

    faults: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Set by clear(): wakes delayed calls, which then fail instead of reaching moto,
    # so a slow call from one test can never write into the next test's world.
    _cleared: threading.Event = field(default_factory=threading.Event)

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self._cleared.set()
            self._cleared = threading.Event()

    def _match(self, request: _Request) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.service != request.service or fault.operation != request.operation:
                    continue
                if fault.contains is not None and fault.contains not in request.text:
                    continue
                if fault.times is not None and fault.hits >= fault.times:
                    continue
                fault.hits += 1
                return fault
        return None

    def middleware(self, app: WsgiApp) -> WsgiApp:
        def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            body = request_body(environ)
            request = _describe(environ, body)
            fault = self._match(request)
            if fault is not None and fault.delay_s:
                cleared = self._cleared
                if cleared.wait(fault.delay_s):
                    fault = Fault(
                        fault.service,
                        fault.operation,
                        "ServiceUnavailable",
                        503,
                        message="delayed call abandoned: its test ended",
                    )
            if fault is not None and fault.answer is not None:
                payload = fault.answer.encode()
                start_response(
                    "200 OK",
                    [
                        ("Content-Type", _CONTENT_TYPES[request.protocol]),
                        ("Content-Length", str(len(payload))),
                    ],
                )
                return [payload]
            if fault is None or fault.code is None:
                return app(environ, start_response)
            if fault.landed:
                # Served whole (moto builds some answers lazily), then thrown away.
                list(app(environ, lambda *_args: None))
            status, headers, payload = _error_response(request, fault)
            start_response(status, headers)
            return [payload]

        return wrapped
