"""The attempt ledger: attempts and in-flight resubmissions per idempotency key.

One protocol (`base.py`) with three backends (memory, SQLite, DynamoDB); `factory.py`
opens the one the settings name and counts its operations.
"""

from retryd.ledger.base import (
    BeginStatus,
    Begun,
    Claim,
    ClaimState,
    Ledger,
    LedgerError,
    ParkBegun,
    ParkCopy,
    ParkStatus,
    Record,
    decide_begin,
    decide_begin_park,
    decide_commit,
    decide_commit_park,
    decide_release,
    decide_renew,
    default_owner,
)
from retryd.ledger.dynamodb import DynamoDbLedger
from retryd.ledger.factory import InstrumentedLedger, create_table, open_ledger
from retryd.ledger.memory import MemoryLedger, MemoryStore
from retryd.ledger.sqlite import SqliteLedger

__all__ = [
    "BeginStatus",
    "Begun",
    "Claim",
    "ClaimState",
    "DynamoDbLedger",
    "InstrumentedLedger",
    "Ledger",
    "LedgerError",
    "MemoryLedger",
    "MemoryStore",
    "ParkBegun",
    "ParkCopy",
    "ParkStatus",
    "Record",
    "SqliteLedger",
    "create_table",
    "decide_begin",
    "decide_begin_park",
    "decide_commit",
    "decide_commit_park",
    "decide_release",
    "decide_renew",
    "default_owner",
    "open_ledger",
]
