"""The operator-state store that goes with the configured ledger backend."""

from __future__ import annotations

from pathlib import Path

from retryd.aws import AwsClients
from retryd.control.dynamodb import DynamoDbControlStore
from retryd.control.memory import MemoryControlStore
from retryd.control.sqlite import SqliteControlStore
from retryd.control.store import ControlStore
from retryd.settings import LedgerSettings


def control_store(settings: LedgerSettings, clients: AwsClients | None) -> ControlStore:
    """Where pauses, jobs and audit records live: wherever the ledger lives."""
    if settings.backend == "memory":
        return MemoryControlStore()
    if settings.backend == "sqlite":
        return SqliteControlStore(Path(settings.path))
    if clients is None:
        raise ValueError("the dynamodb control store needs AwsClients; none were given")
    return DynamoDbControlStore(clients.dynamodb, settings.table)
