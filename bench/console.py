"""The console at scale: overview and parking search over 1,000 DLQs and 100,000 parked copies.

Fills a SQLite control store (the ledger's backend on one host) with what the daemon
would have recorded, then times `GET /api/overview` and a parking search through the
console's own application, and prints the figures as JSON (no assertion on them):

    .venv/bin/python -m bench.console [--dlqs 1000] [--parked 100000] [--runs 5]

No AWS is called: the console is given no clients, so the DLQs' depths (one
GetQueueAttributes each, 16 at a time) are left out of the overview's time.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from retryd.console.app import build_app
from retryd.console.auth import NoAuth
from retryd.console.context import Console, templates
from retryd.console.documents import Sources
from retryd.console.metrics import ConsoleMetrics
from retryd.control.readmodel import (
    PARKED_BUCKET_S,
    PARKED_PER_HOUR,
    DlqView,
    ParkedCopy,
    record_dlq,
    record_parked,
)
from retryd.control.sqlite import SqliteControlStore
from retryd.sandbox.world import sandbox_settings

ACCOUNT = "123456789012"
FILL_CHUNK = 5_000
REASONS = ("target-rejected", "attempts-exhausted", "target-not-allowed", "unresolvable")


def _group(dlq: int, n: int) -> dict[str, Any]:
    return {
        "id": f"{dlq:05d}{n:05d}",
        "target": f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:fn-{dlq % 50}",
        "signature": f"Timeout: upstream {n} timed out after <n> ms",
        "count": 1 + (dlq * 7 + n) % 40,
        "oldest": "2026-12-01T00:00:00+00:00",
        "newest": "2026-12-06T00:00:00+00:00",
        "example_message_id": f"m-{dlq}-{n}",
        "source_attempts_max": 3,
    }


async def fill(store: SqliteControlStore, dlqs: int, parked: int, now_s: float) -> None:
    for dlq in range(dlqs):
        name = f"retry-bench-{dlq:04d}"
        await record_dlq(
            store,
            DlqView(
                name,
                f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/{name}",
                f"arn:aws:sqs:eu-west-1:{ACCOUNT}:{name}",
                now_s,
                [_group(dlq, n) for n in range(dlq % 5)],
            ),
        )
    for start in range(0, parked, FILL_CHUNK):
        # In chunks, as the daemon records them: the peak RSS is the console's, not the fill's.
        await record_parked(
            store,
            [_copy(n, dlqs, now_s) for n in range(start, min(parked, start + FILL_CHUNK))],
            ttl_s=14 * 86_400,
        )


def _copy(n: int, dlqs: int, now_s: float) -> ParkedCopy:
    # PARKED_PER_HOUR to an hour, going back from now: every copy is kept and indexed.
    at_s = now_s - (n // PARKED_PER_HOUR) * PARKED_BUCKET_S - n % PARKED_PER_HOUR
    return ParkedCopy(
        message_id=f"msg-{n:07d}",
        reason=REASONS[n % len(REASONS)],
        target=f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:fn-{n % 50}",
        group=f"{n % 1000:010d}",
        source_queue=f"retry-bench-{n % dlqs:04d}",
        key=f"order-{n}",
        error=f"AccessDeniedException: not authorised to invoke fn-{n % 50} (request {n})",
        at_s=at_s,
        size_bytes=512,
    )


def _p95(seconds: list[float]) -> float:
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


async def timed(
    client: TestClient[web.Request, web.Application], path: str, runs: int
) -> dict[str, Any]:
    seconds = []
    cpu_seconds = []
    size = 0
    for _ in range(runs):
        started = time.perf_counter()
        cpu_started = time.process_time()
        response = await client.get(path)
        body = await response.read()
        seconds.append(time.perf_counter() - started)
        # The console and this client share the process: its CPU time is the request's,
        # a figure the other load on a shared machine does not inflate.
        cpu_seconds.append(time.process_time() - cpu_started)
        if not response.ok:
            raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
        size = len(body)
    return {
        "path": path,
        "median_s": round(statistics.median(seconds), 4),
        "p95_s": round(_p95(seconds), 4),
        "max_s": round(max(seconds), 4),
        "median_cpu_s": round(statistics.median(cpu_seconds), 4),
        "bytes": size,
    }


async def main(dlqs: int, parked: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteControlStore(Path(folder) / "ledger.sqlite3")
        now_s = time.time()
        started = time.perf_counter()
        await fill(store, dlqs, parked, now_s)
        fill_s = time.perf_counter() - started
        console = Console(
            sources=Sources(sandbox_settings(), store, None),
            caller="bench",
            metrics=ConsoleMetrics(CollectorRegistry()),
            templates=templates(),
        )
        app: web.Application = build_app(console, NoAuth())
        async with TestClient(TestServer(app)) as client:
            figures = [
                await timed(client, "/api/overview", runs),
                await timed(client, "/api/parking?q=fn-7+&reason=attempts-exhausted", runs),
                await timed(client, "/api/parking?page=40", runs),
                await timed(client, "/", runs),
            ]
    return {
        "dlqs": dlqs,
        "parked": parked,
        "fill_s": round(fill_s, 2),
        "requests": figures,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dlqs", type=int, default=1_000)
    parser.add_argument("--parked", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(anyio.run(main, args.dlqs, args.parked, args.runs), indent=2))
