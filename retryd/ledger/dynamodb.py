"""The DynamoDB ledger: one table shared by several replicas, safe under races.

Every write is a conditional PutItem on the item's `version` number (or on the
item not existing yet), made after a strongly consistent read: of two replicas
that read the same version, only one write lands; the other re-reads, decides
again on what is now stored, and so sees the winner's claim. Items carry an
`expires_at` attribute (unix seconds) for DynamoDB's TTL, so the table does not
grow forever; an item past it but not yet swept is treated as absent. A record's
recently committed messages are the list attribute `committed` of maps
{"m": message id (S), "a": attempt (N)}, newest last; an item without it (none
committed yet) reads as an empty list. Begun claims abandoned and taken over are
the list attribute `abandoned`, in the same shape.

References: conditional writes,
https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Expressions.ConditionExpressions.html;
BatchGetItem's 100-key limit and UnprocessedKeys,
https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchGetItem.html;
TTL, https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/TTL.html;
list (L) and map (M) attribute values,
https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_AttributeValue.html
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
from botocore.exceptions import BotoCoreError, ClientError

from retryd.aws import Client
from retryd.classify import from_exception
from retryd.ledger.base import (
    Begun,
    Claim,
    ClaimState,
    LedgerError,
    R,
    Record,
    contention_error,
    decide_begin,
    decide_commit,
    decide_release,
    default_owner,
)
from retryd.models import ErrorClass, SendError

KEY_ATTRIBUTE = "key"
TTL_ATTRIBUTE = "expires_at"
COMMITTED_ATTRIBUTE = "committed"
ABANDONED_ATTRIBUTE = "abandoned"
# BatchGetItem takes at most 100 keys per call.
BATCH_GET_MAX_KEYS = 100
# Rounds of BatchGetItem for keys DynamoDB returned unprocessed (it throttled them).
UNPROCESSED_ROUNDS = 8
UNPROCESSED_FIRST_WAIT_S = 0.05
UNPROCESSED_MAX_WAIT_S = 1.0
# Conditional writes tried per claim before giving up on a key that keeps changing.
CONFLICT_TRIES = 5
# Keys written at once within one call.
WRITE_CONCURRENCY = 16

_CONDITION_FAILED = "ConditionalCheckFailedException"
_TABLE_MISSING = "ResourceNotFoundException"

# An item in DynamoDB's typed JSON: {"S": ...}, {"N": ...}, and the committed {"L": [...]}.
Item = dict[str, dict[str, Any]]
# What an AWS call can fail with; a key that is not valid Unicode (a lone
# surrogate from a JSON escape) cannot be serialised, which is a UnicodeError.
_FAILURES = (BotoCoreError, ClientError, UnicodeError)


@dataclass(frozen=True, slots=True)
class _Stored:
    """An item as read: its record (None once past its TTL) and the version to write over."""

    record: Record | None
    version: int


def _number(value: float) -> dict[str, str]:
    return {"N": repr(value) if isinstance(value, float) else str(value)}


def to_item(record: Record, *, expires_at: int, version: int) -> Item:
    item: Item = {
        KEY_ATTRIBUTE: {"S": record.key},
        "attempts": _number(record.attempts),
        "claim_attempt": _number(record.claim_attempt),
        "claim_expires_at_s": _number(float(record.claim_expires_at_s)),
        TTL_ATTRIBUTE: _number(expires_at),
        "version": _number(version),
    }
    for name, number in (
        ("first_failed_at_s", record.first_failed_at_s),
        ("last_attempt_at_s", record.last_attempt_at_s),
    ):
        if number is not None:
            item[name] = _number(float(number))
    for name, text in (
        ("claim_message_id", record.claim_message_id),
        ("claim_state", record.claim_state.value if record.claim_state else None),
        ("claim_owner", record.claim_owner),
    ):
        if text is not None:
            item[name] = {"S": text}
    for name, pairs in (
        (COMMITTED_ATTRIBUTE, record.committed),
        (ABANDONED_ATTRIBUTE, record.abandoned),
    ):
        if pairs:
            item[name] = {
                "L": [
                    {"M": {"m": {"S": message_id}, "a": _number(attempt)}}
                    for message_id, attempt in pairs
                ]
            }
    return item


def _pairs(item: Item, name: str) -> tuple[tuple[str, int], ...]:
    if name not in item:
        return ()
    return tuple((entry["M"]["m"]["S"], int(entry["M"]["a"]["N"])) for entry in item[name]["L"])


def _optional_float(item: Item, name: str) -> float | None:
    return float(item[name]["N"]) if name in item else None


def _optional_text(item: Item, name: str) -> str | None:
    return item[name]["S"] if name in item else None


def from_item(item: Item, now_s: float) -> _Stored:
    version = int(item["version"]["N"])
    if float(item[TTL_ATTRIBUTE]["N"]) <= now_s:
        # DynamoDB sweeps expired items lazily (within days): expired is gone.
        return _Stored(None, version)
    state = _optional_text(item, "claim_state")
    record = Record(
        key=item[KEY_ATTRIBUTE]["S"],
        attempts=int(item["attempts"]["N"]),
        first_failed_at_s=_optional_float(item, "first_failed_at_s"),
        last_attempt_at_s=_optional_float(item, "last_attempt_at_s"),
        claim_message_id=_optional_text(item, "claim_message_id"),
        claim_attempt=int(item["claim_attempt"]["N"]),
        claim_state=ClaimState(state) if state is not None else None,
        claim_owner=_optional_text(item, "claim_owner"),
        claim_expires_at_s=float(item["claim_expires_at_s"]["N"]),
        committed=_pairs(item, COMMITTED_ATTRIBUTE),
        abandoned=_pairs(item, ABANDONED_ATTRIBUTE),
    )
    return _Stored(record, version)


class _ConflictError(Exception):
    """Another writer changed the item since we read it."""


class DynamoDbLedger:
    """A Ledger in one DynamoDB table keyed by `key` (S)."""

    backend: str = "dynamodb"

    def __init__(
        self,
        client: Client,
        table: str,
        *,
        claim_s: float,
        ttl_s: float,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.owner = owner or default_owner()
        self.table = table
        self._client = client
        self._claim_s = claim_s
        self._ttl_s = ttl_s
        self._clock = clock

    # -- AWS calls ---------------------------------------------------------------------------

    def _error(self, operation: str, exc: BaseException) -> LedgerError:
        error = from_exception(exc)
        if error.code == _TABLE_MISSING:
            # Not the message's fault and not a passing outage: someone must create it.
            error = SendError(
                ErrorClass.CONFIG,
                error.code,
                f"table {self.table!r} not found; create it with `retryd ledger create-table` "
                "(or fix ledger.table)",
            )
        return LedgerError(self.backend, operation, error)

    async def _batch_get(self, operation: str, keys: Sequence[str]) -> list[Item]:
        pending: dict[str, Any] = {
            self.table: {
                "Keys": [{KEY_ATTRIBUTE: {"S": key}} for key in keys],
                "ConsistentRead": True,
            }
        }
        items: list[Item] = []
        wait_s = UNPROCESSED_FIRST_WAIT_S
        for round_number in range(UNPROCESSED_ROUNDS):
            if round_number:
                # DynamoDB left these keys unread because it was throttling: back off.
                await anyio.sleep(wait_s)
                wait_s = min(wait_s * 2, UNPROCESSED_MAX_WAIT_S)
            try:
                response = await self._client.batch_get_item(RequestItems=pending)
            except _FAILURES as exc:
                raise self._error(operation, exc) from exc
            items.extend(response.get("Responses", {}).get(self.table, []))
            pending = response.get("UnprocessedKeys") or {}
            for request in pending.values():
                # A retried read must be as strong as the first.
                request["ConsistentRead"] = True
            if not pending:
                return items
        raise LedgerError(
            self.backend,
            operation,
            SendError(
                ErrorClass.TRANSIENT,
                "retryd.UnprocessedKeys",
                f"BatchGetItem still left keys unread after {UNPROCESSED_ROUNDS} rounds",
            ),
        )

    async def _read(self, operation: str, keys: Sequence[str], now_s: float) -> dict[str, _Stored]:
        distinct = list(dict.fromkeys(keys))
        stored: dict[str, _Stored] = {}
        for start in range(0, len(distinct), BATCH_GET_MAX_KEYS):
            for item in await self._batch_get(
                operation, distinct[start : start + BATCH_GET_MAX_KEYS]
            ):
                stored[item[KEY_ATTRIBUTE]["S"]] = from_item(item, now_s)
        return stored

    async def _get(self, operation: str, key: str, now_s: float) -> _Stored | None:
        try:
            response = await self._client.get_item(
                TableName=self.table, Key={KEY_ATTRIBUTE: {"S": key}}, ConsistentRead=True
            )
        except _FAILURES as exc:
            raise self._error(operation, exc) from exc
        item = response.get("Item")
        return from_item(item, now_s) if item else None

    async def _put(
        self, operation: str, record: Record, over: _Stored | None, now_s: float
    ) -> _Stored:
        version = over.version + 1 if over is not None else 1
        condition: dict[str, Any]
        if over is None:
            condition = {
                "ConditionExpression": "attribute_not_exists(#key)",
                "ExpressionAttributeNames": {"#key": KEY_ATTRIBUTE},
            }
        else:
            condition = {
                "ConditionExpression": "#version = :read_version",
                "ExpressionAttributeNames": {"#version": "version"},
                "ExpressionAttributeValues": {":read_version": _number(over.version)},
            }
        item = to_item(record, expires_at=math.ceil(now_s + self._ttl_s), version=version)
        try:
            await self._client.put_item(TableName=self.table, Item=item, **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == _CONDITION_FAILED:
                raise _ConflictError from exc
            raise self._error(operation, exc) from exc
        except _FAILURES as exc:
            raise self._error(operation, exc) from exc
        return _Stored(record, version)

    # -- read, decide, conditionally write -----------------------------------------------------

    async def _settle_key(
        self,
        operation: str,
        stored: _Stored | None,
        claims: Sequence[Claim],
        decide: Callable[[Record | None, Claim, float], tuple[R, Record | None]],
    ) -> list[R]:
        """One key's claims in order; each re-decided on fresh state after a lost race."""
        answers = []
        for claim in claims:
            for _ in range(CONFLICT_TRIES):
                now_s = self._clock()
                current = stored.record if stored is not None else None
                answer, written = decide(current, claim, now_s)
                if written is None:
                    break
                try:
                    stored = await self._put(operation, written, stored, now_s)
                    break
                except _ConflictError:
                    stored = await self._get(operation, claim.key, now_s)
            else:
                raise contention_error(self.backend, operation, claim.key, CONFLICT_TRIES)
            answers.append(answer)
        return answers

    async def _apply(
        self,
        operation: str,
        claims: Sequence[Claim],
        decide: Callable[[Record | None, Claim, float], tuple[R, Record | None]],
    ) -> list[R]:
        if not claims:
            return []
        stored = await self._read(operation, [claim.key for claim in claims], self._clock())
        by_key: dict[str, list[int]] = {}
        for index, claim in enumerate(claims):
            by_key.setdefault(claim.key, []).append(index)
        answers: dict[int, R] = {}
        failures: list[LedgerError] = []
        limiter = anyio.CapacityLimiter(WRITE_CONCURRENCY)

        async def settle_key(key: str, indexes: list[int]) -> None:
            async with limiter:
                try:
                    settled = await self._settle_key(
                        operation, stored.get(key), [claims[i] for i in indexes], decide
                    )
                except LedgerError as exc:
                    # Kept, not raised: the other keys' writes are real and finish.
                    failures.append(exc)
                    return
                answers.update(zip(indexes, settled, strict=True))

        async with anyio.create_task_group() as group:
            for key, indexes in by_key.items():
                group.start_soon(settle_key, key, indexes)
        if failures:
            raise failures[0]
        return [answers[index] for index in range(len(claims))]

    # -- the Ledger protocol -------------------------------------------------------------------

    async def read(self, keys: Sequence[str]) -> dict[str, Record]:
        if not keys:
            return {}
        stored = await self._read("read", keys, self._clock())
        return {key: item.record for key, item in stored.items() if item.record is not None}

    async def begin(self, claims: Sequence[Claim]) -> list[Begun]:
        def decide(
            record: Record | None, claim: Claim, now_s: float
        ) -> tuple[Begun, Record | None]:
            return decide_begin(record, claim, owner=self.owner, now_s=now_s, claim_s=self._claim_s)

        return await self._apply("begin", claims, decide)

    async def commit(self, claims: Sequence[Claim], at_s: float) -> list[bool]:
        def decide(record: Record | None, claim: Claim, now_s: float) -> tuple[bool, Record | None]:
            del now_s  # a commit is dated by when the resubmission happened
            return decide_commit(record, claim, owner=self.owner, at_s=at_s)

        return await self._apply("commit", claims, decide)

    async def release(self, claims: Sequence[Claim]) -> None:
        await self._apply(
            "release",
            claims,
            lambda record, claim, _now_s: decide_release(record, claim, owner=self.owner),
        )

    async def aclose(self) -> None:
        # The client belongs to the run's AwsClients, which closes it.
        await anyio.lowlevel.checkpoint()


async def ensure_table(client: Client, table: str) -> str:
    """Create the ledger table (on demand, TTL on `expires_at`) or check it; say what happened."""
    try:
        await client.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": KEY_ATTRIBUTE, "AttributeType": "S"}],
            KeySchema=[{"AttributeName": KEY_ATTRIBUTE, "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        created = True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
            raise
        created = False
    # A new table is CREATING for a few seconds; TTL can only be set once it is ACTIVE.
    await client.get_waiter("table_exists").wait(
        TableName=table, WaiterConfig={"Delay": 2, "MaxAttempts": 150}
    )
    description = (await client.describe_table(TableName=table))["Table"]
    key_schema = [(part["AttributeName"], part["KeyType"]) for part in description["KeySchema"]]
    if key_schema != [(KEY_ATTRIBUTE, "HASH")]:
        raise LedgerError(
            "dynamodb",
            "create-table",
            SendError(
                ErrorClass.PERMANENT,
                "retryd.TableMismatch",
                f"table {table!r} exists with key schema {key_schema}, not a single "
                f"partition key {KEY_ATTRIBUTE!r}: choose another ledger.table",
            ),
        )
    ttl = (await client.describe_time_to_live(TableName=table))["TimeToLiveDescription"]
    ttl_status = ttl.get("TimeToLiveStatus", "DISABLED")
    ttl_attribute = ttl.get("AttributeName")
    if ttl_status in ("ENABLED", "ENABLING") and ttl_attribute == TTL_ATTRIBUTE:
        ttl_note = f"TTL on {TTL_ATTRIBUTE} was already on"
    elif ttl_status in ("ENABLED", "ENABLING"):
        raise LedgerError(
            "dynamodb",
            "create-table",
            SendError(
                ErrorClass.PERMANENT,
                "retryd.TableMismatch",
                f"table {table!r} has TTL on {ttl_attribute!r}; retryd needs it on "
                f"{TTL_ATTRIBUTE!r} (a table has one TTL attribute)",
            ),
        )
    else:
        await client.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        )
        ttl_note = f"TTL on {TTL_ATTRIBUTE} turned on"
    if created:
        return (
            f"created DynamoDB table {table} (partition key {KEY_ATTRIBUTE}, on-demand); {ttl_note}"
        )
    return f"DynamoDB table {table} already exists; {ttl_note}"
