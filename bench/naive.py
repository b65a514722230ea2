"""The script people write first: sequential boto3, one message at a time.

`python -m bench.naive WORLD.json`: receive one, send it, delete it, for each DLQ in
turn. Three calls per message, each waiting for the last, so its speed is set by the
round trip; it runs on a smaller backlog than the others (`--naive-messages`).
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
                QueueUrl=pair["dlq_url"], MaxNumberOfMessages=1, WaitTimeSeconds=0
            ).get("Messages", [])
            if not messages:
                break
            (message,) = messages
            sqs.send_message(QueueUrl=pair["target_url"], MessageBody=message["Body"])
            sqs.delete_message(QueueUrl=pair["dlq_url"], ReceiptHandle=message["ReceiptHandle"])
            moved += 1
    print(json.dumps({"moved": moved}))


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        main(json.load(handle))
