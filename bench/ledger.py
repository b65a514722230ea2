"""`python -m bench.ledger`: what the ledger costs per message, with and without group commit.

`--batches` batches of 10 messages run `--in-flight` at a time against each ledger
(read, begin, commit: what a batch does), interleaved over `--runs` rounds so that a
busy moment slows every variant alike. The memory and SQLite ledgers run in this
process, with no AWS; CPU is this process's (every thread's) user + system time per
message. The DynamoDB ledger runs against the moto server (in this process, on
loopback) from a child process of its own, so that its CPU is the ledger's and its
client's alone, not the emulator's; the requests that reach the server are counted
there (`MotoServer.start_recording`), per batch. Each variant's median is printed as
JSON with the ratio to the memory ledger's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from retryd.ledger import Claim, DynamoDbLedger, Ledger, MemoryLedger, MemoryStore, SqliteLedger
from retryd.ledger.dynamodb import GROUP_MAX_OPS

CLAIM_S = 300.0
TTL_S = 86_400.0
BATCH = 10

Opener = Callable[[Path], Awaitable[Ledger]]


async def _sqlite(
    path: Path, *, max_ops: int | None = None, window_s: float | None = None
) -> Ledger:
    tuning: dict[str, Any] = {}
    if max_ops is not None:
        tuning["group_max_ops"] = max_ops
    if window_s is not None:
        tuning["group_window_s"] = window_s
    return await SqliteLedger.open(path, claim_s=CLAIM_S, ttl_s=TTL_S, owner="bench", **tuning)


async def _memory(_: Path) -> Ledger:
    return MemoryLedger(claim_s=CLAIM_S, ttl_s=TTL_S, owner="bench", store=MemoryStore())


VARIANTS: dict[str, Opener] = {
    "memory": _memory,
    # group_max_ops = 1: each call its own transaction, as before group commit.
    "sqlite, a transaction per call": lambda path: _sqlite(path, max_ops=1),
    # The window the first group commit held each group open for, before it was dropped.
    "sqlite, group commit, 2 ms window": lambda path: _sqlite(path, window_s=0.002),
    "sqlite, group commit (default)": _sqlite,
}
# The DynamoDB ledger's group size: 1 is a request per call, as before group commit.
DYNAMODB_VARIANTS: dict[str, int | None] = {
    "dynamodb, a request per call": 1,
    "dynamodb, group commit (default)": None,
}
REGION = "us-east-1"
# moto deep-copies a table on every TransactWriteItems (to roll a cancelled one back), so
# its time and memory grow with what it served (200 batches at 32 in flight took the server
# past 5 GB): each DynamoDB run gets a fresh table, and far fewer batches by default.
DYNAMODB_BATCHES = 64


def _table(tag: str) -> str:
    return f"bench-ledger-{tag}"


async def _drive(ledger: Ledger, batches: int, in_flight: int, tag: str) -> None:
    limiter = anyio.CapacityLimiter(in_flight)

    async def batch(index: int) -> None:
        async with limiter:
            claims = [Claim(f"{tag}-{index}-{n}", f"m-{index}-{n}", 1, None) for n in range(BATCH)]
            await ledger.read([c.key for c in claims])
            await ledger.begin(claims)
            await ledger.commit(claims, time.time())

    async with anyio.create_task_group() as tg:
        for index in range(batches):
            tg.start_soon(batch, index)


async def _one(name: str, scratch: Path, batches: int, in_flight: int, run: int) -> float:
    """CPU seconds of one variant's run."""
    ledger = await VARIANTS[name](scratch / f"{run}-{len(name)}.sqlite3")
    try:
        started = time.process_time()
        await _drive(ledger, batches, in_flight, f"{run}")
        return time.process_time() - started
    finally:
        await ledger.aclose()


async def _dynamodb_child(batches: int, in_flight: int, max_ops: int | None, tag: str) -> float:
    """CPU seconds of one DynamoDB run, in the child; the endpoint comes from the environment."""
    from retryd.aws import open_clients  # noqa: PLC0415 - the child's alone
    from retryd.settings import AwsSettings  # noqa: PLC0415

    async with (
        open_clients(AwsSettings()) as clients,
        DynamoDbLedger(
            clients.dynamodb,
            _table(tag),
            claim_s=CLAIM_S,
            ttl_s=TTL_S,
            owner="bench",
            group_max_ops=GROUP_MAX_OPS if max_ops is None else max_ops,
        ) as ledger,
    ):
        # A first call opens the connection and loads botocore's models: not per message.
        await ledger.read([f"{tag}-warm"])
        started = time.process_time()
        await _drive(ledger, batches, in_flight, tag)
        return time.process_time() - started


def _dynamodb_run(
    server: Any, batches: int, in_flight: int, max_ops: int | None, tag: str
) -> tuple[float, Counter[str]]:
    """CPU seconds of one DynamoDB run in a child process, and the requests it made, by name."""
    argv = [sys.executable, "-m", "bench.ledger", "--child", tag]
    argv += ["--batches", str(batches), "--in-flight", str(in_flight)]
    if max_ops is not None:
        argv += ["--max-ops", str(max_ops)]
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": server.url,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
    dynamodb = _moto_client(server.url)
    dynamodb.create_table(
        TableName=_table(tag),
        AttributeDefinitions=[{"AttributeName": "key", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "key", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    server.start_recording()
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)  # noqa: S603
        requests = server.recording()
    finally:
        server.stop_recording()
        dynamodb.delete_table(TableName=_table(tag))
    if done.returncode != 0:
        raise RuntimeError(f"the DynamoDB ledger run failed:\n{done.stderr[-3000:]}")
    calls: Counter[str] = Counter(
        entry["headers"].get("X-Amz-Target", "?").rsplit(".", 1)[-1] for entry in requests
    )
    # The warm-up read is not a batch's.
    calls["BatchGetItem"] -= 1
    return float(json.loads(done.stdout)["cpu_s"]), +calls


def _moto_client(url: str) -> Any:
    import boto3  # noqa: PLC0415 - only for the tables

    return boto3.client(
        "dynamodb",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",  # noqa: S106 - the emulator's
    )


def _measure_dynamodb(
    batches: int, in_flight: int, runs: int
) -> tuple[dict[str, list[float]], dict[str, list[Counter[str]]]]:
    from retryd.sandbox.emulator import MotoServer  # noqa: PLC0415 - only with DynamoDB

    cpu_s: dict[str, list[float]] = {name: [] for name in DYNAMODB_VARIANTS}
    calls: dict[str, list[Counter[str]]] = {name: [] for name in DYNAMODB_VARIANTS}
    # The emulator takes DynamoDB requests one at a time: moto races on side-by-side
    # transactions (retryd.sandbox.emulator).
    with MotoServer() as server:
        for run in range(runs):
            for number, (name, max_ops) in enumerate(DYNAMODB_VARIANTS.items()):
                spent, made = _dynamodb_run(server, batches, in_flight, max_ops, f"{run}-{number}")
                cpu_s[name].append(spent)
                calls[name].append(made)
    return cpu_s, calls


def measure(
    batches: int, in_flight: int, runs: int, *, dynamodb_batches: int = 0
) -> dict[str, Any]:
    """Median CPU ms per message of each variant, and its ratio to the memory ledger's;
    with `dynamodb_batches`, the DynamoDB ledger's too, and its requests per batch of 10."""
    cpu_s: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as scratch_name:
        for run in range(runs):
            for name in VARIANTS:
                spent = anyio.run(_one, name, Path(scratch_name), batches, in_flight, run)
                cpu_s[name].append(spent)
    per_msg = {
        name: 1000 * statistics.median(spent) / (batches * BATCH) for name, spent in cpu_s.items()
    }
    requests: dict[str, Any] = {}
    if dynamodb_batches:
        dynamodb_cpu_s, calls = _measure_dynamodb(dynamodb_batches, in_flight, runs)
        for name, dynamodb_spent in dynamodb_cpu_s.items():
            per_msg[name] = 1000 * statistics.median(dynamodb_spent) / (dynamodb_batches * BATCH)
        for name, made in calls.items():
            median = statistics.median(sum(each.values()) for each in made)
            requests[name] = {
                "per_batch": round(median / dynamodb_batches, 3),
                "by_name_first_run": dict(sorted(made[0].items())),
            }
    figures: dict[str, Any] = {
        "messages": batches * BATCH,
        "in_flight": in_flight,
        "runs": runs,
        "cpu_ms_per_msg": {name: round(ms, 4) for name, ms in per_msg.items()},
        "over_memory": {name: round(ms / per_msg["memory"], 2) for name, ms in per_msg.items()},
    }
    if requests:
        figures["dynamodb_messages"] = dynamodb_batches * BATCH
        figures["dynamodb_requests"] = requests
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__)
    parser.add_argument("--batches", type=int, default=2_000, help="batches of 10 per run")
    parser.add_argument("--in-flight", type=int, default=32, help="batches at once (16 DLQs x 2)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds; medians")
    parser.add_argument(
        "--dynamodb-batches",
        type=int,
        default=DYNAMODB_BATCHES,
        help="batches of 10 per DynamoDB run (on moto); 0 leaves DynamoDB out",
    )
    # The DynamoDB run's child process (internal): its tag, and its group size.
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--max-ops", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        spent = anyio.run(_dynamodb_child, args.batches, args.in_flight, args.max_ops, args.child)
        print(json.dumps({"cpu_s": spent}))
        return 0
    figures = measure(
        args.batches, args.in_flight, args.runs, dynamodb_batches=args.dynamodb_batches
    )
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
