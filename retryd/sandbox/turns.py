"""Serves moto one request at a time, as AWS never races two; long polls wait apart.

moto's models are not safe across its server's threads. DynamoDB: TransactWriteItems
deep-copies the whole table (its roll-back copy) while another request may add an item,
and the copy fails with "dictionary changed size during iteration", a 500 that DynamoDB
never gives. SQS: a delete rebuilds the queue's list of messages from a copy, so a delete
or a send made meanwhile is undone (deleted messages come back, a sent one is lost), and
two receives scanning at once both take one message. SNS, EventBridge and Lambda's event
sources add to SQS queues from their own requests, so one turn serves every service.

A long poll would hold the turn for up to 20 s. It is asked as short polls instead, each
in its own turn, waiting between them outside it: until a request that may add to its
queue is served, no sooner than LONG_POLL_STEP_S after its last look, and at least every
LONG_POLL_IDLE_S (a message whose visibility ran out, or one moto moves into a DLQ as
another queue is received from, comes back with no such request; moto's own wait looks
again every second too). A receive with no WaitTimeSeconds waits as its queue's
ReceiveMessageWaitTimeSeconds says, asked of moto first.

What stays held: a request during which moto itself calls out over HTTP (SNS delivering
to an http(s) subscription, EventBridge API destinations) keeps its turn until that call
returns, so an endpoint that calls the emulator back before answering waits for it. The
sandbox, the tests and the benchmarks make no such subscription.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

LONG_POLL_STEP_S = 0.02
LONG_POLL_IDLE_S = 1.0
# SQS's bounds on WaitTimeSeconds; a value outside them goes to moto as asked, to be refused.
MAX_WAIT_S = 20

_JSON_SQS = "AmazonSQS."
_FORM = "application/x-www-form-urlencoded"


def request_body(environ: dict[str, Any]) -> bytes:
    """The request's body, read once and put back, for a middleware before moto reads it."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body: bytes = environ["wsgi.input"].read(length) if length else b""
    _set_body(environ, body)
    return body


def _set_body(environ: dict[str, Any], body: bytes) -> None:
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))


@dataclass
class _SqsCall:
    """An SQS request, in either of its protocols: its action and its parameters."""

    action: str
    params: dict[str, Any]
    form: bool

    @property
    def queue(self) -> str | None:
        """The queue it names (its URL's account and name: hosts differ), if any."""
        url = self.params.get("QueueUrl")
        if not isinstance(url, str):
            return None
        return "/".join(urlsplit(url).path.strip("/").split("/")[-2:])

    def encoded(self) -> bytes:
        if self.form:
            return urlencode(self.params).encode()
        return json.dumps(self.params).encode()


def _sqs_call(environ: dict[str, Any]) -> _SqsCall | None:
    """The SQS request `environ` carries; None for another service's, or one unreadable."""
    target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
    if target.startswith(_JSON_SQS):
        try:
            params = json.loads(request_body(environ) or b"{}")
        except ValueError:
            return None  # moto answers what it cannot read itself
        if not isinstance(params, dict):
            return None
        return _SqsCall(target.removeprefix(_JSON_SQS), params, form=False)
    query = (
        not target
        and str(environ.get("CONTENT_TYPE", "")).startswith(_FORM)
        and "/sqs/aws4_request" in str(environ.get("HTTP_AUTHORIZATION", ""))
    )
    if not query:
        return None
    params = dict(parse_qsl(request_body(environ).decode("utf-8", "replace"), True))
    return _SqsCall(str(params.get("Action", "")), params, form=True)


def _wakes_everyone(environ: dict[str, Any]) -> bool:
    """Whether a request other than an SQS one may add to a queue (DynamoDB's never do)."""
    return not str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("DynamoDB_")


class _Turns:
    """moto's requests one at a time; counts of those that may have added to a queue."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._changes = threading.Condition()
        # Requests that may have added to any queue, and to each queue by name.
        self._everywhere = 0
        self._by_queue: Counter[str] = Counter()

    def take(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        *,
        everywhere: bool = False,
        queue: str | None = None,
    ) -> list[bytes]:
        """The whole answer; counted as a change everywhere, or to `queue`, as told."""
        with self._lock:
            # The whole body under the lock: moto may build it lazily.
            chunks = list(self._app(environ, start_response))
            if everywhere or queue is not None:
                with self._changes:
                    if everywhere:
                        self._everywhere += 1
                    if queue is not None:
                        self._by_queue[queue] += 1
                    self._changes.notify_all()
        return chunks

    def seen(self, queue: str | None) -> tuple[int, int]:
        """The counts a change that may add to `queue` moves on."""
        with self._changes:
            return self._counts(queue)

    def wait_past(self, queue: str | None, seen: tuple[int, int], timeout_s: float) -> None:
        """Until a change after `seen` may have added to `queue`, or `timeout_s` has passed."""
        with self._changes:
            self._changes.wait_for(lambda: self._counts(queue) != seen, timeout=timeout_s)

    def _counts(self, queue: str | None) -> tuple[int, int]:
        return self._everywhere, self._by_queue[queue] if queue is not None else 0


def one_at_a_time(app: WsgiApp) -> WsgiApp:
    """`app` (moto's) serving one request at a time; long polls wait outside their turns."""
    turns = _Turns(app)

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        call = _sqs_call(environ)
        if call is None:
            return turns.take(environ, start_response, everywhere=_wakes_everyone(environ))
        if call.action != "ReceiveMessage":
            # A receive adds nothing (polls would wake each other with their empty looks).
            return turns.take(environ, start_response, queue=call.queue)
        wait_s = _wait_s(turns, environ, call)
        if wait_s <= 0:
            return turns.take(environ, start_response)
        call.params["WaitTimeSeconds"] = 0
        return _polled(turns, environ, start_response, call, wait_s)

    return serve


def _wait_s(turns: _Turns, environ: dict[str, Any], call: _SqsCall) -> float:
    """How long a receive may wait; 0 to hand it to moto as it is."""
    asked = call.params.get("WaitTimeSeconds")
    if asked is None:
        asked = _queue_wait_s(turns, environ, call)
    try:
        wait_s = float(asked)
    except (TypeError, ValueError):
        return 0.0
    return wait_s if 0 < wait_s <= MAX_WAIT_S else 0.0


def _queue_wait_s(turns: _Turns, environ: dict[str, Any], call: _SqsCall) -> Any:
    """The queue's ReceiveMessageWaitTimeSeconds, asked of moto in JSON; None if unknown."""
    if not isinstance(call.params.get("QueueUrl"), str):
        return None
    ask = dict(environ)
    ask["HTTP_X_AMZ_TARGET"] = _JSON_SQS + "GetQueueAttributes"
    ask["CONTENT_TYPE"] = "application/x-amz-json-1.0"
    question = {
        "QueueUrl": call.params["QueueUrl"],
        "AttributeNames": ["ReceiveMessageWaitTimeSeconds"],
    }
    _set_body(ask, json.dumps(question).encode())
    statuses: list[str] = []
    chunks = turns.take(ask, lambda status, *_: statuses.append(status))
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        return None
    if not statuses or not statuses[0].startswith("200") or not isinstance(answer, dict):
        return None
    attributes = answer.get("Attributes")
    return attributes.get("ReceiveMessageWaitTimeSeconds") if isinstance(attributes, dict) else None


def _polled(
    turns: _Turns,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    call: _SqsCall,
    wait_s: float,
) -> list[bytes]:
    """`call` asked as short polls until one takes a message, fails, or `wait_s` has passed.

    The answer is the last poll's.
    """
    body, queue = call.encoded(), call.queue
    deadline_s = time.monotonic() + wait_s
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def keep(status: str, headers: list[tuple[str, str]], *_: object) -> None:
        started.append((status, headers))

    while True:
        # Read before the look: a change served while it looks wakes the wait after it.
        seen = turns.seen(queue)
        _set_body(environ, body)
        chunks = turns.take(environ, keep)
        status, headers = started[-1]
        looked_s = time.monotonic()
        if looked_s >= deadline_s or not _empty(status, headers, chunks):
            start_response(status, headers)
            return chunks
        turns.wait_past(queue, seen, min(LONG_POLL_IDLE_S, deadline_s - looked_s))
        time.sleep(max(0.0, min(looked_s + LONG_POLL_STEP_S, deadline_s) - time.monotonic()))


def _empty(status: str, headers: list[tuple[str, str]], chunks: list[bytes]) -> bool:
    """Whether a receive's answer is a success with no message, in JSON or XML."""
    if not status.startswith("200"):
        return False
    body = b"".join(chunks)
    content_type = dict((k.lower(), v) for k, v in headers).get("content-type", "")
    if "xml" in content_type or body.lstrip().startswith(b"<"):
        return b"<Message>" not in body
    try:
        answer = json.loads(body or b"{}")
    except ValueError:
        return False
    return isinstance(answer, dict) and not answer.get("Messages")
