"""Arrange and observe an AWS world on the moto server, with plain (sync) boto3 clients.

Tests build their DLQs and targets here and read back what each target received,
over HTTP like any other client: nothing is patched into the SDK.
"""

from __future__ import annotations

import base64
import io
import json
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import boto3
from botocore.config import Config

from retryd.sandbox.emulator import MotoServer
from tests.faults import FaultInjector

REGION = "us-east-1"
ACCOUNT = "123456789012"
_NO_RETRIES = Config(retries={"total_max_attempts": 1})


def emulator_client(url: str, service: str, config: Config = _NO_RETRIES) -> Any:
    """A boto3 client of the emulator at `url`, with the suite's dummy keys and Region."""
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=config,
    )


# For config files of tests that run retryd as a process: no ledger file left
# behind, no waiting between attempts, no rate limit, unless a test is about them.
QUIET_GUARDS_TOML = """
[ledger]
backend = "memory"

[backoff]
base_s = 0.001
max_s = 0.001

[rate_limit]
per_s = 10000
burst = 10000
"""


def _handler_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", "def handle(event, context):\n    return event\n")
    return buffer.getvalue()


@dataclass
class World:
    """The moto server for one test, reset to empty, with helpers to build and observe it."""

    server: MotoServer
    faults: FaultInjector
    _clients: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = emulator_client(self.url, service)
        return self._clients[service]

    # -- SQS ---------------------------------------------------------------------------

    def create_queue(
        self, name: str, tags: Mapping[str, str] | None = None, **attributes: str
    ) -> str:
        if name.endswith(".fifo"):
            attributes.setdefault("FifoQueue", "true")
        kwargs: dict[str, Any] = {"QueueName": name, "Attributes": attributes}
        if tags:
            kwargs["tags"] = dict(tags)
        url: str = self.client("sqs").create_queue(**kwargs)["QueueUrl"]
        return url

    def queue_arn(self, name: str) -> str:
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"

    def queue_url(self, name: str) -> str:
        url: str = self.client("sqs").get_queue_url(QueueName=name)["QueueUrl"]
        return url

    def send(
        self,
        queue: str,
        body: str | Mapping[str, Any],
        attributes: Mapping[str, Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """Put one message on a queue (by name); dict bodies are sent as JSON."""
        text = body if isinstance(body, str) else json.dumps(body)
        kwargs: dict[str, Any] = {"QueueUrl": self.queue_url(queue), "MessageBody": text, **extra}
        if attributes:
            kwargs["MessageAttributes"] = dict(attributes)
        message_id: str = self.client("sqs").send_message(**kwargs)["MessageId"]
        return message_id

    def drain(self, queue: str) -> list[dict[str, Any]]:
        """Receive (and delete) everything visible on a queue, with all attributes."""
        sqs = self.client("sqs")
        url = self.queue_url(queue)
        messages: list[dict[str, Any]] = []
        while True:
            batch = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
                WaitTimeSeconds=0,
            ).get("Messages", [])
            if not batch:
                return messages
            for message in batch:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            messages.extend(batch)

    def wait_visible(self, queues: Sequence[str], timeout_s: float = 30.0) -> None:
        """Wait until no message of these queues is in flight, so a receive sees them all."""
        deadline = time.monotonic() + timeout_s
        for queue in queues:
            while True:
                in_flight = int(
                    self.client("sqs").get_queue_attributes(
                        QueueUrl=self.queue_url(queue),
                        AttributeNames=["ApproximateNumberOfMessagesNotVisible"],
                    )["Attributes"]["ApproximateNumberOfMessagesNotVisible"]
                )
                if not in_flight:
                    break
                assert time.monotonic() < deadline, f"{queue}: {in_flight} still in flight"
                time.sleep(0.2)

    def depth(self, queue: str) -> int:
        """Visible plus in-flight messages: what is still in the queue at all.

        moto reads the clock once per count, so a message whose lease ends between the
        two is in neither (a killed replica's message made a 200-message test count 199):
        read until two answers agree (a queue being drained may not settle: ten reads at most).
        """
        counts: list[int] = []
        while len(counts) < 2 or (counts[-1] != counts[-2] and len(counts) < 10):
            attributes = self.client("sqs").get_queue_attributes(
                QueueUrl=self.queue_url(queue),
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )["Attributes"]
            counts.append(
                int(attributes["ApproximateNumberOfMessages"])
                + int(attributes["ApproximateNumberOfMessagesNotVisible"])
            )
        return counts[-1]

    # -- Lambda --------------------------------------------------------------------------

    def create_function(self, name: str) -> str:
        role = self._role()
        arn: str = self.client("lambda").create_function(
            FunctionName=name,
            Runtime="python3.12",
            Role=role,
            Handler="handler.handle",
            Code={"ZipFile": _handler_zip()},
        )["FunctionArn"]
        return arn

    def _role(self) -> str:
        iam = self.client("iam")
        try:
            arn: str = iam.get_role(RoleName="retryd-test")["Role"]["Arn"]
        except iam.exceptions.NoSuchEntityException:
            arn = iam.create_role(
                RoleName="retryd-test",
                AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"}),
            )["Role"]["Arn"]
        return arn

    def invocations(self, function: str | None = None) -> list[dict[str, Any]]:
        """Lambda Invoke calls the emulator recorded (start it with `record()`)."""
        calls = []
        for entry in self.server.recording():
            url = entry.get("url", "")
            if "/invocations" not in url:
                continue
            # retryd addresses functions by ARN, which arrives percent-encoded in the path.
            path = unquote(url)
            if function is not None and not (
                f"/functions/{function}/" in path or f"function:{function}/" in path
            ):
                continue
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode()
            calls.append({"url": url, "headers": entry.get("headers", {}), "payload": body})
        return calls

    def record(self) -> None:
        self.server.start_recording()

    # -- Step Functions ------------------------------------------------------------------

    def create_state_machine(self, name: str) -> str:
        definition = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}
        arn: str = self.client("stepfunctions").create_state_machine(
            name=name, definition=json.dumps(definition), roleArn=self._role()
        )["stateMachineArn"]
        return arn

    def executions(self, state_machine_arn: str) -> list[dict[str, Any]]:
        sfn = self.client("stepfunctions")
        listed = sfn.list_executions(stateMachineArn=state_machine_arn)["executions"]
        return [sfn.describe_execution(executionArn=item["executionArn"]) for item in listed]

    # -- SNS / EventBridge: observed through an SQS queue subscribed to them ----------------

    def create_topic_with_spy(self, name: str, *, fifo: bool = False) -> tuple[str, str]:
        """A topic plus a raw-delivery SQS subscription; returns (topic ARN, spy queue name).

        With `fifo`, both are FIFO (names ending .fifo) and the topic deduplicates by
        the ids publishers give, not by content.
        """
        sns = self.client("sns")
        suffix = ".fifo" if fifo else ""
        attributes = {"FifoTopic": "true", "ContentBasedDeduplication": "false"} if fifo else {}
        topic_arn: str = sns.create_topic(Name=f"{name}{suffix}", Attributes=attributes)["TopicArn"]
        spy = f"spy-{name}{suffix}"
        self.create_queue(spy)
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=self.queue_arn(spy),
            Attributes={"RawMessageDelivery": "true"},
        )
        return topic_arn, spy

    def create_bus_with_spy(self, name: str, source: str = "retryd.test") -> tuple[str, str]:
        """An event bus plus a rule sending `source` events to an SQS queue; (bus ARN, spy)."""
        events = self.client("events")
        bus_arn: str = events.create_event_bus(Name=name)["EventBusArn"]
        spy = f"spy-{name}"
        self.create_queue(spy)
        events.put_rule(
            Name=f"{name}-spy", EventBusName=name, EventPattern=json.dumps({"source": [source]})
        )
        events.put_targets(
            Rule=f"{name}-spy",
            EventBusName=name,
            Targets=[{"Id": "spy", "Arn": self.queue_arn(spy)}],
        )
        return bus_arn, spy


def envelope(target_type: str, arn: str, payload: Any, **fields: Any) -> dict[str, Any]:
    """A retryd/v1 envelope as a producer would write it."""
    return {
        "envelope": "retryd/v1",
        "target": {"type": target_type, "arn": arn},
        "payload": payload,
        **fields,
    }
