"""The scripts retryd replaces: sequential boto3, one DLQ after another.

`python -m bench.naive_batch WORLD.json [SIZE]`: receive up to SIZE messages (10 by
default), send them, delete them, and again, each call waiting for the last. SIZE 10 is
what teams write by hand with the batch calls; SIZE 1 is the first script anyone writes
(SendMessage and DeleteMessage, three round trips per message), so slow at any latency
that the benchmark runs it on a smaller backlog (`--naive-messages`).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import boto3


def main(world: dict[str, Any], size: int = 10) -> None:
    sqs = boto3.client("sqs", endpoint_url=world["endpoint"])
    moved = 0
    for pair in world["pairs"]:
        while True:
            messages = sqs.receive_message(
                QueueUrl=pair["dlq_url"], MaxNumberOfMessages=size, WaitTimeSeconds=0
            ).get("Messages", [])
            if not messages:
                break
            if size == 1:
                (message,) = messages
                sqs.send_message(QueueUrl=pair["target_url"], MessageBody=message["Body"])
                sqs.delete_message(QueueUrl=pair["dlq_url"], ReceiptHandle=message["ReceiptHandle"])
            else:
                sqs.send_message_batch(
                    QueueUrl=pair["target_url"],
                    Entries=[
                        {"Id": str(i), "MessageBody": m["Body"]} for i, m in enumerate(messages)
                    ],
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
        main(json.load(handle), *(int(size) for size in sys.argv[2:3]))
