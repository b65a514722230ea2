"""faults: a share of every AWS call retryd makes fails, in every way the wire can fail.

botocore's own retries are off (`aws.max_attempts = 1`), so each fault reaches
retryd. The ledger is DynamoDB, so its reads and conditional writes are faulted
too. Nothing may be lost, no message may be parked because of a transient fault,
no traceback may reach the logs, and the circuit breakers must open and close.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest

from retryd.sandbox.emulator import MotoServer
from tests.faults import Fault
from tests.reliability.conftest import record_figures, size
from tests.reliability.front import PARTIAL, TRUNCATED, Chaos, Front
from tests.reliability.mixed import DEST, MixedWorld, Tally, base_tables, write_config
from tests.reliability.replicas import fleet, retryd_env, wait_until
from tests.world import World

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(900)]

MESSAGES = size(100, 800)
FAULT_RATE = 0.23
SEED = 23
READ_TIMEOUT_S = 1.0
# Opens the Lambda target's breaker early: more failures in a row than its window allows.
BREAKER_BURST = 12


@dataclass
class FaultRun:
    tally: Tally
    injected: Counter[str]
    calls: int
    tracebacks: list[str]
    breaker_moves: Counter[str] = field(default_factory=Counter)
    exit_code: int = 0


@pytest.fixture(scope="module")
def faulted(
    rel_world: World, front: Front, rel_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> FaultRun:
    tmp = tmp_path_factory.mktemp("faults")
    mixed = MixedWorld.build(rel_world, front)
    mixed.create_ledger_table()
    mixed.fill(MESSAGES, seed=SEED)
    tables = base_tables(
        tmp,
        aws={"max_attempts": 1, "connect_timeout_s": 1, "read_timeout_s": READ_TIMEOUT_S},
        drain={"visibility_timeout_s": 5, "workers_per_queue": 2},
        ledger={"backend": "dynamodb", "table": "retryd-ledger", "claim_s": 5},
        breaker={
            "window_calls": 10,
            "min_calls": 5,
            "failure_rate": 0.5,
            "cooldown_s": 1,
            "half_open_calls": 2,
        },
    )
    config = write_config(tmp / "retryd.toml", tables)
    front.reset(Chaos(rate=FAULT_RATE, seed=SEED, late_s=READ_TIMEOUT_S + 0.6, slow_s=0.4))
    # A target's queue URL answered with a cut-short 200 (issue 12, defect 2): once, surely.
    front.forced.append(("GetQueueUrl", DEST, TRUNCATED))
    # A partial batch answer is drawn only for batch calls, which a moderate run makes
    # few of: a loaded runner once drew none. One each, surely; chaos adds the rest.
    front.forced.append(("SendMessageBatch", "", PARTIAL))
    front.forced.append(("DeleteMessageBatch", "", PARTIAL))
    rel_world.faults.add(
        Fault("lambda", "Invoke", "ServiceException", 500, times=BREAKER_BURST, delay_s=0.05)
    )
    with fleet(config, retryd_env(rel_server.url), tmp / "logs") as processes:
        replica = processes.start()
        wait_until(lambda: mixed.dlq_depth() == 0, 600, "the DLQs to empty under faults")
        injected = Counter(front.injected)
        calls = sum(front.calls.values())
        front.calm()  # the stop itself is the stop suite's subject
        exit_code = replica.stop()
        moves: Counter[str] = Counter(
            f"{event.get('from')}->{event.get('to')}"
            for event in processes.events()
            if event.get("event") == "breaker"
        )
        return FaultRun(mixed.tally(), injected, calls, processes.tracebacks(), moves, exit_code)


@pytest.fixture(scope="module")
def figures(faulted: FaultRun) -> FaultRun:
    tally = faulted.tally
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(faulted.injected.items()))
    record_figures(
        f"faults: {len(tally.planned)} messages, {sum(faulted.injected.values())} of retryd's "
        f"{faulted.calls} AWS calls failed ({kinds}), {len(tally.lost)} lost, "
        f"{len(tally.wrongly_parked())} parked by a transient fault, "
        f"{len(faulted.tracebacks)} tracebacks, breaker {dict(faulted.breaker_moves)}, "
        f"{tally.duplicates} duplicates"
    )
    return faulted


def test_nothing_is_lost(figures: FaultRun) -> None:
    """Every message is delivered or parked in the end; none is left or missing."""
    lost = Counter(figures.tally.planned[uid].kind for uid in figures.tally.lost)
    assert figures.tally.lost == [], lost
    assert figures.tally.strangers == []
    assert sum(figures.tally.in_dlq.values()) == 0


def test_every_kind_of_fault_was_injected(figures: FaultRun) -> None:
    """The run exercised every way of failing, not just the easy ones."""
    from tests.reliability.front import KINDS  # noqa: PLC0415

    assert set(KINDS) <= set(figures.injected), figures.injected


def test_no_message_is_parked_because_of_a_transient_fault(figures: FaultRun) -> None:
    """Only poison and over-limit messages are parked, each for its own reason."""
    assert figures.tally.wrongly_parked() == {}
    assert figures.tally.wrongly_delivered() == []


def test_no_traceback_reaches_the_logs(figures: FaultRun) -> None:
    """Whatever the wire returns, retryd handles it: no traceback in its logs."""
    assert figures.tracebacks == []


def test_breakers_open_and_close(figures: FaultRun) -> None:
    """A burst of failures opens a target's breaker; canaries then close it again."""
    moves = figures.breaker_moves
    assert moves["closed->open"] >= 1, moves
    assert moves["half_open->closed"] >= 1, moves


def test_process_stops_cleanly(figures: FaultRun) -> None:
    """After the faults, a SIGTERM ends the process with exit code 0."""
    assert figures.exit_code == 0
