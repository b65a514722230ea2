"""The protocol every cluster backend follows, and the single-replica one."""

from __future__ import annotations

from typing import Protocol

import structlog

log = structlog.get_logger("retryd.cluster")


class Cluster(Protocol):
    """How a replica agrees with the others on breakers and rate budgets."""

    @property
    def live(self) -> int:
        """Replicas live at the last sync, this one included."""
        ...

    async def sync(self) -> None:
        """Once per cycle: heartbeat, learn who is live, share budgets, agree on breakers."""
        ...

    async def flush(self) -> None:
        """Write this replica's breaker moves since the last write (nothing to do: no call)."""
        ...

    async def join(self) -> None:
        """Before the first send (after a sync): wait until the replicas already sending
        have counted this one. Once; a plan, which sends nothing, does not call it."""
        ...

    async def leave(self) -> None:
        """On a clean stop: drop out of membership now rather than when the heartbeat expires."""
        ...


class SingleReplica:
    """The memory and SQLite ledgers: one replica, which keeps its breakers and budgets."""

    def __init__(self, backend: str) -> None:
        self._backend = backend
        log.info(
            "cluster-single-replica",
            ledger=backend,
            why="breakers and rate budgets are this process's own; replicas that share "
            "them need the dynamodb ledger",
        )

    @property
    def live(self) -> int:
        return 1

    async def sync(self) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def join(self) -> None:
        return None

    async def leave(self) -> None:
        return None
