"""The sandbox's demo world: targets of every type, DLQs of every shape, and their messages.

Built on whatever AWS endpoint the clients point at (the embedded emulator, in
practice). Each DLQ shows one thing retryd does: envelopes to all five target
types, a static route, AWS's own dead letters (a Lambda destination record, an
EventBridge rule DLQ, an SQS redrive-policy DLQ filled by SQS itself), and the
poison messages that are parked with a reason.
"""

from __future__ import annotations

import io
import json
import tomllib
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import aioboto3

from retryd import leases, stamps
from retryd.aws import AwsClients
from retryd.models import queue_ref_from_url
from retryd.settings import Settings

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
FOREIGN_ACCOUNT = "999999999999"
PARKING = "retryd-parking"
# A queue with a redrive policy: SQS itself moves its failures into retry-intake.
INTAKE = "intake"
INTAKE_DLQ = "retry-intake"

# The sandbox's settings, as a file: `retryd sandbox --serve` writes it out so that
# `retryd plan`, `inspect` and `once` run against the demo with the same settings.
SANDBOX_CONFIG_TOML = f"""\
# retryd sandbox settings: the demo world on the embedded emulator.
[aws]
max_attempts = 2

[discovery]
queue_prefixes = ["retry-"]

[drain]
receive_wait_s = 0

[guards]
allow_targets = ["arn:aws:*:{REGION}:{ACCOUNT}:*"]
max_attempts = 5

# The demo shows one cycle of fresh failures: no waiting for backoff or tokens,
# and nothing written to disk.
[backoff]
base_s = 0.001
max_s = 0.001

[rate_limit]
per_s = 10000
burst = 10000

[ledger]
backend = "memory"

[parking]
queue = "{PARKING}"

[http]
enabled = false

[[routes]]
queue = "retry-orders"
target = "arn:aws:sqs:{REGION}:{ACCOUNT}:orders"
"""


def sandbox_settings() -> Settings:
    """The settings SANDBOX_CONFIG_TOML describes."""
    return Settings(**tomllib.loads(SANDBOX_CONFIG_TOML))


def _arn(service: str, resource: str, account: str = ACCOUNT) -> str:
    return f"arn:aws:{service}:{REGION}:{account}:{resource}"


def _envelope(target_type: str, arn: str, payload: Any, **extra: Any) -> str:
    return json.dumps(
        {
            "envelope": "retryd/v1",
            "target": {"type": target_type, "arn": arn},
            "payload": payload,
            **extra,
        }
    )


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class DemoMessage:
    """One demo dead letter: what the report calls it, its body and its attributes."""

    label: str
    body: str
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class DemoWorld:
    """What the sandbox created, so the report can say where each copy went."""

    labels: dict[str, str] = field(default_factory=dict)
    dlqs: list[str] = field(default_factory=list)
    queue_urls: dict[str, str] = field(default_factory=dict)
    state_machine_arn: str = ""

    @property
    def message_count(self) -> int:
        return len(self.labels)


def _function_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", "def handle(event, context):\n    return event\n")
    return buffer.getvalue()


async def _create_targets(clients: AwsClients, world: DemoWorld) -> None:
    for name in (PARKING, "orders", "invoices", "sandbox-notify-spy", "sandbox-billing-spy"):
        world.queue_urls[name] = (await clients.sqs.create_queue(QueueName=name))["QueueUrl"]
    world.queue_urls[INTAKE_DLQ] = (await clients.sqs.create_queue(QueueName=INTAKE_DLQ))[
        "QueueUrl"
    ]
    world.dlqs.append(INTAKE_DLQ)
    # The first failed receive moves a message to the DLQ: SQS's own redrive policy.
    redrive = {"deadLetterTargetArn": _arn("sqs", INTAKE_DLQ), "maxReceiveCount": 1}
    world.queue_urls[INTAKE] = (
        await clients.sqs.create_queue(
            QueueName=INTAKE, Attributes={"RedrivePolicy": json.dumps(redrive)}
        )
    )["QueueUrl"]
    async with aioboto3.Session().client("iam") as iam:
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "sts:AssumeRole",
                    "Principal": {"Service": ["lambda.amazonaws.com", "states.amazonaws.com"]},
                }
            ],
        }
        role = (
            await iam.create_role(
                RoleName="retryd-sandbox", AssumeRolePolicyDocument=json.dumps(trust)
            )
        )["Role"]["Arn"]
    await clients.lambda_.create_function(
        FunctionName="charge",
        Runtime="python3.12",
        Role=role,
        Handler="handler.handle",
        Code={"ZipFile": _function_zip()},
    )
    definition = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}
    world.state_machine_arn = (
        await clients.stepfunctions.create_state_machine(
            name="fulfil", definition=json.dumps(definition), roleArn=role
        )
    )["stateMachineArn"]
    topic = (await clients.sns.create_topic(Name="notify"))["TopicArn"]
    await clients.sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=_arn("sqs", "sandbox-notify-spy"),
        Attributes={"RawMessageDelivery": "true"},
    )
    await clients.events.create_event_bus(Name="billing")
    await clients.events.put_rule(
        Name="billing-all",
        EventBusName="billing",
        EventPattern=json.dumps({"source": ["shop.billing"]}),
    )
    await clients.events.put_targets(
        Rule="billing-all",
        EventBusName="billing",
        Targets=[{"Id": "spy", "Arn": _arn("sqs", "sandbox-billing-spy")}],
    )


def _demo_messages(copy: int = 0) -> dict[str, list[DemoMessage]]:
    """DLQ name -> messages: one per target type, a static route, AWS shapes, and the poison.

    `copy` numbers every payload, so scaled-up copies are distinct pieces of work:
    identical payloads to one target share an idempotency key, so the ledger would
    count them as attempts of one piece of work (and Step Functions would rightly
    start it once).
    """
    return {
        "retry-payments": [
            DemoMessage(
                "envelope -> Lambda charge",
                _envelope(
                    "lambda",
                    _arn("lambda", "function:charge"),
                    {"orderId": f"42-{copy}"},
                    attempt=1,
                    idempotencyKey=f"order-42-{copy}-charge",
                    error={"code": "Timeout", "message": "upstream timed out"},
                ),
            ),
            DemoMessage(
                "envelope -> Step Functions fulfil",
                _envelope(
                    "stepfunctions",
                    _arn("states", "stateMachine:fulfil"),
                    {"orderId": f"43-{copy}"},
                ),
            ),
            DemoMessage(
                "envelope -> SQS invoices",
                _envelope(
                    "sqs",
                    _arn("sqs", "invoices"),
                    {"invoice": f"INV-7-{copy}"},
                ),
            ),
            DemoMessage(
                "envelope -> SNS notify",
                _envelope(
                    "sns",
                    _arn("sns", "notify"),
                    f"order 44-{copy} shipped",
                ),
            ),
            DemoMessage(
                "envelope -> EventBridge billing",
                _envelope(
                    "eventbridge",
                    _arn("events", "event-bus/billing"),
                    {
                        "Source": "shop.billing",
                        "DetailType": "InvoiceDue",
                        "Detail": {"invoice": f"INV-8-{copy}"},
                    },
                ),
            ),
            DemoMessage(
                "poison: attempts used up",
                _envelope(
                    "lambda",
                    _arn("lambda", "function:charge"),
                    {"orderId": f"45-{copy}"},
                    attempt=5,
                ),
            ),
            DemoMessage(
                "poison: forged target in another account",
                _envelope(
                    "lambda",
                    _arn("lambda", "function:drain-bank", FOREIGN_ACCOUNT),
                    {"amount": 1_000_000},
                ),
            ),
            DemoMessage(
                "poison: broken envelope",
                json.dumps({"envelope": "retryd/v1", "target": {"type": "lambda"}, "payload": {}}),
            ),
        ],
        "retry-orders": [
            DemoMessage(
                "static route -> SQS orders",
                json.dumps({"orderId": f"46-{copy}", "note": "plain message"}),
            ),
        ],
        "retry-lambda-failures": [
            DemoMessage(
                "Lambda destination record -> charge",
                _destination_record(copy),
            ),
        ],
        "retry-events": [
            DemoMessage(
                # EventBridge's default retry policy: 185 tries over 24 h before the DLQ.
                # They are EventBridge's, not retryd's: the event still goes back.
                "EventBridge RETRY_ATTEMPTS=185 -> charge",
                json.dumps(
                    {
                        "version": "0",
                        "id": f"7bf73129-1428-4cd3-a780-{copy:012d}",
                        "detail-type": "OrderPlaced",
                        "source": "shop.orders",
                        "account": ACCOUNT,
                        "time": _now_iso(),
                        "region": REGION,
                        "resources": [],
                        "detail": {"orderId": f"47-{copy}"},
                    }
                ),
                _rule_dlq_attributes("SDK_CLIENT_ERROR", "Rate exceeded."),
            ),
            DemoMessage(
                "poison: EventBridge NO_PERMISSIONS",
                json.dumps({"source": "shop.orders", "detail": {"orderId": f"48-{copy}"}}),
                _rule_dlq_attributes("NO_PERMISSIONS", "not authorized to invoke"),
            ),
        ],
        "retry-legacy": [
            DemoMessage("poison: no envelope and no route", "legacy batch job 17 failed"),
        ],
    }


def _destination_record(copy: int) -> str:
    """An on-failure destination record as Lambda writes it (field names as AWS documents)."""
    return json.dumps(
        {
            "version": "1.0",
            "timestamp": _now_iso(),
            "requestContext": {
                "requestId": f"e4b46cbf-b738-4880-a18c-{copy:012d}",
                "functionArn": _arn("lambda", "function:charge:$LATEST"),
                "condition": "RetriesExhausted",
                "approximateInvokeCount": 3,
            },
            "requestPayload": {"orderId": f"49-{copy}"},
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "responsePayload": {"errorMessage": "Process exited before completing request"},
        }
    )


def _rule_dlq_attributes(code: str, message: str) -> dict[str, dict[str, str]]:
    """The attributes EventBridge puts on an event it could not deliver to a rule's target."""
    values = {
        "RULE_ARN": _arn("events", "rule/orders-to-charge"),
        "TARGET_ARN": _arn("lambda", "function:charge"),
        "ERROR_CODE": code,
        "ERROR_MESSAGE": message,
        "RETRY_ATTEMPTS": "185",
    }
    return {name: {"DataType": "String", "StringValue": value} for name, value in values.items()}


def planned_messages(scale: int) -> int:
    """How many messages `build_world(clients, scale)` sends (what its progress counts to)."""
    per_copy = sum(len(messages) for messages in _demo_messages().values())
    # One redrive-DLQ message per copy besides (see _fail_into_redrive_dlq).
    return (per_copy + 1) * scale


async def build_world(
    clients: AwsClients, scale: int, on_sent: Callable[[int], None] | None = None
) -> DemoWorld:
    """Create the targets and fill every demo DLQ, each message `scale` times.

    `on_sent` is told how many messages each send added, for a progress display.
    """
    world = DemoWorld()
    await _create_targets(clients, world)
    copies_by_dlq: dict[str, list[DemoMessage]] = {}
    for copy in range(scale):
        for dlq, messages in _demo_messages(copy).items():
            copies_by_dlq.setdefault(dlq, []).extend(messages)
    for dlq, copies in copies_by_dlq.items():
        url = (await clients.sqs.create_queue(QueueName=dlq))["QueueUrl"]
        world.queue_urls[dlq] = url
        world.dlqs.append(dlq)
        await _send_all(clients, world, url, copies, on_sent)
    await _fail_into_redrive_dlq(clients, world, scale, on_sent)
    return world


async def _send_all(
    clients: AwsClients,
    world: DemoWorld,
    url: str,
    messages: list[DemoMessage],
    on_sent: Callable[[int], None] | None = None,
) -> None:
    for start in range(0, len(messages), 10):
        chunk = messages[start : start + 10]
        entries: list[dict[str, Any]] = []
        for index, message in enumerate(chunk):
            entry: dict[str, Any] = {"Id": str(index), "MessageBody": message.body}
            if message.attributes:
                entry["MessageAttributes"] = message.attributes
            entries.append(entry)
        sent = await clients.sqs.send_message_batch(QueueUrl=url, Entries=cast(Any, entries))
        for done in sent.get("Successful", []):
            world.labels[done["MessageId"]] = chunk[int(done["Id"])].label
        if on_sent is not None:
            on_sent(len(chunk))


async def _fail_into_redrive_dlq(
    clients: AwsClients,
    world: DemoWorld,
    scale: int,
    on_sent: Callable[[int], None] | None = None,
) -> None:
    """Messages a consumer of `intake` could not process: SQS moves them to retry-intake."""
    url = world.queue_urls[INTAKE]
    label = "SQS redrive DLQ -> intake"
    await _send_all(
        clients,
        world,
        url,
        [DemoMessage(label, json.dumps({"orderId": f"50-{copy}"})) for copy in range(scale)],
        on_sent,
    )
    # A consumer that fails: each receive without a delete counts against maxReceiveCount;
    # the next receive finds them over the limit and SQS moves them to the DLQ.
    queue = queue_ref_from_url(url, clients.sqs.meta.region_name)
    for _ in range(2 * scale + 2):
        await leases.receive(clients.sqs, queue, max_messages=10, wait_s=0, lease_s=0)


async def count(clients: AwsClients, url: str) -> int:
    attributes = (
        await clients.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


async def parked_reasons(clients: AwsClients, url: str) -> Counter[str]:
    """retryd.reason of every parked copy, read back from the parking queue itself."""
    reasons: Counter[str] = Counter()
    queue = queue_ref_from_url(url, clients.sqs.meta.region_name)
    while True:
        letters = await leases.receive(clients.sqs, queue, max_messages=10, wait_s=0, lease_s=60)
        if not letters:
            return reasons
        for letter in letters:
            reasons[letter.attribute_string(stamps.REASON) or "?"] += 1
