"""The operator-state store: one contract, three backends (memory, SQLite, DynamoDB on moto)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from retryd.aws import open_clients
from retryd.control import ControlStore, control_store
from retryd.control.memory import MemoryControlStore, MemoryDocs
from retryd.control.pauses import add_pause, load_pauses, remove_pauses
from retryd.control.store import update
from retryd.ledger import create_table
from retryd.settings import Settings
from tests.conftest import SettingsFactory
from tests.world import ACCOUNT, REGION

LAMBDA = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge"


@pytest.fixture(params=["memory", "sqlite", "dynamodb"])
def settings(
    request: pytest.FixtureRequest, tmp_path: Path, make_settings: SettingsFactory
) -> Settings:
    """Settings naming each backend in turn; DynamoDB's table made as `ledger create-table` does."""
    name: str = request.param
    built = make_settings(
        ledger={"backend": name, "path": str(tmp_path / "l.sqlite3"), "table": "retryd-ctl"}
    )
    # Every backend opens AWS clients (pointed at moto); only DynamoDB uses them.
    request.getfixturevalue("world")
    if name == "dynamodb":
        anyio.run(create_table, built)
    if name == "memory":
        from retryd.control.memory import reset_shared  # noqa: PLC0415 - memory only

        reset_shared()
    return built


@asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[ControlStore]:
    async with open_clients(settings.aws) as clients:
        yield control_store(settings.ledger, clients)


def test_a_write_over_a_stale_version_is_refused(settings: Settings) -> None:
    """Two writers read version 1; the first write wins, the second is refused, nothing merged."""

    async def body() -> None:
        async with opened(settings) as store:
            assert await store.put("doc", {"n": 1}, version=0, ttl_s=None)
            assert not await store.put("doc", {"n": 9}, version=0, ttl_s=None)
            read = (await store.get(["doc", "absent"]))["doc"]
            assert (read.body, read.version) == ({"n": 1}, 1)
            assert await store.put("doc", {"n": 2}, version=1, ttl_s=None)
            assert not await store.put("doc", {"n": 3}, version=1, ttl_s=None)
            assert (await store.get(["doc"]))["doc"].body == {"n": 2}

    anyio.run(body)


def test_concurrent_updates_all_land(settings: Settings) -> None:
    """Ten updates racing on one document each add their item: none is lost to a race."""

    async def body() -> None:
        async with opened(settings) as store:

            async def add(n: int) -> None:
                await update(store, "list", lambda b: {"items": [*(b or {}).get("items", []), n]})

            async with anyio.create_task_group() as group:
                for n in range(10):
                    group.start_soon(add, n)
            found = (await store.get(["list"]))["list"].body["items"]
            assert sorted(found) == list(range(10))

    anyio.run(body)


def test_pauses_round_trip_and_end(settings: Settings) -> None:
    """A pause is stored, covers its glob only, and is gone once resumed by id or glob."""

    async def body() -> None:
        async with opened(settings) as store:
            first = await add_pause(store, LAMBDA, reason="migration", by="me", until_s=None)
            await add_pause(store, "*", reason="all", by="me", until_s=None)
            pauses = await load_pauses(store)
            assert pauses.covering(LAMBDA, 0.0) is not None
            assert [p.pattern for p in pauses.active(0.0)] == [LAMBDA, "*"]
            removed = await remove_pauses(store, [first.id])
            assert [p.pattern for p in removed] == [LAMBDA]
            removed = await remove_pauses(store, ["*"])
            assert [p.pattern for p in removed] == ["*"]
            assert (await load_pauses(store)).active(0.0) == []

    anyio.run(body)


def test_a_timed_pause_ends_by_itself() -> None:
    """A pause with an end is in force before it and ignored after it, with no resume."""

    async def body() -> None:
        store = MemoryControlStore(MemoryDocs())
        await add_pause(store, LAMBDA, reason="r", by="", until_s=200.0, now_s=100.0)
        pauses = await load_pauses(store)
        assert pauses.covering(LAMBDA, 150.0) is not None
        assert pauses.covering(LAMBDA, 200.0) is None

    anyio.run(body)


def test_a_bad_pause_glob_is_refused() -> None:
    """A pattern that is not an ARN glob (nor `*`) is refused before anything is stored."""

    async def body() -> None:
        store = MemoryControlStore(MemoryDocs())
        with pytest.raises(ValueError, match="not an ARN glob"):
            await add_pause(store, "charge", reason="r", by="", until_s=None)
        assert await store.get(["pauses"]) == {}

    anyio.run(body)
