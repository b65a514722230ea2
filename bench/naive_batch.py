"""The script retryd replaces: sequential boto3, batches of 10, one DLQ after another.

`python -m bench.naive_batch WORLD.json`
"""

from __future__ import annotations

import json
import sys
from typing import Any

import boto3


def main(world: dict[str, Any]) -> None:
    sqs = boto3.client("sqs", endpoint_url=world["endpoint"])
    moved = 0
    for pair in world["pairs"]:
        while True:
            messages = sqs.receive_message(
                QueueUrl=pair["dlq_url"], MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", [])
            if not messages:
                break
            sqs.send_message_batch(
                QueueUrl=pair["target_url"],
                Entries=[{"Id": str(i), "MessageBody": m["Body"]} for i, m in enumerate(messages)],
            )
            sqs.delete_message_batch(
                QueueUrl=pair["dlq_url"],
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )
            moved += len(messages)
    print(json.dumps({"moved": moved}))


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        main(json.load(handle))
