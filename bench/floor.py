"""The floor: a minimal aioboto3 redrive doing only the calls no client can avoid.

Per DLQ, two receivers: ReceiveMessage (10), SendMessageBatch to the source
queue, DeleteMessageBatch. No ledger, no guards, no logging. What retryd is
compared against. `python -m bench.floor WORLD.json`
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aioboto3
from botocore.config import Config

RECEIVERS_PER_DLQ = 2


async def _drain(sqs: Any, dlq_url: str, target_url: str) -> int:
    moved = 0
    while True:
        answer = await sqs.receive_message(
            QueueUrl=dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=120
        )
        messages = answer.get("Messages", [])
        if not messages:
            return moved
        await sqs.send_message_batch(
            QueueUrl=target_url,
            Entries=[{"Id": str(i), "MessageBody": m["Body"]} for i, m in enumerate(messages)],
        )
        await sqs.delete_message_batch(
            QueueUrl=dlq_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )
        moved += len(messages)


async def main(world: dict[str, Any]) -> None:
    session = aioboto3.Session()
    config = Config(max_pool_connections=100, retries={"mode": "standard"})
    async with session.client("sqs", endpoint_url=world["endpoint"], config=config) as sqs:
        jobs = [
            _drain(sqs, pair["dlq_url"], pair["target_url"])
            for pair in world["pairs"]
            for _ in range(RECEIVERS_PER_DLQ)
        ]
        moved = sum(await asyncio.gather(*jobs))
    print(json.dumps({"moved": moved}))


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        asyncio.run(main(json.load(handle)))
