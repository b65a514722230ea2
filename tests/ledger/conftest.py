"""The ledger tests' fixtures: each backend in turn, and a clock that moves when told to."""

from __future__ import annotations

from pathlib import Path

import pytest

from retryd.ledger import create_table
from tests.conftest import SettingsFactory
from tests.ledger_helpers import Backend, FakeClock, ledger_settings, run
from tests.world import World


@pytest.fixture(params=["memory", "sqlite", "dynamodb"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, make_settings: SettingsFactory
) -> Backend:
    """Each backend in turn; DynamoDB on the moto server, its table made by create_table."""
    name: str = request.param
    config = ledger_settings(make_settings, name, tmp_path / "ledger.sqlite3")
    if name != "dynamodb":
        return Backend(name, config)
    world: World = request.getfixturevalue("world")
    run(lambda: create_table(config))
    return Backend(name, config, world)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
