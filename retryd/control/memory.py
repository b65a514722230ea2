"""Operator state in memory: one dict per process, shared by every store opened in it (tests)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio.lowlevel

from retryd.control.readmodel import DocReadModel, ReadModel
from retryd.control.store import Body, Doc


@dataclass
class MemoryDocs:
    """Documents with the unix second each one expires at (inf: never)."""

    rows: dict[str, tuple[Doc, float]] = field(default_factory=dict)


# Like the memory ledger, nothing outlives the process; unlike it, a cycle and a
# command in one test process must see the same pauses, so the documents are shared.
_SHARED = MemoryDocs()


class MemoryControlStore:
    """A ControlStore over a dict; atomic because it never awaits midway."""

    backend = "memory"

    def __init__(
        self, docs: MemoryDocs | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.docs = docs if docs is not None else _SHARED
        self._clock = clock

    async def get(self, names: Sequence[str]) -> dict[str, Doc]:
        await anyio.lowlevel.checkpoint()
        now_s = self._clock()
        return {
            name: row[0]
            for name in names
            if (row := self.docs.rows.get(name)) is not None and row[1] > now_s
        }

    async def put(self, name: str, body: Body, *, version: int, ttl_s: float | None) -> bool:
        await anyio.lowlevel.checkpoint()
        now_s = self._clock()
        row = self.docs.rows.get(name)
        current = row[0].version if row is not None and row[1] > now_s else 0
        if current != version:
            return False
        expires_at = now_s + ttl_s if ttl_s is not None else float("inf")
        self.docs.rows[name] = (Doc(body, version + 1), expires_at)
        return True

    def read_model(self) -> ReadModel:
        return DocReadModel(self)


def reset_shared() -> None:
    """Forget every shared document (between tests)."""
    _SHARED.rows.clear()
