"""Shared fixtures: one moto server per test session on a free port, reset for every test."""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from retryd.control.memory import reset_shared
from retryd.sandbox.emulator import MotoServer
from retryd.settings import Settings
from tests.faults import FaultInjector
from tests.reliability.conftest import FIGURES_ENV
from tests.stepfunctions_front import redrive_front
from tests.world import ACCOUNT, REGION, World

SettingsFactory = Callable[..., Settings]

# Hypothesis's per-example deadline (200 ms) and its too-slow health check are timing
# assertions: on a loaded runner a property test failed DeadlineExceeded at 257 ms with
# nothing wrong. Speed is the benchmarks' business (bench/), never a test's.
hypothesis_settings.register_profile(
    "retryd", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("retryd")


def pytest_configure(config: pytest.Config) -> None:
    """In the controlling process: a file for the reliability suites' figures lines."""
    if not hasattr(config, "workerinput") and FIGURES_ENV not in os.environ:
        handle, path = tempfile.mkstemp(prefix="retryd-figures-", suffix=".txt")
        os.close(handle)
        # Set before xdist starts its workers, which inherit the environment.
        os.environ[FIGURES_ENV] = path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures lines the reliability suites recorded, in whichever process they ran."""
    if hasattr(terminalreporter.config, "workerinput") or FIGURES_ENV not in os.environ:
        return
    path = Path(os.environ.pop(FIGURES_ENV))
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    if lines:
        sizes = "full" if os.environ.get("RETRYD_RELIABILITY") == "full" else "moderate"
        terminalreporter.section(f"reliability figures ({sizes} sizes)")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the reliability suites, then the slow tests, first; otherwise keep the order.

    Under xdist (`--dist loadfile`) files are handed to workers in collection order, so a
    slow file collected last would run alone at the end while the other workers idle.
    """
    first = ("reliability", "slow")  # the reliability suites are the longest of all

    def rank(item: pytest.Item) -> int:
        return next(
            (n for n, name in enumerate(first) if item.get_closest_marker(name)), len(first)
        )

    items.sort(key=rank)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker more than the cores.

    A quarter of the suite's time is spent waiting (on leases, `retryd` processes and
    the emulator): on 2 cores, 3 workers kept the CPU 92 % busy against 77 % with 2, and
    the suite took 736 s against 846 s (docs/development.md).
    """
    return (os.cpu_count() or 1) + 1


@pytest.fixture(scope="session")
def fault_injector() -> FaultInjector:
    return FaultInjector()


@pytest.fixture(scope="session")
def moto_server(fault_injector: FaultInjector) -> Iterator[MotoServer]:
    # Faults are answered before moto is reached (which serves one request at a time);
    # Step Functions' RedriveExecution, which moto lacks, is answered by its own front.
    with MotoServer(middleware=lambda app: fault_injector.middleware(redrive_front(app))) as server:
        yield server


@contextlib.contextmanager
def world_in(
    moto_server: MotoServer, fault_injector: FaultInjector, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """An empty AWS world; the standard AWS env vars (set on `monkeypatch`) point at it.

    The `world` fixture for one test; a module-scoped fixture that builds one world for
    all its tests passes a `pytest.MonkeyPatch.context()` of its own.
    """
    moto_server.reset()
    fault_injector.clear()
    # The memory backend's operator state (pauses, jobs) is shared in-process: start empty.
    reset_shared()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("RETRYD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    # Keep the developer's own ~/.aws out of the run.
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/retryd-test-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/retryd-test-credentials")
    yield World(moto_server, fault_injector)
    # Abandon any call still held back by a delay fault before the next test resets moto.
    fault_injector.clear()


@pytest.fixture
def world(
    moto_server: MotoServer, fault_injector: FaultInjector, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """An empty AWS world; the standard AWS env vars point retryd's clients at it."""
    with world_in(moto_server, fault_injector, monkeypatch) as built:
        yield built


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def quiet_settings(**overrides: Any) -> Settings:
    """Settings for tests: no SDK retries (faults stay visible), no long polls, no HTTP port;
    `overrides` merged in group by group."""
    base: dict[str, Any] = {
        "aws": {"max_attempts": 1, "connect_timeout_s": 5, "read_timeout_s": 15},
        "discovery": {"queue_prefixes": ["retry-"]},
        "drain": {"receive_wait_s": 0, "visibility_timeout_s": 30},
        "guards": {"allow_targets": [f"arn:aws:*:{REGION}:{ACCOUNT}:*"]},
        "parking": {"queue": "retryd-parking"},
        "http": {"enabled": False},
        # Tests must not leave a retryd.sqlite3 in the working directory.
        "ledger": {"backend": "memory"},
        # No waiting between attempts and no rate limit, unless a test is about them.
        "backoff": {"base_s": 0.001, "max_s": 0.001},
        "rate_limit": {"per_s": 10_000, "burst": 10_000},
    }
    return Settings(**_merge(base, overrides))


@pytest.fixture
def make_settings() -> SettingsFactory:
    """quiet_settings, as a fixture (module-level builders call quiet_settings itself)."""
    return quiet_settings


@pytest.fixture(autouse=True)
def keep_logging_config() -> Iterator[None]:
    """Restore structlog's set-up after every test.

    The CLI configures logging (level, renderer, the stream) for the process; a test that
    runs it in-process must not leave a level behind that hides a later test's lines.
    """
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(autouse=True)
def keep_collector_settings() -> Iterator[None]:
    """Restore the garbage collector after every test.

    A test that runs `retryd once` or `run` in-process has the CLI set the collector for
    its process (retryd.service.heap): the test worker would keep what that froze for
    good, and collect its young objects far less often, for every later test.
    """
    threshold = gc.get_threshold()
    yield
    if gc.get_freeze_count():
        gc.unfreeze()
    if gc.get_threshold() != threshold:
        gc.set_threshold(*threshold)
