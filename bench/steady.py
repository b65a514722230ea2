"""The steady and starved worlds: a daemon fed at a constant rate, measured in its stride.

Producers put dead letters into the DLQs at `rate` msg/s for `duration_s` while
the contender (`retryd run`, or the floor with `--until-stopped`) keeps moving
them back; after the feed stops, the harness waits until the DLQs are empty,
stops the contender with SIGTERM and reads every target. Figures are taken over
the window after `warmup_s` (start-up and the first backlog left out):

- sustained msg/s: messages that reached their target within the window, per second;
- latency from DLQ arrival to target, p50 and p99, of the messages fed within the
  window: arrival is the producer's clock when it sent the message (stamped in the
  body, the moment its SentTimestamp records), arrival at the target is the target
  queue's SentTimestamp (the emulator's clock, the same machine's);
- CPU ms per message: the contender process's user + system time over the window
  (/proc), divided by the messages delivered in it.

Every run is verified as in the other worlds: each message once, none lost, none
left in a DLQ, none parked.

The starved world holds retryd to a share of one core, as an ECS task of 0.25
vCPU is: by a CFS quota (a cgroup's `cpu.max` or `cpu.cfs_quota_us`) where this
machine lets the harness make a cgroup, otherwise by stopping and continuing the
process (SIGSTOP/SIGCONT) so that it runs that share of every 100 ms.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import worlds

# Threads putting batches of 10: one boto3 call each takes a few ms, so one thread
# alone could not keep 100 batches a second on a loaded machine.
PRODUCER_THREADS = 4
THROTTLE_PERIOD_S = 0.1
MIN_FOR_QUANTILES = 2
CGROUP_ROOTS = (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup"))


@dataclass(frozen=True)
class Feed:
    """What the producers offer: `rate_per_s` for `duration_s`; figures after `warmup_s`."""

    rate_per_s: float
    duration_s: float
    warmup_s: float
    tail_s: float


@dataclass(frozen=True)
class Arrival:
    """One message read back from its target."""

    message_id: int
    sent_ms: float
    arrived_ms: float


def process_cpu_s(pid: int) -> float | None:
    """User + system seconds of a live process (Linux /proc), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            # The command name (field 2) may hold spaces; the fields after it do not.
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    # utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    return (int(fields[11]) + int(fields[12])) / ticks_per_s


def produce(world: worlds.SqsWorld, feed: Feed, started_s: float) -> int:
    """Put numbered messages into the DLQs at the feed's rate, batches of 10, round robin.

    Batch k is due at `started_s + 10 k / rate` (time.time); a thread that falls
    behind sends at once, so a slow moment is caught up, not dropped. Returns how
    many messages were put.
    """
    sqs = worlds.client("sqs", world.endpoint)
    batches = int(feed.rate_per_s * feed.duration_s) // 10
    next_batch = iter(range(batches))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                index = next(next_batch, None)
            if index is None:
                return
            pause_s = started_s + 10 * index / feed.rate_per_s - time.time()
            if pause_s > 0:
                time.sleep(pause_s)
            sent_ms = time.time() * 1000
            entries = [
                {"Id": str(i), "MessageBody": json.dumps({"id": n, "t_ms": sent_ms})}
                for i, n in enumerate(range(10 * index, 10 * index + 10))
            ]
            url = world.pairs[index % len(world.pairs)]["dlq_url"]
            answer = sqs.send_message_batch(QueueUrl=url, Entries=entries)
            if answer.get("Failed"):
                raise RuntimeError(f"could not feed the world: {answer['Failed'][:1]}")

    with ThreadPoolExecutor(max_workers=PRODUCER_THREADS) as pool:
        for job in [pool.submit(work) for _ in range(PRODUCER_THREADS)]:
            job.result()
    world.messages = 10 * batches
    return world.messages


def _dlq_depth(world: worlds.SqsWorld) -> int:
    sqs = worlds.client("sqs", world.endpoint)
    total = 0
    for pair in world.pairs:
        attributes = sqs.get_queue_attributes(
            QueueUrl=pair["dlq_url"],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        total += int(attributes["ApproximateNumberOfMessages"])
        total += int(attributes["ApproximateNumberOfMessagesNotVisible"])
    return total


def wait_until_drained(world: worlds.SqsWorld, timeout_s: float) -> bool:
    """True once every DLQ is empty (nothing visible or in flight), False at the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _dlq_depth(world) == 0:
            return True
        time.sleep(0.5)
    return False


def _read_target(sqs: Any, url: str) -> list[Arrival]:
    found: list[Arrival] = []
    while True:
        got = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, AttributeNames=["All"]
        )
        batch = got.get("Messages", [])
        if not batch:
            return found
        for message in batch:
            body = json.loads(message["Body"])
            arrived_ms = float(message["Attributes"]["SentTimestamp"])
            found.append(Arrival(body["id"], float(body["t_ms"]), arrived_ms))
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
            ],
        )


def collect(world: worlds.SqsWorld) -> tuple[list[Arrival], dict[str, int]]:
    """Every message in the targets (emptying them), and the run's check as in worlds."""
    sqs = worlds.client("sqs", world.endpoint)
    with ThreadPoolExecutor(max_workers=8) as pool:
        arrivals = [
            arrival
            for found in pool.map(lambda p: _read_target(sqs, p["target_url"]), world.pairs)
            for arrival in found
        ]
    delivered = Counter(arrival.message_id for arrival in arrivals)
    # Whatever a contender left behind is counted (and emptied) the same way as elsewhere.
    rest = worlds.verify_and_reset(world)
    check = {
        "delivered": len(delivered),
        "duplicated": sum(count - 1 for count in delivered.values()),
        "lost": world.messages - len(delivered),
        "left_in_dlq": rest["left_in_dlq"],
        "parked": rest["parked"],
    }
    return arrivals, check


def figures(
    arrivals: list[Arrival], window_ms: tuple[float, float], cpu_s: float | None
) -> dict[str, Any]:
    """Sustained rate, latency percentiles and CPU per message over one window."""
    start_ms, end_ms = window_ms
    window_s = (end_ms - start_ms) / 1000
    delivered = sum(1 for a in arrivals if start_ms <= a.arrived_ms <= end_ms)
    fed = sorted(a.arrived_ms - a.sent_ms for a in arrivals if start_ms <= a.sent_ms <= end_ms)
    out: dict[str, Any] = {
        "window_s": round(window_s, 1),
        "offered_msg_per_s": round(len(fed) / window_s, 1) if window_s > 0 else None,
        "sustained_msg_per_s": round(delivered / window_s, 1) if window_s > 0 else None,
        "latency_p50_ms": None,
        "latency_p99_ms": None,
        "cpu_ms_per_msg": None,
    }
    if len(fed) >= MIN_FOR_QUANTILES:
        out["latency_p50_ms"] = round(statistics.median(fed), 1)
        out["latency_p99_ms"] = round(statistics.quantiles(fed, n=100, method="inclusive")[98], 1)
    if cpu_s is not None and delivered:
        out["cpu_ms_per_msg"] = round(1000 * cpu_s / delivered, 3)
    return out


class Throttle:
    """Hold a process to `share` of one core: a CFS quota if a cgroup can be made, else stops.

    `start(pid)` applies it, `release()` lifts it (so that the process shuts down at
    full speed), `close()` removes what `start` made once the process has exited.
    """

    def __init__(self, share: float, name: str) -> None:
        self.share = share
        self._name = name
        self._cgroup: Path | None = None
        self._stop = threading.Event()
        self._cycler: threading.Thread | None = None
        self._pid: int | None = None
        self.how = ""

    def _make_cgroup(self, pid: int) -> Path | None:
        period_us = int(THROTTLE_PERIOD_S * 1_000_000)
        quota_us = int(self.share * period_us)
        for root in CGROUP_ROOTS:
            group = root / self._name
            try:
                if (root / "cpu.cfs_quota_us").exists():  # cgroup v1, the cpu controller
                    group.mkdir()
                    (group / "cpu.cfs_period_us").write_text(str(period_us))
                    (group / "cpu.cfs_quota_us").write_text(str(quota_us))
                elif (root / "cgroup.controllers").exists():  # cgroup v2
                    group.mkdir()
                    (group / "cpu.max").write_text(f"{quota_us} {period_us}")
                else:
                    continue
                (group / "cgroup.procs").write_text(str(pid))
            except OSError:
                if group.exists():
                    group.rmdir()
                continue
            self.how = f"cgroup {group} (quota {quota_us} us per {period_us} us)"
            return group
        return None

    def start(self, pid: int) -> None:
        self._pid = pid
        self._cgroup = self._make_cgroup(pid)
        if self._cgroup is not None:
            return
        self.how = f"SIGSTOP/SIGCONT, running {self.share:.0%} of every {THROTTLE_PERIOD_S} s"

        def cycle() -> None:
            run_s = self.share * THROTTLE_PERIOD_S
            while not self._stop.wait(run_s):
                os.kill(pid, signal.SIGSTOP)
                stopped = self._stop.wait(THROTTLE_PERIOD_S - run_s)
                os.kill(pid, signal.SIGCONT)
                if stopped:
                    return

        self._cycler = threading.Thread(target=cycle, daemon=True)
        self._cycler.start()

    def release(self) -> None:
        if self._cycler is not None:
            self._stop.set()
            self._cycler.join()
            self._cycler = None
        if self._cgroup is not None:
            quota = self._cgroup / "cpu.cfs_quota_us"
            if quota.exists():
                quota.write_text("-1")
            else:
                (self._cgroup / "cpu.max").write_text("max")

    def close(self) -> None:
        if self._cgroup is not None:
            # Gone already, or the process is still in it: nothing else to do.
            with contextlib.suppress(OSError):
                self._cgroup.rmdir()
            self._cgroup = None


def run_fed(
    world: worlds.SqsWorld,
    argv: list[str],
    env: dict[str, str],
    feed: Feed,
    log_path: Path,
    *,
    throttle: Throttle | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One contender fed at a constant rate: its figures over the window, and its check."""
    say = on_progress or (lambda _text: None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(  # noqa: S603 - argv built by the harness
            argv, env={**os.environ, **env}, stdout=log, stderr=log
        )
        try:
            if throttle is not None:
                throttle.start(process.pid)
            started_s = time.time()
            cpu: dict[str, float | None] = {}

            def sample(at_s: float, key: str) -> None:
                time.sleep(max(0.0, at_s - time.time()))
                cpu[key] = process_cpu_s(process.pid)

            window = (started_s + feed.warmup_s, started_s + feed.duration_s)
            samplers = [
                threading.Thread(target=sample, args=(at_s, key), daemon=True)
                for at_s, key in zip(window, ("start", "end"), strict=True)
            ]
            for sampler in samplers:
                sampler.start()
            produced = produce(world, feed, started_s)
            for sampler in samplers:
                sampler.join()
            say(f"fed {produced} messages; waiting for the DLQs to empty")
            drained = wait_until_drained(world, feed.tail_s)
        finally:
            if throttle is not None:
                throttle.release()
            process.send_signal(signal.SIGTERM)
            try:
                exit_code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                exit_code = process.wait()
            if throttle is not None:
                throttle.close()
    arrivals, check = collect(world)
    start_cpu, end_cpu = cpu.get("start"), cpu.get("end")
    cpu_s = end_cpu - start_cpu if start_cpu is not None and end_cpu is not None else None
    out = figures(arrivals, (1000 * window[0], 1000 * window[1]), cpu_s)
    out["messages"] = produced
    out["drained_within_tail"] = drained
    out["exit_code"] = exit_code
    out["check"] = check
    out["verified"] = (
        check["lost"] == 0
        and check["duplicated"] == 0
        and check["left_in_dlq"] == 0
        and check["parked"] == 0
        and exit_code == 0
    )
    if throttle is not None:
        out["throttle"] = throttle.how
    return out
