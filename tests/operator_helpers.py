"""Shared by the `plan` and `inspect` tests: a config file, and what a DLQ holds right now."""

from __future__ import annotations

from pathlib import Path

from tests.world import ACCOUNT, REGION, World

PARKING = "retryd-parking"
CONFIG = f"""
[aws]
max_attempts = 1

[discovery]
queue_prefixes = ["retry-"]

[drain]
receive_wait_s = 0

[guards]
allow_targets = ["arn:aws:*:{REGION}:{ACCOUNT}:*"]

[parking]
queue = "{PARKING}"

[ledger]
backend = "memory"

# No waiting between attempts and no rate limit: the tests are about decisions.
[backoff]
base_s = 0.001
max_s = 0.001

[rate_limit]
per_s = 10000
burst = 10000

[http]
enabled = false
"""


def config_file(tmp_path: Path, extra: str = "") -> str:
    """CONFIG (plus `extra` TOML) written to a file; its path."""
    path = tmp_path / "retryd.toml"
    path.write_text(CONFIG + extra)
    return str(path)


def depth(world: World, queue: str) -> tuple[int, int]:
    """(visible, in flight) of a queue."""
    attributes = world.client("sqs").get_queue_attributes(
        QueueUrl=world.queue_url(queue),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def visible_ids(world: World, queue: str) -> set[str]:
    """Ids of every message a receive gets right now (each is then hidden for 30 s)."""
    sqs = world.client("sqs")
    url = world.queue_url(queue)
    seen: set[str] = set()
    while True:
        batch = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30, WaitTimeSeconds=0
        ).get("Messages", [])
        fresh = {message["MessageId"] for message in batch} - seen
        if not fresh:
            return seen
        seen |= fresh
