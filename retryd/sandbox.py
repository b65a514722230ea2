"""`retryd sandbox`: a demo world on an embedded emulator, one cycle, and each message's fate.

It needs no AWS account: everything runs against an in-process moto server on a
free loopback port, and the process's AWS environment is pointed at it.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import aioboto3
import anyio

from retryd import stamps
from retryd.aws import AwsClients, open_clients
from retryd.cycle import CycleReport
from retryd.emulator import MotoServer
from retryd.models import Decision
from retryd.service import run_once
from retryd.settings import Settings

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
FOREIGN_ACCOUNT = "999999999999"
PARKING = "retryd-parking"


def _arn(service: str, resource: str, account: str = ACCOUNT) -> str:
    return f"arn:aws:{service}:{REGION}:{account}:{resource}"


def sandbox_settings() -> Settings:
    return Settings(
        discovery={"queue_prefixes": ["retry-"]},
        drain={"receive_wait_s": 0},
        guards={"allow_targets": [f"arn:aws:*:{REGION}:{ACCOUNT}:*"], "max_attempts": 5},
        parking={"queue": PARKING},
        routes=[{"queue": "retry-orders", "target": _arn("sqs", "orders")}],
        http={"enabled": False},
        aws={"max_attempts": 2},
        # The demo shows one cycle of fresh failures: no waiting for backoff or tokens,
        # and nothing written to disk.
        ledger={"backend": "memory"},
        backoff={"base_s": 0.001, "max_s": 0.001},
        rate_limit={"per_s": 10_000, "burst": 10_000},
    )


def _envelope(target_type: str, arn: str, payload: Any, **extra: Any) -> str:
    return json.dumps(
        {
            "envelope": "retryd/v1",
            "target": {"type": target_type, "arn": arn},
            "payload": payload,
            **extra,
        }
    )


@dataclass
class DemoWorld:
    """What the sandbox created, so the report can say where each copy went."""

    labels: dict[str, str] = field(default_factory=dict)
    dlqs: list[str] = field(default_factory=list)
    queue_urls: dict[str, str] = field(default_factory=dict)
    state_machine_arn: str = ""


def _function_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", "def handle(event, context):\n    return event\n")
    return buffer.getvalue()


async def _create_targets(clients: AwsClients, world: DemoWorld) -> None:
    for name in (PARKING, "orders", "invoices", "sandbox-notify-spy", "sandbox-billing-spy"):
        world.queue_urls[name] = (await clients.sqs.create_queue(QueueName=name))["QueueUrl"]
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


def _demo_messages(copy: int = 0) -> dict[str, list[tuple[str, str]]]:
    """DLQ name -> [(label, body)]: one per target type, one static route, and the poison.

    `copy` numbers the order ids, so scaled-up copies are distinct pieces of work
    (identical payloads would share an idempotency key, and Step Functions would
    rightly start them once).
    """
    return {
        "retry-payments": [
            (
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
            (
                "envelope -> Step Functions fulfil",
                _envelope(
                    "stepfunctions",
                    _arn("states", "stateMachine:fulfil"),
                    {"orderId": f"43-{copy}"},
                ),
            ),
            (
                "envelope -> SQS invoices",
                _envelope(
                    "sqs",
                    _arn("sqs", "invoices"),
                    {"invoice": "INV-7"},
                ),
            ),
            (
                "envelope -> SNS notify",
                _envelope(
                    "sns",
                    _arn("sns", "notify"),
                    "order 44 shipped",
                ),
            ),
            (
                "envelope -> EventBridge billing",
                _envelope(
                    "eventbridge",
                    _arn("events", "event-bus/billing"),
                    {
                        "Source": "shop.billing",
                        "DetailType": "InvoiceDue",
                        "Detail": {"invoice": "INV-8"},
                    },
                ),
            ),
            (
                "poison: attempts used up",
                _envelope(
                    "lambda",
                    _arn("lambda", "function:charge"),
                    {"orderId": f"45-{copy}"},
                    attempt=5,
                ),
            ),
            (
                "poison: forged target in another account",
                _envelope(
                    "lambda",
                    _arn("lambda", "function:drain-bank", FOREIGN_ACCOUNT),
                    {"amount": 1_000_000},
                ),
            ),
            (
                "poison: broken envelope",
                json.dumps({"envelope": "retryd/v1", "target": {"type": "lambda"}, "payload": {}}),
            ),
        ],
        "retry-orders": [
            (
                "static route -> SQS orders",
                json.dumps({"orderId": f"46-{copy}", "note": "plain message"}),
            ),
        ],
        "retry-legacy": [
            ("poison: no envelope and no route", "legacy batch job 17 failed"),
        ],
    }


async def _build_world(clients: AwsClients, scale: int) -> DemoWorld:
    world = DemoWorld()
    await _create_targets(clients, world)
    copies_by_dlq: dict[str, list[tuple[str, str]]] = {}
    for copy in range(scale):
        for dlq, messages in _demo_messages(copy).items():
            copies_by_dlq.setdefault(dlq, []).extend(messages)
    for dlq, copies in copies_by_dlq.items():
        url = (await clients.sqs.create_queue(QueueName=dlq))["QueueUrl"]
        world.queue_urls[dlq] = url
        world.dlqs.append(dlq)
        for start in range(0, len(copies), 10):
            chunk = copies[start : start + 10]
            sent = await clients.sqs.send_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "MessageBody": body} for i, (_, body) in enumerate(chunk)],
            )
            for entry in sent.get("Successful", []):
                world.labels[entry["MessageId"]] = chunk[int(entry["Id"])][0]
    return world


async def _count(clients: AwsClients, url: str) -> int:
    attributes = (
        await clients.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


async def _parked_reasons(clients: AwsClients, url: str) -> Counter[str]:
    """retryd.reason of every parked copy, read back from the parking queue itself."""
    reasons: Counter[str] = Counter()
    while True:
        response = await clients.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
            VisibilityTimeout=60,
        )
        messages = response.get("Messages", [])
        if not messages:
            return reasons
        for message in messages:
            reason = message.get("MessageAttributes", {}).get(stamps.REASON, {})
            reasons[reason.get("StringValue", "?")] += 1


def _describe(decision: Decision) -> str:
    if decision.outcome.value == "resubmitted":
        assert decision.target is not None
        return f"{decision.target.type.value} {decision.target.name} (attempt {decision.attempt})"
    detail = decision.detail.splitlines()[0] if decision.detail else ""
    return f"{decision.reason}: {detail}"[:160]


async def _where_now(clients: AwsClients, world: DemoWorld, invocations: int) -> list[str]:
    executions = (
        await clients.stepfunctions.list_executions(stateMachineArn=world.state_machine_arn)
    )["executions"]
    parked = await _parked_reasons(clients, world.queue_urls[PARKING])
    left = sum([await _count(clients, world.queue_urls[dlq]) for dlq in world.dlqs])
    rows = [
        ("Lambda charge", f"{invocations} async invocation(s)"),
        ("Step Functions fulfil", f"{len(executions)} execution(s)"),
        ("SQS invoices", f"{await _count(clients, world.queue_urls['invoices'])} message(s)"),
        ("SQS orders", f"{await _count(clients, world.queue_urls['orders'])} message(s)"),
        (
            "SNS notify",
            f"{await _count(clients, world.queue_urls['sandbox-notify-spy'])} delivery(ies)",
        ),
        (
            "EventBridge billing",
            f"{await _count(clients, world.queue_urls['sandbox-billing-spy'])} event(s)",
        ),
        (
            f"parking {PARKING}",
            f"{await _count(clients, world.queue_urls[PARKING])} message(s): "
            + ", ".join(f"{r}={n}" for r, n in sorted(parked.items())),
        ),
        ("DLQs (retry-*)", f"{left} message(s) left"),
    ]
    return [f"  {name:<24} {value}" for name, value in rows]


def _print_report(
    server: MotoServer, world: DemoWorld, report: CycleReport, where: list[str]
) -> None:
    print(f"retryd sandbox: AWS emulator at {server.url}, account {ACCOUNT}, {REGION}")
    print(f"demo DLQs: {', '.join(world.dlqs)} ({len(world.labels)} messages)\n")
    # Identical demo messages (with --scale) are shown once, with how many there were.
    rows: Counter[tuple[str, str, str, str]] = Counter()
    for decision in report.decisions or []:
        label = world.labels.get(decision.letter.message_id, decision.letter.message_id)
        rows[(decision.letter.queue.name, label, decision.outcome.value, _describe(decision))] += 1
    print(f"{'DLQ':<16} {'MESSAGE':<42} {'COUNT':>5}  {'OUTCOME':<12} TARGET / REASON")
    for (queue, label, outcome, description), count in sorted(rows.items()):
        print(f"{queue:<16} {label:<42} {count:>5}  {outcome:<12} {description}")
    print(f"\nsummary: {report.summary()}")
    handled = sum(report.outcomes.values())
    rate = handled / report.duration_s if report.duration_s > 0 else 0.0
    print(f"throughput: {handled} messages settled in {report.duration_s:.2f}s ({rate:.0f} msg/s)")
    print("where every copy is now:")
    print("\n".join(where))


async def _main(server: MotoServer, scale: int) -> int:
    settings = sandbox_settings()
    async with open_clients(settings.aws) as clients:
        world = await _build_world(clients, scale)
        server.start_recording()
        report = await run_once(settings, collect=True)
        # retryd invokes by ARN, which arrives percent-encoded in the request path.
        invocations = sum(
            1
            for entry in server.recording()
            if "function:charge/invocations" in unquote(entry.get("url", ""))
        )
        where = await _where_now(clients, world, invocations)
    _print_report(server, world, report, where)
    unaccounted = len(world.labels) - sum(report.outcomes.values())
    return 0 if report.ok and unaccounted == 0 else 1


def run_sandbox(scale: int = 1) -> int:
    """Start the emulator, point this process's AWS environment at it, run the demo.

    `scale` sends every demo message that many times, to watch a bigger cycle.
    """
    with MotoServer() as server:
        os.environ.update(
            AWS_ENDPOINT_URL=server.url,
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
            AWS_ACCESS_KEY_ID="sandbox",
            AWS_SECRET_ACCESS_KEY="sandbox",  # noqa: S106 - the emulator accepts any key
        )
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)
        return anyio.run(_main, server, scale)
