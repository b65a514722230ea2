"""systemd: the notify protocol from a real `retryd run`; the unit, checked by systemd's tools."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from retryd.service.systemd import SystemdNotifier, socket_address, watchdog_interval_s
from retryd.settings import DrainSettings, ScheduleSettings, ShutdownSettings
from tests.processes import retryd_run
from tests.tools import require_tool
from tests.world import ACCOUNT, REGION, World

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "retryd.service"
VENV_RETRYD = ROOT / ".venv" / "bin" / "retryd"
# Best first; systemd-analyze security's levels at or better than "OK".
GOOD_LEVELS = ("PERFECT", "SAFE", "OK")


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket, as systemd's; a short path keeps within sun_path's 108 bytes."""
    directory = tempfile.mkdtemp(prefix="retryd-notify-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(directory)


def receive(sock: socket.socket, timeout_s: float = 30) -> str:
    sock.settimeout(timeout_s)
    return sock.recv(4096).decode()


def receive_until(sock: socket.socket, wanted: str, timeout_s: float = 30) -> list[str]:
    """Every datagram up to and including the first that is `wanted`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while wanted not in seen:
        remaining_s = deadline - time.monotonic()
        assert remaining_s > 0, f"no {wanted} within {timeout_s} s; got {seen}"
        seen.append(receive(sock, remaining_s))
    return seen


def test_socket_address_maps_abstract_names() -> None:
    """'@name' is the abstract namespace (leading NUL); a path stays a path."""
    assert socket_address("@retryd/notify") == "\0retryd/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


def test_watchdog_interval_needs_usec_and_this_pid() -> None:
    """WATCHDOG_USEC gives the interval only for the process WATCHDOG_PID names (if any)."""
    assert watchdog_interval_s({"WATCHDOG_USEC": "480000000"}, 42) == 480.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, 42) == 2.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_interval_s({}, 42) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}, 42) is None


def test_notifier_without_socket_sends_nothing() -> None:
    """Not under systemd: every call is a no-op, the watchdog is off."""
    notifier = SystemdNotifier.from_environ({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_s is None
    notifier.ready()
    notifier.watchdog()
    notifier.stopping()


def test_notifier_reaches_an_abstract_socket() -> None:
    """NOTIFY_SOCKET=@name reaches a socket bound in the abstract namespace."""
    name = f"retryd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = SystemdNotifier.from_environ(
            {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000"}
        )
        notifier.ready()
        notifier.watchdog()
        notifier.stopping()
        assert [receive(sock, 5) for _ in range(3)] == ["READY=1", "WATCHDOG=1", "STOPPING=1"]


def test_notifier_without_watchdog_sends_no_pings(
    notify_socket: tuple[socket.socket, str],
) -> None:
    """Without WATCHDOG_USEC, watchdog() stays silent; ready() still arrives."""
    sock, path = notify_socket
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": path})
    notifier.watchdog()
    notifier.ready()
    assert receive(sock, 5) == "READY=1"


def test_notifier_survives_a_missing_socket(tmp_path: Path) -> None:
    """A socket that went away costs a log line, not the daemon."""
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with capture_logs() as logs:
        notifier.ready()
    (line,) = [entry for entry in logs if entry["event"] == "systemd-notify-failed"]
    assert line["log_level"] == "warning"
    assert line["message"] == "READY=1"
    assert line["error"]


def run_config(tmp_path: Path) -> Path:
    path = tmp_path / "retryd.toml"
    path.write_text(
        f"""
[aws]
max_attempts = 1

[discovery]
queue_prefixes = ["retry-"]

[drain]
receive_wait_s = 0

[schedule]
interval_s = 0.2

[guards]
allow_targets = ["arn:aws:*:{REGION}:{ACCOUNT}:*"]

[ledger]
backend = "memory"

[http]
host = "127.0.0.1"
port = 0
"""
    )
    return path


def test_retryd_run_notifies_ready_watchdog_and_stopping(
    world: World,
    tmp_path: Path,
    notify_socket: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real `retryd run` under NOTIFY_SOCKET: READY=1, WATCHDOG=1 per tick, STOPPING=1 on TERM."""
    world.create_queue("retryd-parking")
    world.create_queue("retry-work")
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "5000000")
    with retryd_run(run_config(tmp_path)) as process:
        first = receive_until(sock, "READY=1")
        assert first == ["READY=1"], "something was notified before READY=1"
        pings = [receive(sock) for _ in range(3)]
        assert pings == ["WATCHDOG=1"] * 3
        process.send_signal(signal.SIGTERM)
        receive_until(sock, "STOPPING=1")
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr


def test_retryd_run_without_watchdog_only_notifies_state(
    world: World,
    tmp_path: Path,
    notify_socket: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without WATCHDOG_USEC, the datagrams are exactly READY=1 then STOPPING=1."""
    world.create_queue("retryd-parking")
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    with retryd_run(run_config(tmp_path)) as process:
        assert receive(sock) == "READY=1"
        time.sleep(0.5)  # several scheduler ticks, none of which may ping
        process.send_signal(signal.SIGTERM)
        assert receive(sock) == "STOPPING=1"
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr


def unit_values(key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", UNIT.read_text(), re.MULTILINE)


def unit_with_real_exec(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart pointing at this checkout's retryd, which exists."""
    assert VENV_RETRYD.exists()
    text = UNIT.read_text().replace("/opt/retryd/bin/retryd", str(VENV_RETRYD))
    path = tmp_path / "retryd.service"
    path.write_text(text)
    return path


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit: no warnings, exit 0."""
    systemd_analyze = require_tool("systemd-analyze", "systemd")
    result = subprocess.run(
        [systemd_analyze, "verify", str(unit_with_real_exec(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "retryd.service" not in result.stderr, result.stderr


def test_unit_security_exposure_is_ok_or_better(tmp_path: Path) -> None:
    """`systemd-analyze security --offline=yes` rates the unit "OK" or better."""
    systemd_analyze = require_tool("systemd-analyze", "systemd")
    result = subprocess.run(
        [systemd_analyze, "security", "--offline=yes", str(unit_with_real_exec(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    score, level = float(match.group(1)), match.group(2)
    assert level in GOOD_LEVELS, f"exposure {score} {level}"
    # docs/deploy/systemd.md quotes this score: a change that moves it must update that page.
    assert score <= 1.1, f"exposure rose to {score} {level}; update docs/deploy/systemd.md"


def test_unit_is_notify_with_the_hardening_it_promises() -> None:
    """Type=notify, restart on failure, and the sandbox settings the systemd page names."""
    assert unit_values("Type") == ["notify"]
    assert unit_values("Restart") == ["on-failure"]
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "StateDirectory": "retryd",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert unit_values(key) == [value], key
    assert unit_values("Environment") == ["RETRYD_LEDGER__PATH=%S/retryd/retryd.sqlite3"]


def test_unit_timeouts_fit_the_daemon_defaults() -> None:
    """TimeoutStopSec is above the drain; WatchdogSec above one interval, one cycle budget and
    one batch kept to its longest lease."""
    (stop,) = unit_values("TimeoutStopSec")
    (watchdog,) = unit_values("WatchdogSec")
    drain_timeout_s = ShutdownSettings().drain_timeout_s
    assert float(stop) >= drain_timeout_s + 5
    drain = DrainSettings()
    assert (
        float(watchdog) > ScheduleSettings().interval_s + drain.cycle_budget_s + drain.lease_cap_s
    )
