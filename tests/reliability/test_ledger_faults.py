"""Faults on the DynamoDB ledger itself: a message whose claim cannot be recorded is not sent.

Throttled and failing conditional writes, writes whose condition never holds, and
throttled reads, each for every call of its kind during one `retryd once`: no
target may receive anything, and nothing may be parked or lost. Once the ledger
answers again, every message reaches its target exactly once.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from retryd.sandbox.emulator import MotoServer
from tests.faults import Fault
from tests.reliability.conftest import record_figures
from tests.reliability.front import Front
from tests.reliability.mixed import (
    DELIVERABLE,
    MixedWorld,
    backend_messages,
    base_tables,
    write_config,
)
from tests.reliability.replicas import retryd_env, wait_until
from tests.world import World

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

MESSAGES = 40
THROTTLED = "ProvisionedThroughputExceededException"
LEDGER_FAULTS = [
    # The ledger writes every change of a call in one TransactWriteItems.
    pytest.param("TransactWriteItems", THROTTLED, 400, id="write-throttled"),
    pytest.param("TransactWriteItems", "InternalServerError", 500, id="write-500"),
    pytest.param(
        "TransactWriteItems", "TransactionCanceledException", 400, id="condition-never-holds"
    ),
    pytest.param(
        "BatchGetItem", "ProvisionedThroughputExceededException", 400, id="read-throttled"
    ),
]
_held: Counter[str] = Counter()


@pytest.fixture(scope="module")
def ledger_world(
    rel_world: World, front: Front, rel_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[MixedWorld, Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("ledger-faults")
    mixed = MixedWorld.build(rel_world, front)
    mixed.create_ledger_table()
    deliverable = [n for n in range(4 * MESSAGES) if mixed.kind_of(n) in DELIVERABLE][:MESSAGES]
    for number in deliverable:
        mixed.fill(1, seed=number, start=number)
    tables = base_tables(
        tmp,
        drain={"visibility_timeout_s": 5},
        ledger={"backend": "dynamodb", "table": "retryd-ledger", "claim_s": 5},
    )
    return mixed, write_config(tmp / "retryd.toml", tables), retryd_env(rel_server.url)


def once(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "retryd", "once", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def all_visible(mixed: MixedWorld) -> bool:
    return all(message.visible for dlq in mixed.dlqs for message in backend_messages(dlq)) and all(
        message.visible for message in backend_messages("retry-rel-routed")
    )


@pytest.mark.parametrize(("operation", "code", "status"), LEDGER_FAULTS)
def test_unrecorded_claim_is_not_sent(
    ledger_world: tuple[MixedWorld, Path, dict[str, str]], operation: str, code: str, status: int
) -> None:
    """With every ledger call of this kind failing, no target receives anything and all stays."""
    mixed, config, env = ledger_world
    wait_until(lambda: all_visible(mixed), 30, "the last run's leases to run out")
    mixed.world.faults.add(Fault("dynamodb", operation, code, status))
    try:
        result = once(config, env)
    finally:
        mixed.world.faults.clear()
    tally = mixed.tally()
    _held[operation + ":" + code] = result.stderr.count('"ledger-unavailable"')
    assert "Traceback" not in result.stderr
    assert tally.copies == {}, "a message was sent without a recorded claim"
    assert tally.parked == {}
    assert set(tally.in_dlq) == set(tally.planned)
    assert '"ledger-unavailable"' in result.stderr


def test_every_message_goes_once_when_the_ledger_is_back(
    ledger_world: tuple[MixedWorld, Path, dict[str, str]],
) -> None:
    """After the ledger's faults, each message reaches its target exactly once."""
    mixed, config, env = ledger_world
    wait_until(lambda: all_visible(mixed), 30, "the last run's leases to run out")
    result = once(config, env)
    tally = mixed.tally()
    record_figures(
        f"ledger faults: {len(tally.planned)} messages, {len(LEDGER_FAULTS)} kinds of ledger "
        f"fault, {sum(_held.values())} held as ledger-unavailable, 0 sent unclaimed; "
        f"then {len(tally.copies)} delivered, {tally.duplicates} duplicates"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(tally.copies) == set(tally.planned)
    assert tally.duplicates == 0
