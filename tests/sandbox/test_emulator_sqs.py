"""The embedded emulator's SQS keeps every message under concurrent requests, as SQS does.

moto's SQS is not safe across its server's threads. A delete rebuilds the queue's
message list from a copy, so a delete or send made meanwhile is undone: a deleted batch
comes back, or a sent message is lost. Two receivers scanning at once can both take
one message. CI met the first: two replicas had delivered all 60 copies exactly once,
yet a batch of 10 was back in its DLQ. The emulator now handles every request one at a
time and waits out a long poll outside that turn.

The tests with a stand-in for moto check that rule and fail without it every run. The
tests against moto itself show what it protects: with a GIL switch interval short
enough that threads switch between almost any two steps, before the change they failed
about one run in two (400 messages: 431 left in a queue that should have held 400; 100
and 200: a message received twice). A server of its own: the suite's shared one is
reset by other tests.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from retryd.sandbox import turns
from retryd.sandbox.emulator import MotoServer
from retryd.sandbox.turns import one_at_a_time, request_body
from tests.e2e.test_accounts import depth
from tests.world import emulator_client

THREADS = 8
PREFILLED = 100
# Python's default is 5 ms; this makes a thread switch between almost any two steps.
SWITCH_INTERVAL_S = 2e-6


@pytest.fixture
def server() -> Iterator[MotoServer]:
    before_s = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        with MotoServer() as started:
            yield started
    finally:
        sys.setswitchinterval(before_s)


@pytest.fixture
def sqs(server: MotoServer) -> Any:
    config = Config(retries={"max_attempts": 1}, max_pool_connections=THREADS + 2)
    return emulator_client(server.url, "sqs", config)


@pytest.fixture
def moto_url(server: MotoServer) -> str:
    return server.url


def _queue(sqs: Any, name: str) -> str:
    # moto's state is the process's: a name of its own, whatever other servers left.
    url: str = sqs.create_queue(QueueName=f"{name}-{uuid.uuid4().hex}")["QueueUrl"]
    return url


def _prefill(sqs: Any, name: str, count: int) -> str:
    url = _queue(sqs, name)
    for start in range(0, count, 10):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(n), "MessageBody": f"old-{n}"} for n in range(start, start + 10)],
        )
    return url


def _run(*targets: Any) -> None:
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_deletes_and_sends_side_by_side_lose_nothing_and_bring_nothing_back(sqs: Any) -> None:
    url = _prefill(sqs, "side-by-side", PREFILLED)
    handles: list[str] = []
    while len(handles) < PREFILLED:
        answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600)
        handles += [m["ReceiptHandle"] for m in answer.get("Messages", [])]
    deleters = THREADS // 2
    sent: list[str] = []
    failures: list[str] = []

    def delete(share: list[str]) -> None:
        for start in range(0, len(share), 10):
            batch = share[start : start + 10]
            answer = sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(n), "ReceiptHandle": h} for n, h in enumerate(batch)],
            )
            failures.extend(f["Code"] for f in answer.get("Failed", []))

    def send(sender: int) -> None:
        for n in range(PREFILLED // deleters):
            body = f"new-{sender}-{n}"
            sqs.send_message(QueueUrl=url, MessageBody=body)
            sent.append(body)

    _run(
        *(lambda d=d: delete(handles[d::deleters]) for d in range(deleters)),
        *(lambda s=s: send(s) for s in range(THREADS - deleters)),
    )

    assert failures == []
    # Every deleted message stays deleted and every sent one is there.
    assert depth(sqs, url.rsplit("/", 1)[-1]) == len(sent)
    left: list[str] = []
    while answer := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
        left += [m["Body"] for m in answer]
    assert sorted(left) == sorted(sent)


def test_receivers_side_by_side_never_take_one_message_twice(sqs: Any) -> None:
    url = _prefill(sqs, "one-taker", PREFILLED)
    taken: list[str] = []

    def receive() -> None:
        # One message a call: the more scans, the more chances for two to meet.
        while answer := sqs.receive_message(QueueUrl=url, VisibilityTimeout=600).get("Messages"):
            taken.extend(m["MessageId"] for m in answer)

    _run(*(receive for _ in range(THREADS)))

    assert len(taken) == PREFILLED
    assert len(set(taken)) == PREFILLED


def test_a_long_poll_takes_a_message_sent_while_it_waits(sqs: Any) -> None:
    """The wait is outside the one-at-a-time turn: the send is not held behind the poll."""
    url, other = _queue(sqs, "long-poll"), _queue(sqs, "other")
    polled: list[dict[str, Any]] = []
    done = threading.Event()

    def poll() -> None:
        polled.extend(sqs.receive_message(QueueUrl=url, WaitTimeSeconds=10).get("Messages", []))
        done.set()

    def send() -> None:
        # Another queue first: a request held behind the poll's turn would wait it out.
        sqs.send_message(QueueUrl=other, MessageBody="meanwhile")
        time.sleep(0.2)
        sqs.send_message(QueueUrl=url, MessageBody="awaited")

    _run(poll, send)

    assert [m["Body"] for m in polled] == ["awaited"]
    assert done.is_set()


def test_a_long_poll_is_woken_by_a_send_to_its_queue(
    sqs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not by its idle timer: with that at a minute, the message still comes at once."""
    monkeypatch.setattr(turns, "LONG_POLL_IDLE_S", 60.0)
    url = _queue(sqs, "woken")
    started_s = time.monotonic()

    def send() -> None:
        time.sleep(0.2)
        sqs.send_message(QueueUrl=url, MessageBody="awaited")

    sender = threading.Thread(target=send)
    sender.start()
    polled = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=20).get("Messages", [])
    sender.join()

    assert [m["Body"] for m in polled] == ["awaited"]
    # Far from the 20 s an unwoken poll would wait.
    assert time.monotonic() - started_s < 10


def test_a_receive_with_no_wait_time_waits_as_its_queue_says(sqs: Any) -> None:
    """Outside the turn too: the send it waits for is served meanwhile."""
    url: str = sqs.create_queue(
        QueueName=f"queue-wait-{uuid.uuid4().hex}",
        Attributes={"ReceiveMessageWaitTimeSeconds": "5"},
    )["QueueUrl"]
    polled: list[dict[str, Any]] = []

    def send() -> None:
        time.sleep(0.2)
        sqs.send_message(QueueUrl=url, MessageBody="awaited")

    _run(lambda: polled.extend(sqs.receive_message(QueueUrl=url).get("Messages", [])), send)

    assert [m["Body"] for m in polled] == ["awaited"]


def test_a_long_poll_in_the_query_protocol_waits_outside_the_turn(sqs: Any, moto_url: str) -> None:
    url = _queue(sqs, "query")
    form = urllib.parse.urlencode(
        {"Action": "ReceiveMessage", "QueueUrl": url, "WaitTimeSeconds": "5"}
    ).encode()
    request = urllib.request.Request(  # noqa: S310 - the test's own loopback server
        moto_url + "/",
        data=form,
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            # moto picks the service from the credential scope; it checks no signature.
            "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/sqs/"
            "aws4_request, SignedHeaders=host, Signature=0",
        },
    )
    answers: list[str] = []

    def poll() -> None:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            answers.append(response.read().decode())

    def send() -> None:
        time.sleep(0.2)
        sqs.send_message(QueueUrl=url, MessageBody="awaited")

    _run(poll, send)

    assert "<Body>awaited</Body>" in answers[0]


def test_a_wait_time_sqs_refuses_is_refused(sqs: Any) -> None:
    url = _queue(sqs, "too-long")
    with pytest.raises(ClientError) as raised:
        sqs.receive_message(QueueUrl=url, WaitTimeSeconds=21)
    assert "InvalidParameterValue" in raised.value.response["Error"]["Code"]


class _Inside:
    """A stand-in for moto: counts the requests inside it at once, answers `answers` in turn."""

    def __init__(self, *answers: bytes) -> None:
        self.now = 0
        self.most = 0
        self.bodies: list[dict[str, Any]] = []
        self._answers = list(answers)
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.01)
        self.bodies.append(json.loads(request_body(environ) or b"{}"))
        with self._lock:
            self.now -= 1
        start_response("200 OK", [("Content-Type", "application/x-amz-json-1.0")])
        return [self._answers.pop(0) if self._answers else b"{}"]


def _request(target: str, body: dict[str, Any]) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    return {
        "HTTP_X_AMZ_TARGET": target,
        "CONTENT_LENGTH": str(len(raw)),
        "wsgi.input": io.BytesIO(raw),
    }


@pytest.mark.parametrize(
    "target", ["AmazonSQS.DeleteMessageBatch", "AmazonSNS.Publish", "DynamoDB_20120810.PutItem"]
)
def test_no_two_requests_are_inside_moto_at_once(target: str) -> None:
    inside = _Inside()
    app = one_at_a_time(inside)

    def call() -> None:
        for _ in range(3):
            b"".join(app(_request(target, {}), lambda *_: None))

    _run(*(call for _ in range(THREADS)))

    assert len(inside.bodies) == 3 * THREADS
    assert inside.most == 1


def test_a_long_poll_is_asked_as_short_polls_until_a_message_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing else is asked here to wake the poll: each look is a second apart by default.
    monkeypatch.setattr(turns, "LONG_POLL_IDLE_S", 0.05)
    message = json.dumps({"Messages": [{"MessageId": "m", "Body": "b"}]}).encode()
    inside = _Inside(b"{}", b"{}", message)
    app = one_at_a_time(inside)
    statuses: list[str] = []

    answer = b"".join(
        app(
            _request("AmazonSQS.ReceiveMessage", {"QueueUrl": "q", "WaitTimeSeconds": 20}),
            lambda status, _headers: statuses.append(status),
        )
    )

    assert answer == message
    assert statuses == ["200 OK"]
    assert [body["WaitTimeSeconds"] for body in inside.bodies] == [0, 0, 0]
    assert [body["QueueUrl"] for body in inside.bodies] == ["q"] * 3


def test_waiting_long_polls_do_not_wake_each_other() -> None:
    """Only a request that may add a message wakes a poll: empty looks are not one."""
    inside = _Inside()
    app = one_at_a_time(inside)

    def poll() -> None:
        b"".join(
            app(
                _request("AmazonSQS.ReceiveMessage", {"QueueUrl": "q", "WaitTimeSeconds": 1}),
                lambda *_: None,
            )
        )

    _run(*(poll for _ in range(THREADS)))

    # A look when asked and one when the wait is over (a third if a timer fires early),
    # not one every LONG_POLL_STEP_S.
    assert 2 * THREADS <= len(inside.bodies) <= 3 * THREADS


def test_a_poll_is_not_woken_by_requests_that_cannot_add_to_its_queue() -> None:
    """Sends to other queues and DynamoDB writes leave waiting polls alone."""
    inside = _Inside()
    app = one_at_a_time(inside)
    receive = {"QueueUrl": "http://sqs/123456789012/waited", "WaitTimeSeconds": 1}

    def poll() -> None:
        b"".join(app(_request("AmazonSQS.ReceiveMessage", receive), lambda *_: None))

    def others() -> None:
        for _ in range(20):
            other = {"QueueUrl": "http://sqs/123456789012/other", "MessageBody": "x"}
            b"".join(app(_request("AmazonSQS.SendMessage", other), lambda *_: None))
            b"".join(app(_request("DynamoDB_20120810.PutItem", {}), lambda *_: None))

    _run(*(poll for _ in range(THREADS)), others)

    looks = [body for body in inside.bodies if "WaitTimeSeconds" in body]
    assert 2 * THREADS <= len(looks) <= 3 * THREADS
