"""`python -m bench.ledger`: what the ledger costs per message, with and without group commit.

No AWS and no emulator: `--batches` batches of 10 messages run `--in-flight` at a
time against each ledger (read, begin, commit: what a batch does), in one process,
interleaved over `--runs` rounds so that a busy moment slows every variant alike.
CPU is this process's (every thread's) user + system time per message; each
variant's median is printed as JSON with the ratio to the memory ledger's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from retryd.ledger import Claim, Ledger, MemoryLedger, MemoryStore, SqliteLedger

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


def measure(batches: int, in_flight: int, runs: int) -> dict[str, Any]:
    """Median CPU ms per message of each variant, and its ratio to the memory ledger's."""
    cpu_s: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as scratch_name:
        for run in range(runs):
            for name in VARIANTS:
                spent = anyio.run(_one, name, Path(scratch_name), batches, in_flight, run)
                cpu_s[name].append(spent)
    messages = batches * BATCH
    per_msg = {name: 1000 * statistics.median(spent) / messages for name, spent in cpu_s.items()}
    return {
        "messages": messages,
        "in_flight": in_flight,
        "runs": runs,
        "cpu_ms_per_msg": {name: round(ms, 4) for name, ms in per_msg.items()},
        "over_memory": {name: round(ms / per_msg["memory"], 2) for name, ms in per_msg.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__)
    parser.add_argument("--batches", type=int, default=2_000, help="batches of 10 per run")
    parser.add_argument("--in-flight", type=int, default=32, help="batches at once (16 DLQs x 2)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds; medians")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.batches, args.in_flight, args.runs), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
