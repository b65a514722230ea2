"""S3 object leases held through a block: handed back however it ends, its error its own."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from retryd.ledger import open_ledger
from retryd.s3_objects import source_ref
from retryd.settings import LedgerSettings
from retryd.settle.objects import Objects

SOURCE = source_ref("bucket", "aws/lambda/async/charge/")
KEYS = ["aws/lambda/async/charge/a", "aws/lambda/async/charge/b"]


async def lease_as(ledger_path: Path, owner: str, keys: list[str]) -> list[str]:
    """The keys `owner` could lease now."""
    settings = LedgerSettings(backend="sqlite", path=str(ledger_path))
    async with open_ledger(settings, None, owner=owner) as ledger:
        return await Objects(None, ledger).lease(SOURCE, keys)


async def hold_then(ledger_path: Path, fail: bool) -> None:
    """Lease KEYS as `daemon`, hold them through a block that ends well or raises."""
    settings = LedgerSettings(backend="sqlite", path=str(ledger_path))
    async with open_ledger(settings, None, owner="daemon") as ledger:
        objects = Objects(None, ledger)
        assert await objects.lease(SOURCE, KEYS) == KEYS
        async with objects.held(SOURCE, KEYS, renew_every_s=3_600.0):
            assert await lease_as(ledger_path, "redrive", KEYS) == []
            if fail:
                raise KeyError("the block's own error")


def test_held_leases_are_handed_back_when_the_block_ends(tmp_path: Path) -> None:
    """While held, another owner cannot lease the objects; after, it can at once."""
    path = tmp_path / "ledger.sqlite3"
    anyio.run(hold_then, path, False)
    assert anyio.run(lease_as, path, "redrive", KEYS) == KEYS


def test_an_error_in_the_block_is_raised_as_itself_and_the_leases_still_go_back(
    tmp_path: Path,
) -> None:
    """The renewal's task group does not wrap the block's error; the leases are released."""
    path = tmp_path / "ledger.sqlite3"
    with pytest.raises(KeyError, match="the block's own error"):
        anyio.run(hold_then, path, True)
    assert anyio.run(lease_as, path, "redrive", KEYS) == KEYS
