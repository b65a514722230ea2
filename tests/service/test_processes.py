"""drain.processes = 2: worker processes sharing the DLQs under one parent, on the moto server."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from retryd.drain.shard import Shard
from tests.conftest import SettingsFactory
from tests.processes import json_lines
from tests.world import ACCOUNT, REGION, World, envelope

DLQS = [f"retry-{n}" for n in range(6)]
PER_DLQ = 10
WAIT_S = 60.0


def _config(tmp_path: Path, *, port: int = 0, http: bool = False) -> Path:
    path = tmp_path / "retryd.toml"
    path.write_text(
        f"""
[aws]
max_attempts = 1
[discovery]
queue_prefixes = ["retry-"]
[schedule]
interval_s = 0.5
[drain]
processes = 2
receive_wait_s = 0
visibility_timeout_s = 10
[guards]
allow_targets = ["arn:aws:sqs:{REGION}:{ACCOUNT}:dest"]
[backoff]
base_s = 0.001
max_s = 0.001
[ledger]
backend = "sqlite"
path = "{tmp_path / "ledger.sqlite3"}"
[http]
enabled = {"true" if http else "false"}
host = "127.0.0.1"
port = {port}
"""
    )
    return path


def _fill(world: World) -> dict[int, list[str]]:
    """DLQs of both workers, PER_DLQ envelopes each, every payload numbered; who owns which."""
    world.create_queue("retryd-parking")
    world.create_queue("dest")
    owners: dict[int, list[str]] = {0: [], 1: []}
    number = 0
    for name in DLQS:
        world.create_queue(name)
        owners[0 if Shard(0, 2).owns(world.queue_arn(name)) else 1].append(name)
        for _ in range(PER_DLQ):
            world.send(name, envelope("sqs", world.queue_arn("dest"), {"n": number}))
            number += 1
    # The test means something only if both workers have DLQs to drain.
    assert owners[0], owners
    assert owners[1], owners
    return owners


def _delivered(world: World) -> Counter[int]:
    return Counter(json.loads(m["Body"])["n"] for m in world.drain("dest"))


def test_the_memory_ledger_cannot_be_shared_by_processes(make_settings: SettingsFactory) -> None:
    """processes > 1 with the memory ledger is one configuration error naming both settings."""
    with pytest.raises(ValidationError, match=r"drain.processes = 2 needs a ledger .*sqlite"):
        make_settings(drain={"processes": 2}, ledger={"backend": "memory"})


def test_once_with_two_processes_drains_every_dlq_once(world: World, tmp_path: Path) -> None:
    """`retryd once`: both workers drain their DLQs, 0 lost, 0 duplicated, one summed report."""
    owners = _fill(world)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "retryd",
            "once",
            "--config",
            str(_config(tmp_path)),
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    total = len(DLQS) * PER_DLQ
    assert (report["queues"], report["received"]) == (len(DLQS), total)
    assert report["outcomes"]["resubmitted"] == total
    delivered = _delivered(world)
    assert sorted(delivered) == list(range(total))
    assert max(delivered.values()) == 1
    assert all(world.depth(name) == 0 for name in DLQS)
    # Each worker drained exactly the DLQs that fall to it.
    by_worker: dict[int, set[str]] = {}
    for line in json_lines(done.stderr):
        if line.get("event") == "resubmitted":
            by_worker.setdefault(line["worker"], set()).add(line["queue"])
    assert by_worker == {1: set(owners[0]), 2: set(owners[1])}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - loopback
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def _wait_for(what: str, check: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert process.poll() is None, f"retryd exited {process.returncode} waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@contextmanager
def _daemon(config: Path, log_path: Path) -> Iterator[subprocess.Popen[str]]:
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "retryd", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
            env=os.environ.copy(),
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            # Workers left behind by a failed test are still this test's to stop.
            for line in json_lines(log_path.read_text()):
                for pid in line.get("pids", []):
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def _messages_by_queue(exposition: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for match in re.finditer(
        r"^retryd_messages_total\{([^}]*)\} ([0-9.e+]+)$", exposition, re.MULTILINE
    ):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels["outcome"] == "resubmitted":
            counts[labels["queue"]] += int(float(match.group(2)))
    return counts


def test_once_says_an_error_every_worker_meets_once_naming_them_all(
    world: World, tmp_path: Path
) -> None:
    """No parking queue: both workers stop on it; `once` prints one `error:` line for both,
    as `run` does, exits 4, and the JSON report holds that one line too."""
    world.create_queue("dest")
    for name in DLQS:
        world.create_queue(name)
    command = [sys.executable, "-m", "retryd", "once", "--config", str(_config(tmp_path))]
    done = subprocess.run(
        [*command, "--output", "json"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 4, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    named = re.match(
        r"error: drain worker 1 of 2 \(pid \d+\), drain worker 2 of 2 \(pid \d+\): "
        r"cycle: parking queue 'retryd-parking' not found",
        errors[0],
    )
    assert named, errors[0]
    assert json.loads(done.stdout)["errors"] == [errors[0].removeprefix("error: ")]


def test_run_with_two_processes_serves_both_workers_metrics_and_stops_cleanly(
    world: World, tmp_path: Path
) -> None:
    """`retryd run`: one /metrics counts both workers' messages; one SIGTERM stops all, exit 0."""
    _fill(world)
    port = _free_port()
    log_path = tmp_path / "retryd.log"
    with _daemon(_config(tmp_path, port=port, http=True), log_path) as retryd:
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        want = Counter({name: PER_DLQ for name in DLQS})
        _wait_for(
            "every message counted in /metrics",
            lambda: _messages_by_queue(_get(metrics_url)[1]) == want,
            retryd,
        )
        exposition = _get(metrics_url)[1]
        assert "retryd_build_info{" in exposition
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        retryd.send_signal(signal.SIGTERM)
        assert retryd.wait(timeout=WAIT_S) == 0
    lines = json_lines(log_path.read_text())
    (started,) = [line for line in lines if line.get("event") == "workers-started"]
    workers = started["pids"]
    assert len(workers) == 2
    # Both workers saw the one SIGTERM the parent passed on, and stopped.
    assert {line.get("worker") for line in lines if line.get("event") == "stopped"} >= {1, 2}
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    delivered = _delivered(world)
    assert sorted(delivered) == list(range(len(DLQS) * PER_DLQ))
    assert max(delivered.values()) == 1


def _workers_started(log_path: Path, retryd: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait for the parent's `workers-started` line (it names the workers' pids)."""

    def started() -> list[dict[str, Any]]:
        return [
            line
            for line in json_lines(log_path.read_text())
            if line.get("event") == "workers-started"
        ]

    _wait_for("the workers to start", lambda: bool(started()), retryd)
    (line,) = started()
    return line


def test_a_worker_that_dies_stops_the_others_and_fails_the_parent(
    world: World, tmp_path: Path
) -> None:
    """A worker killed outright is not restarted: the parent stops the other and exits 1."""
    world.create_queue("retryd-parking")
    log_path = tmp_path / "retryd.log"
    with _daemon(_config(tmp_path), log_path) as retryd:
        started = _workers_started(log_path, retryd)
        victim, survivor = started["pids"]
        os.kill(victim, signal.SIGKILL)
        assert retryd.wait(timeout=WAIT_S) == 1
    text = log_path.read_text()
    died = [line for line in json_lines(text) if line.get("event") == "worker-died"]
    assert died
    assert died[0]["exit_code"] == -signal.SIGKILL
    assert f"pid {victim}" in text.splitlines()[-1]
    with pytest.raises(ProcessLookupError):
        os.kill(survivor, 0)


def _gone(pid: int) -> bool:
    """No such process, or only its exit status is left (a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            return any(line.startswith("State:\tZ") for line in status)
    except FileNotFoundError:
        return True


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_workers_stop_when_the_parent_is_killed_outright(world: World, tmp_path: Path) -> None:
    """A parent killed with SIGKILL passes nothing on; its workers still stop, none lingers."""
    world.create_queue("retryd-parking")
    log_path = tmp_path / "retryd.log"
    with _daemon(_config(tmp_path), log_path) as retryd:
        started = _workers_started(log_path, retryd)
        retryd.kill()
        retryd.wait()
        deadline = time.monotonic() + WAIT_S
        while not all(_gone(pid) for pid in started["pids"]):
            assert time.monotonic() < deadline, "a worker outlived its parent"
            time.sleep(0.2)


# A transform that loads in the parent (which checks the hooks before it starts the
# workers) but not in a worker: the simplest configuration error only a worker finds.
WORKER_ONLY_HOOK = """
import multiprocessing

if multiprocessing.parent_process() is not None:
    raise RuntimeError("this transform does not load in a worker process")


def transform(body):
    return body
"""


@pytest.mark.parametrize("command", ["run", "once"])
def test_a_config_error_found_in_a_worker_exits_2_with_its_one_line(
    world: World, tmp_path: Path, command: str
) -> None:
    """A worker's ConfigError: the parent exits 2 (not 1) and prints the line, no traceback."""
    world.create_queue("retryd-parking")
    (tmp_path / "worker_only_hook.py").write_text(WORKER_ONLY_HOOK)
    config = _config(tmp_path)
    config.write_text(
        config.read_text()
        + '\n[[hooks]]\nqueue = "retry-*"\ntransform = "worker_only_hook:transform"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "retryd", command, "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "invalid configuration" in line]
    assert errors, done.stderr[-3000:]
    assert "cannot import 'worker_only_hook'" in errors[0]
    assert "does not load in a worker process" in errors[0]


def test_a_worker_that_cannot_start_has_the_started_ones_stopped_cleanly(
    world: World,
    tmp_path: Path,
    make_settings: SettingsFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker 2 of 3 fails to spawn: worker 1, already draining, gets SIGTERM and exits 0."""
    from multiprocessing.context import SpawnProcess  # noqa: PLC0415

    from retryd.service import processes  # noqa: PLC0415

    world.create_queue("retryd-parking")
    settings = make_settings(
        drain={"processes": 3, "receive_wait_s": 0},
        ledger={"backend": "sqlite", "path": str(tmp_path / "ledger.sqlite3")},
        schedule={"interval_s": 0.5},
    )
    started: list[SpawnProcess] = []
    first_cells: list[Any] = []
    spawn = SpawnProcess.start

    def start_only_the_first(process: SpawnProcess) -> None:
        if started:
            # Worker 1 is serving (ready: its first discovery done) when worker 2 fails.
            deadline = time.monotonic() + WAIT_S
            while not first_cells[0][1]:
                assert started[0].exitcode is None, "worker 1 exited before it was ready"
                assert time.monotonic() < deadline, "worker 1 never became ready"
                time.sleep(0.1)
            raise OSError(11, "Resource temporarily unavailable")
        # Its shared cells (tick, ready), as the parent passes them; start() drops its args.
        first_cells.append(process._args[3])  # type: ignore[attr-defined]
        spawn(process)
        started.append(process)

    monkeypatch.setattr(SpawnProcess, "start", start_only_the_first)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    try:
        with pytest.raises(
            processes.WorkerFailedError, match="could not start drain worker 2 of 3"
        ):
            processes._start("run", settings, "info", "json", str(metrics_dir))
        (first,) = started
        # Stopped before _start returned, not left to the parent-death signal, and by
        # its own two-phase stop (exit 0), not killed.
        assert first.exitcode == 0
    finally:
        for process in started:
            if process.exitcode is None:
                process.kill()
                process.join()
