"""The DynamoDB ledger: one table shared by several replicas, safe under races.

Every write is conditional on the item's `version` number (or on the item not
existing yet), as of a strongly consistent read: of two replicas that read the
same version, only one write lands; the other re-reads, decides again on what is
now stored, and so sees the winner's claim.

A call's writes travel together, one TransactWriteItems per call with a condition
per item: a batch of 10 costs one BatchGetItem (the guards' `read`), one write for
`begin` and one for `commit`. `begin` and `commit` decide on the versions this
ledger last read or wrote (kept briefly per key) instead of reading again: a
version that is no longer current fails its condition, and that key is re-read
and decided again. Deciding on an older record without writing is safe too:
DONE only follows from a commit, which is never undone, and BUSY only defers.
A cancelled transaction writes nothing; the keys whose conditions held are
written again in the next round. (BatchExecuteStatement would take per-item
conditions without the all-or-nothing, but the moto server the tests run on
cannot run parameterised PartiQL writes.) A transactional write costs twice the
write capacity of a PutItem. Items carry an
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
TransactWriteItems' 100 items and CancellationReasons,
https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html;
TTL, https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/TTL.html;
list (L) and map (M) attribute values,
https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_AttributeValue.html
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from botocore.exceptions import BotoCoreError, ClientError

from retryd.classify import from_exception
from retryd.ledger.base import (
    Begun,
    Claim,
    ClaimState,
    LedgerError,
    ParkBegun,
    ParkCopy,
    R,
    Record,
    contention_error,
    decide_begin,
    decide_begin_park,
    decide_commit,
    decide_release,
    decide_renew,
    default_owner,
    park_copies_decide,
    settle,
)
from retryd.models import ErrorClass, SendError

if TYPE_CHECKING:
    # A type only: importing retryd.aws (aioboto3) with the ledger cost every command that
    # reads the settings' rules (`config check`) a quarter of a second.
    from retryd.aws import Client

KEY_ATTRIBUTE = "key"
TTL_ATTRIBUTE = "expires_at"
COMMITTED_ATTRIBUTE = "committed"
ABANDONED_ATTRIBUTE = "abandoned"
PARKED_ATTRIBUTE = "parked"
# BatchGetItem takes at most 100 keys per call.
BATCH_GET_MAX_KEYS = 100
# Rounds of BatchGetItem for keys DynamoDB returned unprocessed (it throttled them).
UNPROCESSED_ROUNDS = 8
UNPROCESSED_FIRST_WAIT_S = 0.05
UNPROCESSED_MAX_WAIT_S = 1.0
# Rounds of conditional writes before giving up on a key that keeps changing.
CONFLICT_TRIES = 5
# TransactWriteItems takes at most 100 items.
TRANSACT_MAX_ITEMS = 100
# How long, and for how many keys, the last version read or written is decided on
# without reading again. Older only costs a failed condition and a re-read.
KNOWN_FOR_S = 60.0
KNOWN_MAX_KEYS = 10_000

_CANCELLED = "TransactionCanceledException"
_CONDITION_FAILED_REASON = "ConditionalCheckFailed"
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
    if record.parked:
        item[PARKED_ATTRIBUTE] = {
            "L": [
                {"M": {"m": {"S": message_id}, "a": _number(attempt), "p": {"S": parking_id}}}
                for message_id, attempt, parking_id in record.parked
            ]
        }
    return item


def _copies(item: Item) -> tuple[tuple[str, int, str], ...]:
    if PARKED_ATTRIBUTE not in item:
        return ()
    return tuple(
        (entry["M"]["m"]["S"], int(entry["M"]["a"]["N"]), entry["M"]["p"]["S"])
        for entry in item[PARKED_ATTRIBUTE]["L"]
    )


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
        parked=_copies(item),
    )
    return _Stored(record, version)


Decider = Callable[[Record | None, Claim, float], tuple[R, Record | None]]


def _decide_at(
    decide: Decider[R], now_s: float, record: Record | None, claim: Claim
) -> tuple[R, Record | None]:
    return decide(record, claim, now_s)


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
        # key -> (time.monotonic() when learned, the item then; None: there was none).
        self._known: OrderedDict[str, tuple[float, _Stored | None]] = OrderedDict()

    # -- what this ledger last saw of each key --------------------------------------------------

    def _learn(self, stored: dict[str, _Stored | None]) -> None:
        now = time.monotonic()
        for key, item in stored.items():
            self._known[key] = (now, item)
            self._known.move_to_end(key)
        while len(self._known) > KNOWN_MAX_KEYS:
            self._known.popitem(last=False)

    def _recalled(self, keys: Iterable[str]) -> dict[str, _Stored | None]:
        oldest = time.monotonic() - KNOWN_FOR_S
        recalled: dict[str, _Stored | None] = {}
        for key in keys:
            entry = self._known.get(key)
            if entry is not None and entry[0] >= oldest:
                recalled[key] = entry[1]
        return recalled

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

    async def _read(
        self, operation: str, keys: Sequence[str], now_s: float
    ) -> dict[str, _Stored | None]:
        """Each key's item as stored now (None: no item); remembered for the next write."""
        distinct = list(dict.fromkeys(keys))
        stored: dict[str, _Stored | None] = dict.fromkeys(distinct)
        for start in range(0, len(distinct), BATCH_GET_MAX_KEYS):
            for item in await self._batch_get(
                operation, distinct[start : start + BATCH_GET_MAX_KEYS]
            ):
                stored[item[KEY_ATTRIBUTE]["S"]] = from_item(item, now_s)
        self._learn(stored)
        return stored

    def _put(self, record: Record, over: _Stored | None, now_s: float) -> dict[str, Any]:
        """One conditional Put of a transaction: `record` over the version read, if any."""
        version = over.version + 1 if over is not None else 1
        put: dict[str, Any] = {
            "TableName": self.table,
            "Item": to_item(record, expires_at=math.ceil(now_s + self._ttl_s), version=version),
        }
        if over is None:
            put["ConditionExpression"] = "attribute_not_exists(#key)"
            put["ExpressionAttributeNames"] = {"#key": KEY_ATTRIBUTE}
        else:
            put["ConditionExpression"] = "#version = :read_version"
            put["ExpressionAttributeNames"] = {"#version": "version"}
            put["ExpressionAttributeValues"] = {":read_version": _number(over.version)}
        return {"Put": put}

    async def _write(
        self,
        operation: str,
        changed: dict[str, Record],
        stored: dict[str, _Stored | None],
        now_s: float,
    ) -> tuple[set[str], set[str]]:
        """Write `changed` over `stored`; the keys not written, and of those the stale ones."""
        unwritten: set[str] = set()
        stale: set[str] = set()
        keys = list(changed)
        for start in range(0, len(keys), TRANSACT_MAX_ITEMS):
            chunk = keys[start : start + TRANSACT_MAX_ITEMS]
            puts = [self._put(changed[key], stored.get(key), now_s) for key in chunk]
            try:
                await self._client.transact_write_items(TransactItems=puts)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != _CANCELLED:
                    raise self._error(operation, exc) from exc
                unwritten.update(chunk)
                reasons = exc.response.get("CancellationReasons") or []
                if len(reasons) != len(chunk):
                    # No per-item reasons: any of them may have changed.
                    stale.update(chunk)
                    continue
                # Another transaction on the same item (TransactionConflict) is also a
                # race lost: re-read. Items whose condition held are only written again.
                stale.update(
                    key
                    for key, reason in zip(chunk, reasons, strict=True)
                    if reason.get("Code") not in (None, "None")
                )
            except _FAILURES as exc:
                raise self._error(operation, exc) from exc
            else:
                self._learn(
                    {
                        key: _Stored(changed[key], (over.version + 1) if over else 1)
                        for key in chunk
                        for over in (stored.get(key),)
                    }
                )
        return unwritten, stale

    # -- read, decide, conditionally write -----------------------------------------------------

    async def _apply(self, operation: str, claims: Sequence[Claim], decide: Decider[R]) -> list[R]:
        """Decide each claim on the versions known, write all changes in one call.

        A key whose version changed meanwhile fails its condition, is re-read and
        decided again in a new round. An answer that writes nothing (DONE, BUSY, a
        release of a claim no longer ours) is only given on a version read by this
        call: an older one is read again first, so it cannot miss another owner's commit.
        """
        if not claims:
            return []
        keys = list(dict.fromkeys(claim.key for claim in claims))
        stored = self._recalled(keys)
        fresh = {key for key in keys if key not in stored}
        if fresh:
            stored.update(await self._read(operation, sorted(fresh), self._clock()))
        answers: dict[int, R] = {}
        pending = set(keys)
        rounds = 0
        while True:
            now_s = self._clock()
            indexes = [index for index, claim in enumerate(claims) if claim.key in pending]
            records = {
                key: item.record
                for key in pending
                if (item := stored.get(key)) is not None and item.record is not None
            }
            settled, changed = settle(
                records,
                [claims[index] for index in indexes],
                partial(_decide_at, decide, now_s),
            )
            unsure = sorted(pending - changed.keys() - fresh)
            if unsure:
                # Each key is read at most once this way: it is fresh from then on.
                stored.update(await self._read(operation, unsure, now_s))
                fresh.update(unsure)
                continue
            unwritten, stale = await self._write(operation, changed, stored, now_s)
            answers.update(
                (index, answer)
                for index, answer in zip(indexes, settled, strict=True)
                if claims[index].key not in unwritten
            )
            pending = unwritten
            if not pending:
                return [answers[index] for index in range(len(claims))]
            rounds += 1
            if rounds >= CONFLICT_TRIES:
                raise contention_error(self.backend, operation, sorted(pending)[0], rounds)
            if stale:
                stored.update(await self._read(operation, sorted(stale), now_s))
                fresh.update(stale)

    # -- the Ledger protocol -------------------------------------------------------------------

    async def read(self, keys: Sequence[str]) -> dict[str, Record]:
        if not keys:
            return {}
        stored = await self._read("read", keys, self._clock())
        return {
            key: item.record
            for key, item in stored.items()
            if item is not None and item.record is not None
        }

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

    async def renew(self, claims: Sequence[Claim]) -> list[bool]:
        def decide(record: Record | None, claim: Claim, now_s: float) -> tuple[bool, Record | None]:
            return decide_renew(record, claim, owner=self.owner, now_s=now_s, claim_s=self._claim_s)

        return await self._apply("renew", claims, decide)

    async def begin_park(self, claims: Sequence[Claim]) -> list[ParkBegun]:
        def decide(
            record: Record | None, claim: Claim, now_s: float
        ) -> tuple[ParkBegun, Record | None]:
            return decide_begin_park(
                record, claim, owner=self.owner, now_s=now_s, claim_s=self._claim_s
            )

        return await self._apply("begin-park", claims, decide)

    async def commit_park(self, copies: Sequence[ParkCopy]) -> list[bool]:
        claims, decide = park_copies_decide(copies, self.owner)
        return await self._apply(
            "commit-park", claims, lambda record, claim, _now_s: decide(record, claim)
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
