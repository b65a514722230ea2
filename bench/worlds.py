"""The benchmark's worlds: queues and messages on an emulator, each message with a unique id.

Every run is checked after the fact: every id arrived exactly once at its
target, nothing is left in a DLQ. A contender that loses or duplicates a
message fails its run, whatever its speed.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

REGION = "us-east-1"
DLQ_PREFIX = "retry-bench-"
SOURCE_PREFIX = "src-bench-"
PARKING = "retryd-parking"
# A body of about the size of a typical failed event.
PAD = "x" * 160


def _pacing_off(ledger_path: Path, backend: str, processes: int = 1) -> str:
    """The settings every benchmark world changes: no backoff, no rate limit, no budget.

    retryd's defaults wait 30 s before a message's first resubmission and pace each
    target; a redrive benchmark measures the path, not the pacing.
    """
    return f"""[backoff]
base_s = 0.001
max_s = 0.001

[rate_limit]
per_s = 1000000
burst = 100000

[drain]
max_messages_per_queue = 10000000
cycle_budget_s = 3600
processes = {processes}

[ledger]
backend = "{backend}"
path = "{ledger_path}"

[http]
enabled = false
"""


def client(service: str, endpoint: str) -> Any:
    config = Config(max_pool_connections=32, retries={"mode": "standard"})
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION, config=config)


@dataclass
class SqsWorld:
    """Pairs of a source queue and its DLQ; the DLQ's messages go back to the source."""

    endpoint: str
    pairs: list[dict[str, str]] = field(default_factory=list)
    messages: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "pairs": self.pairs}

    def retryd_config(
        self, ledger_path: Path, *, backend: str = "sqlite", processes: int = 1
    ) -> str:
        """A config that changes only what a benchmark must (see _pacing_off)."""
        routes = "".join(
            f'\n[[routes]]\nqueue = "{pair["dlq_name"]}"\ntarget = "{pair["target_arn"]}"\n'
            for pair in self.pairs
        )
        return f"""
[discovery]
queue_prefixes = ["{DLQ_PREFIX}"]

[guards]
allow_targets = ["arn:aws:sqs:*:*:{SOURCE_PREFIX}*"]

{_pacing_off(ledger_path, backend, processes)}{routes}"""


def _queue_arn(sqs: Any, url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    arn: str = attributes["Attributes"]["QueueArn"]
    return arn


def build_sqs_world(endpoint: str, dlqs: int, messages: int) -> SqsWorld:
    """`dlqs` DLQs with redrive-policy sources, `messages` spread evenly over them."""
    sqs = client("sqs", endpoint)
    world = SqsWorld(endpoint)
    sqs.create_queue(QueueName=PARKING)
    for index in range(dlqs):
        dlq_name = f"{DLQ_PREFIX}{index:04d}"
        dlq_url = sqs.create_queue(QueueName=dlq_name)["QueueUrl"]
        source_url = sqs.create_queue(
            QueueName=f"{SOURCE_PREFIX}{index:04d}",
            Attributes={
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": _queue_arn(sqs, dlq_url), "maxReceiveCount": "3"}
                )
            },
        )["QueueUrl"]
        world.pairs.append(
            {
                "dlq_name": dlq_name,
                "dlq_url": dlq_url,
                "target_url": source_url,
                "target_arn": _queue_arn(sqs, source_url),
            }
        )
    fill(world, messages)
    return world


def fill(world: SqsWorld, messages: int) -> None:
    """Put `messages` uniquely numbered messages into the DLQs, round robin by batch of 10."""
    sqs = client("sqs", world.endpoint)
    batches: list[tuple[str, list[dict[str, str]]]] = []
    for start in range(0, messages, 10):
        pair = world.pairs[(start // 10) % len(world.pairs)]
        entries = [
            {"Id": str(i), "MessageBody": json.dumps({"id": n, "pad": PAD})}
            for i, n in enumerate(range(start, min(start + 10, messages)))
        ]
        batches.append((pair["dlq_url"], entries))

    def send(batch: tuple[str, list[dict[str, str]]]) -> None:
        answer = sqs.send_message_batch(QueueUrl=batch[0], Entries=batch[1])
        if answer.get("Failed"):
            raise RuntimeError(f"could not fill the world: {answer['Failed'][:1]}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(send, batches))
    world.messages = messages


def _drain_ids(sqs: Any, url: str) -> list[int]:
    ids: list[int] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        batch = got.get("Messages", [])
        if not batch:
            return ids
        ids.extend(json.loads(m["Body"])["id"] for m in batch)
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
            ],
        )


def delivered_so_far(world: SqsWorld) -> int:
    """Messages waiting in the targets now (approximate, as SQS counts): a drain's progress."""
    sqs = client("sqs", world.endpoint)
    return sum(
        int(
            sqs.get_queue_attributes(
                QueueUrl=pair["target_url"], AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]["ApproximateNumberOfMessages"]
        )
        for pair in world.pairs
    )


def verify_and_reset(world: SqsWorld) -> dict[str, int]:
    """Count what arrived (and empty the targets for the next run); lost and duplicated."""
    sqs = client("sqs", world.endpoint)
    with ThreadPoolExecutor(max_workers=8) as pool:
        delivered = Counter(
            n
            for ids in pool.map(lambda p: _drain_ids(sqs, p["target_url"]), world.pairs)
            for n in ids
        )
        left = sum(
            len(ids) for ids in pool.map(lambda p: _drain_ids(sqs, p["dlq_url"]), world.pairs)
        )
    parked = len(_drain_ids(sqs, sqs.get_queue_url(QueueName=PARKING)["QueueUrl"]))
    return {
        "delivered": len(delivered),
        "duplicated": sum(count - 1 for count in delivered.values()),
        "lost": world.messages - len(delivered),
        "left_in_dlq": left,
        "parked": parked,
    }


# --- Lambda and Step Functions targets (moto) -------------------------------------------

ACCOUNT = "123456789012"


def _function_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", "def handle(event, context):\n    return event\n")
    return buffer.getvalue()


@dataclass
class ComputeWorld:
    """Envelopes to a Lambda function and a state machine, over shallow DLQs."""

    endpoint: str
    dlq_urls: list[str]
    function_arn: str
    state_machine_arn: str
    messages: int

    def retryd_config(self, ledger_path: Path, *, backend: str = "sqlite") -> str:
        return f"""
[discovery]
queue_prefixes = ["{DLQ_PREFIX}"]

[guards]
allow_targets = ["{self.function_arn}", "{self.state_machine_arn}"]

{_pacing_off(ledger_path, backend)}"""


def build_compute_world(endpoint: str, dlqs: int, messages: int) -> ComputeWorld:
    """Half the envelopes to a function, half to a state machine; `dlqs` shallow DLQs."""
    iam = client("iam", endpoint)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = iam.create_role(RoleName="bench", AssumeRolePolicyDocument=json.dumps(trust))["Role"][
        "Arn"
    ]
    function_arn = client("lambda", endpoint).create_function(
        FunctionName="bench-target",
        Runtime="python3.12",
        Role=role,
        Handler="handler.handle",
        Code={"ZipFile": _function_zip()},
    )["FunctionArn"]
    definition = {"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}
    machine_arn = client("stepfunctions", endpoint).create_state_machine(
        name="bench-target", definition=json.dumps(definition), roleArn=role
    )["stateMachineArn"]
    sqs = client("sqs", endpoint)
    sqs.create_queue(QueueName=PARKING)
    urls = [sqs.create_queue(QueueName=f"{DLQ_PREFIX}{i:04d}")["QueueUrl"] for i in range(dlqs)]
    world = ComputeWorld(endpoint, urls, function_arn, machine_arn, 0)
    fill_compute(world, messages)
    return world


def fill_compute(world: ComputeWorld, messages: int) -> None:
    sqs = client("sqs", world.endpoint)

    def envelope(n: int) -> str:
        lambda_target = n % 2 == 0
        return json.dumps(
            {
                "envelope": "retryd/v1",
                "target": {
                    "type": "lambda" if lambda_target else "stepfunctions",
                    "arn": world.function_arn if lambda_target else world.state_machine_arn,
                },
                "payload": {"id": n, "pad": PAD},
                "idempotencyKey": f"bench-{n}",
            }
        )

    batches = [
        (
            world.dlq_urls[(start // 10) % len(world.dlq_urls)],
            [
                {"Id": str(i), "MessageBody": envelope(n)}
                for i, n in enumerate(range(start, min(start + 10, messages)))
            ],
        )
        for start in range(0, messages, 10)
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda b: sqs.send_message_batch(QueueUrl=b[0], Entries=b[1]), batches))
    world.messages = messages


def compute_left(world: ComputeWorld) -> int:
    sqs = client("sqs", world.endpoint)
    total = 0
    for url in world.dlq_urls:
        attributes = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        total += int(attributes["ApproximateNumberOfMessages"])
        total += int(attributes["ApproximateNumberOfMessagesNotVisible"])
    return total


# --- discovery ----------------------------------------------------------------------------


def build_discovery_world(endpoint: str, dlqs: int, busy: int, per_busy: int) -> SqsWorld:
    """`dlqs` DLQs of which `busy` hold `per_busy` messages each; the rest are empty."""
    world = build_sqs_world(endpoint, busy, 0)
    sqs = client("sqs", endpoint)

    def create(index: int) -> None:
        sqs.create_queue(QueueName=f"{DLQ_PREFIX}empty-{index:04d}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, range(dlqs - busy)))
    fill(world, busy * per_busy)
    return world
