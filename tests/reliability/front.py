"""A front for the moto server: injects chaos into retryd's calls and records what moto did.

Two layers, outermost first, around moto's WSGI app (which the emulator already serves one
request at a time, as AWS never races):

* chaos: fails a seeded share of retryd's calls (only calls signed with CHAOS_KEY_ID, so the
  test's own set-up and observation never see a fault) in every way the wire can fail:
  throttling and 500/503 in the protocol's own error format, connections dropped before
  and after moto did the work, answers after the read timeout, truncated 200 answers,
  per-entry failures inside batch answers, and slow answers;
* record: every Lambda Invoke moto accepted, with when and its ClientContext, because a
  function without Docker keeps no trace of its invocations.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from retryd.sandbox.turns import WsgiApp, request_body
from tests.faults import FaultInjector, _describe, _Request

# retryd processes sign with this key id; the chaos layer faults only their calls.
CHAOS_KEY_ID = "retrydchaos"

THROTTLE = "throttle"
SERVER_ERROR = "5xx"
DROP_BEFORE = "drop-before"
DROP_AFTER = "drop-after"
LATE = "late"
TRUNCATED = "truncated"
PARTIAL = "partial"
SLOW = "slow"
KINDS = (THROTTLE, SERVER_ERROR, DROP_BEFORE, DROP_AFTER, LATE, TRUNCATED, PARTIAL, SLOW)

# Each service's own throttling code and HTTP status, as its API reference names them.
_THROTTLE_CODES: dict[str, tuple[str, int]] = {
    "sqs": ("RequestThrottled", 400),
    "sns": ("Throttling", 400),
    "lambda": ("TooManyRequestsException", 429),
    "states": ("ThrottlingException", 400),
    "events": ("ThrottlingException", 400),
    "dynamodb": ("ProvisionedThroughputExceededException", 400),
}
# Batch operations whose answers list entries one by one (JSON protocols only).
_PARTIAL_OPERATIONS = frozenset(
    {"SendMessageBatch", "DeleteMessageBatch", "ChangeMessageVisibilityBatch", "PutEvents"}
)


@dataclass(frozen=True)
class Claimed:
    """A ledger write moto took: who holds `key` now, in what state, until when."""

    at_s: float
    key: str
    owner: str
    state: str
    expires_at_s: float


@dataclass(frozen=True)
class Sent:
    """A target took a copy stamped with `key`, from the caller signing as `signer`."""

    at_s: float
    key: str
    signer: str
    target: str


@dataclass(frozen=True)
class Invocation:
    """One Lambda Invoke that moto accepted."""

    function: str
    payload: str
    at_s: float
    context: dict[str, str]


def _error(request: _Request, code: str, status: int) -> tuple[str, list[tuple[str, str]], bytes]:
    message = "injected by the reliability front"
    if request.protocol == "json":
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("x-amzn-query-error", f"{code};Sender"),
        ]
    elif request.protocol == "rest-json":
        body = json.dumps({"Type": "Service", "message": message}).encode()
        headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", code)]
    else:
        body = (
            "<ErrorResponse><Error><Type>Receiver</Type>"
            f"<Code>{code}</Code><Message>{message}</Message>"
            "</Error><RequestId>chaos</RequestId></ErrorResponse>"
        ).encode()
        headers = [("Content-Type", "text/xml")]
    headers.append(("Content-Length", str(len(body))))
    return f"{status} Chaos", headers, body


def _drop(environ: dict[str, Any]) -> None:
    """Close the client's connection under werkzeug, then let werkzeug see it as dropped."""
    connection = environ.get("werkzeug.socket")
    if isinstance(connection, socket.socket):
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)
    raise ConnectionResetError("dropped by the reliability front")


@dataclass
class _Answer:
    status: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def _call(app: WsgiApp, environ: dict[str, Any]) -> _Answer:
    """Run moto to completion and keep its whole answer, to pass on later (or not at all)."""
    answer = _Answer()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        answer.status, answer.headers = status, list(headers)

    chunks = app(environ, start_response)
    try:
        answer.body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return answer


def _with_length(headers: list[tuple[str, str]], length: int) -> list[tuple[str, str]]:
    kept = [(k, v) for k, v in headers if k.lower() not in {"content-length", "transfer-encoding"}]
    return [*kept, ("Content-Length", str(length))]


@dataclass
class Chaos:
    """What to fail: `rate` of retryd's calls, drawn from `kinds`, with a seeded generator."""

    rate: float
    seed: int
    kinds: tuple[str, ...] = KINDS
    # An answer this late is past retryd's read timeout.
    late_s: float = 2.5
    slow_s: float = 0.8
    # Operations never faulted (e.g. to keep a suite about one thing).
    spare: frozenset[str] = frozenset()
    # Services faulted (default: all).
    services: frozenset[str] | None = None


@dataclass
class Front:
    """The middleware; `faults` holds targeted faults (tests/faults.py) applied innermost."""

    faults: FaultInjector = field(default_factory=FaultInjector)
    chaos: Chaos | None = None
    injected: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    invocations: list[Invocation] = field(default_factory=list)
    # Streams and executions retryd asked about (read, described, redriven), whatever the
    # answer: a forged pointer must not make it touch one outside the allowlist.
    touched: Counter[str] = field(default_factory=Counter)
    # Ledger claims and stamped sends, in the order moto carried them out.
    timeline: list[Claimed | Sent] = field(default_factory=list)
    # (operation, text in its path or body, kind): injected once each into the first
    # chaotic call that matches, before any draw.
    forced: list[tuple[str, str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _claims_order: threading.Lock = field(default_factory=threading.Lock)
    _random: random.Random = field(default_factory=random.Random)

    def reset(self, chaos: Chaos | None = None) -> None:
        with self._lock:
            self.chaos = chaos
            self._random = random.Random(chaos.seed if chaos else 0)
            self.injected.clear()
            self.calls.clear()
            self.invocations.clear()
            self.touched.clear()
            self.timeline.clear()
            self.forced.clear()
        self.faults.clear()

    def calm(self) -> None:
        """No more chaos or targeted faults; what was recorded is kept."""
        with self._lock:
            self.chaos = None
            self.forced.clear()
        self.faults.clear()

    def middleware(self, app: WsgiApp) -> WsgiApp:
        inner = self.faults.middleware(self._recording(app))

        def front(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            body = request_body(environ)
            request = _describe(environ, body)
            chaotic = CHAOS_KEY_ID in environ.get("HTTP_AUTHORIZATION", "")
            kind = self._draw(request) if chaotic else None
            if kind is None:
                return inner(environ, start_response)
            return self._inject(kind, request, body, environ, start_response, inner)

        return front

    # -- chaos ------------------------------------------------------------------------------

    def _draw(self, request: _Request) -> str | None:
        chaos = self.chaos
        with self._lock:
            self.calls[request.service] += 1
            for forced in self.forced:
                operation, text, kind = forced
                if operation == request.operation and text in request.text:
                    self.forced.remove(forced)
                    self.injected[kind] += 1
                    return kind
            if chaos is None or request.operation in chaos.spare:
                return None
            if chaos.services is not None and request.service not in chaos.services:
                return None
            if self._random.random() >= chaos.rate:
                return None
            kinds = [
                kind
                for kind in chaos.kinds
                if kind != PARTIAL or request.operation in _PARTIAL_OPERATIONS
            ]
            kind = self._random.choice(kinds)
            self.injected[kind] += 1
            return kind

    def _inject(  # noqa: PLR0917 - one WSGI call, passed through
        self,
        kind: str,
        request: _Request,
        body: bytes,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        app: WsgiApp,
    ) -> Iterable[bytes]:
        chaos = self.chaos or Chaos(rate=0.0, seed=0)
        if kind == THROTTLE:
            code, status = _THROTTLE_CODES.get(request.service, ("ThrottlingException", 400))
            return self._answer(start_response, _error(request, code, status))
        if kind == SERVER_ERROR:
            code, status = self._random.choice(
                [("InternalFailure", 500), ("ServiceUnavailable", 503)]
            )
            return self._answer(start_response, _error(request, code, status))
        if kind == DROP_BEFORE:
            _drop(environ)
        if kind == PARTIAL:
            return self._partial(request, body, environ, start_response, app)
        if kind == SLOW:
            time.sleep(chaos.slow_s)
            return app(environ, start_response)
        answer = _call(app, environ)
        if kind == DROP_AFTER:
            _drop(environ)
        if kind == LATE:
            time.sleep(chaos.late_s)
        if kind == TRUNCATED and answer.status.startswith("200"):
            cut = answer.body[: len(answer.body) // 2]
            start_response(answer.status, _with_length(answer.headers, len(cut)))
            return [cut]
        start_response(answer.status, answer.headers)
        return [answer.body]

    @staticmethod
    def _answer(
        start_response: Callable[..., Any], error: tuple[str, list[tuple[str, str]], bytes]
    ) -> Iterable[bytes]:
        status, headers, payload = error
        start_response(status, headers)
        return [payload]

    def _partial(
        self,
        request: _Request,
        body: bytes,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        app: WsgiApp,
    ) -> Iterable[bytes]:
        """Keep some entries from moto and answer them as failed, the rest as moto did."""
        document = json.loads(body)
        entries = document.get("Entries") or []
        if len(entries) < 1:
            return app(environ, start_response)
        failed = {i for i in range(len(entries)) if self._random.random() < 0.5} or {0}
        document["Entries"] = [entry for i, entry in enumerate(entries) if i not in failed]
        if not document["Entries"]:
            answer = _Answer("200 OK", [("Content-Type", "application/x-amz-json-1.0")], b"{}")
        else:
            trimmed = json.dumps(document).encode()
            environ["wsgi.input"] = io.BytesIO(trimmed)
            environ["CONTENT_LENGTH"] = str(len(trimmed))
            answer = _call(app, environ)
            if not answer.status.startswith("200"):
                start_response(answer.status, answer.headers)
                return [answer.body]
        result = json.loads(answer.body or b"{}")
        if request.operation == "PutEvents":
            passed = iter(result.get("Entries", []))
            merged = [
                {"ErrorCode": "InternalFailure", "ErrorMessage": "injected"}
                if i in failed
                else next(passed)
                for i in range(len(entries))
            ]
            result = {"FailedEntryCount": len(failed), "Entries": merged}
        else:
            result.setdefault("Successful", [])
            result["Failed"] = [
                *result.get("Failed", []),
                *(
                    {
                        "Id": entries[i]["Id"],
                        "SenderFault": False,
                        "Code": "InternalError",
                        "Message": "injected",
                    }
                    for i in sorted(failed)
                ),
            ]
        payload = json.dumps(result).encode()
        start_response("200 OK", _with_length(answer.headers, len(payload)))
        return [payload]

    # -- record -----------------------------------------------------------------------------

    def _recording(self, app: WsgiApp) -> WsgiApp:
        def record(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            # A copy is stamped when its sender sent it, not when moto got round to it: the
            # emulator serves one request at a time, so a request a process made just before
            # it was killed may be carried out a while after the kill.
            sent_s = time.time()
            payload = request_body(environ)
            request = _describe(environ, payload)
            touched = _touched(request, payload)
            if touched:
                with self._lock:
                    self.touched[touched] += 1
            ordered: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if request.service == "dynamodb" and request.operation in _CLAIM_WRITES:
                # Kept in the order moto carried them out: the last claim of a key recorded
                # is the one in force (claim_breaches).
                ordered = self._claims_order
            with ordered:
                answer = _call(app, environ)
                if answer.status[:1] == "2":
                    self._remember(request, environ, payload, sent_s)
            start_response(answer.status, answer.headers)
            return [answer.body]

        return record

    def _remember(
        self, request: _Request, environ: dict[str, Any], payload: bytes, sent_s: float
    ) -> None:
        now_s = time.time()
        signer = _signer(environ.get("HTTP_AUTHORIZATION", ""))
        events: list[Claimed | Sent] = []
        if request.operation == "Invoke":
            path = unquote(environ.get("PATH_INFO", ""))
            function = path.split("/functions/", 1)[1].rsplit("/invocations", 1)[0]
            context = _client_context(environ.get("HTTP_X_AMZ_CLIENT_CONTEXT", ""))
            with self._lock:
                self.invocations.append(
                    Invocation(
                        function.rsplit(":", 1)[-1] if ":" in function else function,
                        payload.decode("utf-8", "replace"),
                        sent_s,
                        context,
                    )
                )
            if "retryd.key" in context:
                events.append(Sent(sent_s, context["retryd.key"], signer, function))
        else:
            events.extend(Sent(sent_s, key, signer, to) for key, to in _stamped(request, payload))
        if request.service == "dynamodb":
            events.extend(_claims_written(request.operation, payload, now_s))
        if events:
            with self._lock:
                self.timeline.extend(events)


# Calls that name a stream or an execution rather than a target, and the field naming it.
_TOUCHING = {
    "GetShardIterator": ("StreamARN", "StreamArn"),
    "GetRecords": ("StreamARN",),
    "DescribeExecution": ("executionArn",),
    "RedriveExecution": ("executionArn",),
}


def _touched(request: _Request, payload: bytes) -> str:
    """The stream or execution ARN a call names; "" for any other call."""
    fields = _TOUCHING.get(request.operation)
    if fields is None or request.protocol != "json":
        return ""
    for name in fields:
        value = _json_field(payload, name)
        if isinstance(value, str):
            return value
    # DynamoDB Streams' GetRecords names only the iterator, which starts with the stream.
    iterator = _json_field(payload, "ShardIterator")
    return iterator.split("|", 1)[0] if isinstance(iterator, str) else "?"


_CLAIM_WRITES = frozenset({"PutItem", "TransactWriteItems"})


def _claims_written(operation: str, payload: bytes, now_s: float) -> Iterator[Claimed]:
    """The claims a ledger write carries: a PutItem's item, or each Put of a transaction."""
    document = json.loads(payload)
    if operation == "PutItem":
        items = [document.get("Item", {})]
    elif operation == "TransactWriteItems":
        items = [
            entry["Put"].get("Item", {})
            for entry in document.get("TransactItems", [])
            if "Put" in entry
        ]
    else:
        return
    for item in items:
        if "claim_owner" in item:
            yield Claimed(
                now_s,
                item["key"]["S"],
                item["claim_owner"]["S"],
                item.get("claim_state", {}).get("S", ""),
                float(item["claim_expires_at_s"]["N"]),
            )


def _stamped(request: _Request, payload: bytes) -> Iterator[tuple[str, str]]:
    """(retryd.key, target) of each message an SQS or SNS send carries."""
    if request.service == "sqs" and request.operation in {"SendMessage", "SendMessageBatch"}:
        document = json.loads(payload)
        for entry in document.get("Entries", [document]):
            key = entry.get("MessageAttributes", {}).get("retryd.key", {}).get("StringValue")
            if key:
                yield key, str(document.get("QueueUrl"))
    elif request.service == "sns" and request.operation in {"Publish", "PublishBatch"}:
        form = parse_qs(payload.decode("utf-8", "replace"))
        topic = form.get("TopicArn", [""])[0]
        for name, values in form.items():
            if name.endswith(".Name") and values == ["retryd.key"]:
                yield form.get(name[: -len(".Name")] + ".Value.StringValue", [""])[0], topic


def _signer(authorization: str) -> str:
    match = re.search(r"Credential=([^/]+)/", authorization)
    return match.group(1) if match else ""


def _json_field(body: bytes, name: str) -> object:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document.get(name) if isinstance(document, dict) else None


def _client_context(header: str) -> dict[str, str]:
    if not header:
        return {}
    try:
        document = json.loads(base64.b64decode(header))
    except ValueError:
        return {}
    custom = document.get("custom", {}) if isinstance(document, dict) else {}
    return {str(k): str(v) for k, v in custom.items()} if isinstance(custom, dict) else {}
