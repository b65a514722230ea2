"""The floor: a minimal aioboto3 redrive doing only the calls no client can avoid.

Per DLQ, two receivers: ReceiveMessage (10), SendMessageBatch to the source
queue, DeleteMessageBatch. No ledger, no guards, no logging. What retryd is
compared against. `python -m bench.floor WORLD.json` drains the DLQs and exits;
`python -m bench.floor WORLD.json --until-stopped` keeps long-polling them until
SIGTERM, as a daemon fed at a constant rate would (the steady world).

`--faithful` adds the two things any redrive that loses nothing must do, and nothing
else: each message's attributes go with its copy (`MessageAttributeNames=All`;
without them a consumer that routes or deduplicates on an attribute sees another
message), and a DLQ is left only after a long poll (1 s, retryd's default
`drain.receive_wait_s`) comes back empty: a short poll asks only a subset of SQS's
servers, picked at random, so its empty answer may be a false one, which long polling
eliminates (https://docs.aws.amazon.com/sdk-for-cpp/v1/developer-guide/examples-sqs-long-polling.html).
It is the yardstick that separates what correctness costs from what retryd adds.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import aioboto3
from botocore.config import Config

RECEIVERS_PER_DLQ = 2
# The faithful floor's long poll: retryd's default drain.receive_wait_s.
FAITHFUL_WAIT_S = 1


async def _drain(
    sqs: Any, dlq_url: str, target_url: str, stop: asyncio.Event | None, faithful: bool = False
) -> int:
    """Move batches until the DLQ is empty, or (with `stop`) until `stop` is set."""
    moved = 0
    extra: dict[str, Any] = {"MessageAttributeNames": ["All"]} if faithful else {}
    while stop is None or not stop.is_set():
        answer = await sqs.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=10,
            # Fed forever, an empty answer means "none yet": wait for the next one.
            WaitTimeSeconds=FAITHFUL_WAIT_S if faithful or stop is not None else 0,
            VisibilityTimeout=120,
            **extra,
        )
        messages = answer.get("Messages", [])
        if not messages:
            if stop is None:
                return moved
            continue
        await sqs.send_message_batch(
            QueueUrl=target_url,
            Entries=[_entry(i, m, faithful) for i, m in enumerate(messages)],
        )
        await sqs.delete_message_batch(
            QueueUrl=dlq_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )
        moved += len(messages)
    return moved


def _entry(number: int, message: dict[str, Any], faithful: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"Id": str(number), "MessageBody": message["Body"]}
    if faithful and message.get("MessageAttributes"):
        entry["MessageAttributes"] = message["MessageAttributes"]
    return entry


async def main(world: dict[str, Any], until_stopped: bool = False, faithful: bool = False) -> None:
    stop: asyncio.Event | None = None
    if until_stopped:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    session = aioboto3.Session()
    config = Config(max_pool_connections=100, retries={"mode": "standard"})
    async with session.client("sqs", endpoint_url=world["endpoint"], config=config) as sqs:
        jobs = [
            _drain(sqs, pair["dlq_url"], pair["target_url"], stop, faithful)
            for pair in world["pairs"]
            for _ in range(RECEIVERS_PER_DLQ)
        ]
        moved = sum(await asyncio.gather(*jobs))
    print(json.dumps({"moved": moved}))


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        flags = sys.argv[2:]
        asyncio.run(
            main(
                json.load(handle),
                until_stopped="--until-stopped" in flags,
                faithful="--faithful" in flags,
            )
        )
