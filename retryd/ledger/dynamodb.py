"""The DynamoDB ledger: one table shared by several replicas, safe under races.

Every write is conditional on the item's `version` number (or on the item not
existing yet), as of a strongly consistent read: of two replicas that read the
same version, only one write lands; the other re-reads, decides again on what is
now stored, and so sees the winner's claim.

The calls of every batch in flight are gathered (group commit, `group.py`) by a
task the ledger owns for as long as it is open (`async with`; `open_ledger` does
it), so no caller's deadline cancels the requests of the calls beside its own,
and made in the fewest requests the limits allow: the group's reads as one
BatchGetItem per 100 keys, its writes as one TransactWriteItems per 100 items
(`transact.py` packs them; the claims of several calls on one key become one
item), so a batch of 10 (read, `begin`, `commit`) costs a fraction of a call
when many batches run side by side, and three alone. `begin` and `commit`
decide on the versions this ledger last read or wrote (kept briefly per key)
instead of reading again: a version that is no longer current fails its
condition, and that key is re-read and decided again. Deciding on an older
record without writing is safe too: DONE only follows from a commit, which is
never undone, and BUSY only defers. A cancelled transaction writes nothing, but
it says which of its items was the cause (CancellationReasons, one per action,
in the request's order): the keys whose condition failed are re-read while the
others, whose conditions held, are written again at once, so one key's race does
not hold up the batches that rode with it. Only a failed condition is a race
lost: an item throttled or held by another transaction is written again as
decided, after a short wait, and an item refused for any other reason
(ValidationError) fails its own calls at once. (BatchWriteItem takes no conditions, and
BatchExecuteStatement, which would take per-item conditions without the
all-or-nothing, cannot run parameterised PartiQL writes on the moto server the
tests run on.) A transactional write costs twice the write capacity of a
PutItem. Items carry an
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
https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html
and https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_CancellationReason.html;
TTL, https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/TTL.html;
list (L) and map (M) attribute values,
https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_AttributeValue.html
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
import anyio.lowlevel
from botocore.exceptions import BotoCoreError, ClientError

from retryd.classify import classify_code, from_exception
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
)
from retryd.ledger.group import Answer, OwnedGroupCommit
from retryd.ledger.transact import item_bytes, pack, together
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
# Conditional writes of one key before giving up on it when it keeps changing.
CONFLICT_TRIES = 5
# The wait before writing again keys a transaction was cancelled for a passing reason
# (throttled, another transaction on the item), doubled each round up to the most.
BUSY_FIRST_WAIT_S = 0.05
BUSY_MAX_WAIT_S = 1.0
# Group commit (group.py): how long the first call of a group waits for others to ride
# with it, and the most calls in one group. Well under a DynamoDB call's own latency;
# while one group's requests are out, the next group gathers anyway.
GROUP_WINDOW_S = 0.002
GROUP_MAX_OPS = 64
# How long, and for how many keys, the last version read or written is decided on
# without reading again. Older only costs a failed condition and a re-read.
KNOWN_FOR_S = 60.0
KNOWN_MAX_KEYS = 10_000

_CANCELLED = "TransactionCanceledException"
# A cancelled transaction's reasons, one per item (CancellationReason's codes): "None" or
# absent, the item's condition held; a failed condition is a race lost (re-read, decide
# again); these are passing (written again after a wait, as decided); any other code
# (ValidationError, ItemCollectionSizeLimitExceeded) refuses the item itself.
_CONDITION_FAILED_REASON = "ConditionalCheckFailed"
_PASSING_REASONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
)
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


T = TypeVar("T")


class MalformedItemError(ValueError):
    """An item of the table that retryd cannot have written (another tool, a hand edit)."""


def _field(item: Item, name: str, convert: Callable[[Any], T]) -> T:
    """`convert(item[name])`; MalformedItemError naming the attribute when that fails."""
    try:
        return convert(item[name])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        shown = repr(item.get(name, "(missing)"))[:200]
        raise MalformedItemError(f"its {name} attribute is {shown}") from exc


def _optional(item: Item, name: str, convert: Callable[[Any], T]) -> T | None:
    return _field(item, name, convert) if name in item else None


def _entries(value: Any) -> list[dict[str, Any]]:
    return [entry["M"] for entry in value["L"]]


def _pair_list(value: Any) -> tuple[tuple[str, int], ...]:
    return tuple((str(entry["m"]["S"]), int(entry["a"]["N"])) for entry in _entries(value))


def _copy_list(value: Any) -> tuple[tuple[str, int, str], ...]:
    return tuple(
        (str(entry["m"]["S"]), int(entry["a"]["N"]), str(entry["p"]["S"]))
        for entry in _entries(value)
    )


def _int(value: Any) -> int:
    return int(value["N"])


def _float(value: Any) -> float:
    return float(value["N"])


def _text(value: Any) -> str:
    text = value["S"]
    if not isinstance(text, str):
        raise TypeError("not a string")
    return text


def _state(value: Any) -> ClaimState:
    return ClaimState(_text(value))


def from_item(item: Item, now_s: float) -> _Stored:
    """The record an item holds; MalformedItemError when it is not one retryd wrote."""
    version = _field(item, "version", _int)
    if _field(item, TTL_ATTRIBUTE, _float) <= now_s:
        # DynamoDB sweeps expired items lazily (within days): expired is gone.
        return _Stored(None, version)
    record = Record(
        key=_field(item, KEY_ATTRIBUTE, _text),
        attempts=_field(item, "attempts", _int),
        first_failed_at_s=_optional(item, "first_failed_at_s", _float),
        last_attempt_at_s=_optional(item, "last_attempt_at_s", _float),
        claim_message_id=_optional(item, "claim_message_id", _text),
        claim_attempt=_field(item, "claim_attempt", _int),
        claim_state=_optional(item, "claim_state", _state),
        claim_owner=_optional(item, "claim_owner", _text),
        claim_expires_at_s=_field(item, "claim_expires_at_s", _float),
        committed=_optional(item, COMMITTED_ATTRIBUTE, _pair_list) or (),
        abandoned=_optional(item, ABANDONED_ATTRIBUTE, _pair_list) or (),
        parked=_optional(item, PARKED_ATTRIBUTE, _copy_list) or (),
    )
    return _Stored(record, version)


Decider = Callable[[Record | None, Claim, float], tuple[R, Record | None]]
# A piece of a flush to run beside the others.
Work = Callable[[], Coroutine[Any, Any, None]]


@dataclass(eq=False, slots=True)
class _Call:
    """One ledger call in a group: a read of `keys`, or `claims` to decide and write."""

    operation: str
    keys: Sequence[str]
    claims: Sequence[Claim] = ()
    decide: Decider[Any] | None = None


@dataclass(frozen=True, slots=True)
class _Sent:
    """What became of one TransactWriteItems: written, failed, or cancelled, with the
    reason code of each key that was a cause (`reasons`; absent: cancelled beside them)."""

    keys: list[str]
    written: bool = False
    reasons: dict[str, str] = field(default_factory=dict)
    error: BaseException | None = None


def _decide_key(
    item: _Stored | None, claims: Sequence[tuple[_Call, int, int]], now_s: float
) -> tuple[Record | None, list[tuple[int, int, object]]]:
    """One key's claims (call, its number, the claim's position) decided in order on its
    item: the record to write (None: nothing changed) and each claim's answer."""
    working = item.record if item is not None else None
    changed = False
    decided: list[tuple[int, int, object]] = []
    for call, number, at in claims:
        assert call.decide is not None  # only writing calls are decided
        answer, written = call.decide(working, call.claims[at], now_s)
        if written is not None:
            working, changed = written, True
        decided.append((number, at, answer))
    return (working if changed else None), decided


class _Writes:
    """The writing calls of one group, decided key by key in rounds: no I/O, only state.

    Each key's claims are decided in the group's order on one record, so a key is
    one item however many calls touch it. A key whose version changed meanwhile
    loses its condition, is re-read and decided again in the next round, while
    the keys cancelled only beside it are written again at once, in that same
    round. An answer that writes nothing (DONE, BUSY, a release of a claim no
    longer ours) is only given on a version read in this group: an older one is
    read again first, so it cannot miss another owner's commit. A call is
    answered once every key of its own is written or settled; a key that keeps
    changing (or keeps being throttled), or whose item is refused, fails exactly the
    calls with a claim on it (`took_write`). A request that fails whole
    (a 500, throttling past the retries, a key that cannot be serialised) says
    nothing of which item was the cause: if it carried the keys of more than one
    set of calls (`transact.together`), each set's keys are read again (the write
    may have landed, its answer lost: an item found exactly as written settles its
    calls with the answers it carried) and then sent again in requests of their
    own, so one call's poison or bad luck fails that call alone; a request of one
    set that fails fails the calls of that set.
    """

    def __init__(self, calls: Sequence[_Call], recalled: dict[str, _Stored | None]) -> None:
        self.calls = calls
        # Per key, its claims in the group's order: (call number, claim position).
        self.entries: dict[str, list[tuple[int, int]]] = {}
        for number, call in enumerate(calls):
            for position, claim in enumerate(call.claims):
                self.entries.setdefault(claim.key, []).append((number, position))
        self.results: list[list[object]] = [[None] * len(call.claims) for call in calls]
        # Each key's set of calls: keys of one set are one item or share a call.
        self.set_of = {
            key: number
            for number, keys in enumerate(
                together([call.keys for call in calls], list(self.entries))
            )
            for key in keys
        }
        # Keys sent in requests of their own set since a shared request failed.
        self.alone: set[str] = set()
        # Keys of a shared write that failed whole, which may have landed all the same (an
        # answer lost on the way): the record sent, the version it would be stored as, and
        # the answers it carried. Sent again over the version read before, it would fail
        # its condition on our own write, and be decided again as if another had written.
        self.unheard: dict[str, tuple[Record, int, list[tuple[int, int, object]]]] = {}
        self.failed: dict[int, LedgerError] = {}
        self.stored = recalled
        self.pending = set(self.entries)
        # Keys to read before deciding: unknown ones, and those that lost a race.
        self.to_read = {key for key in self.entries if key not in recalled}
        # Keys read in this group: an answer that writes nothing may be given on them.
        self.fresh: set[str] = set()
        self.tries: Counter[str] = Counter()
        # This round's records to write, with the answers they carry.
        self.ready: dict[str, tuple[Record, list[tuple[int, int, object]]]] = {}
        # Whether a key of this round was cancelled for a passing reason: wait, then write.
        self.busy = False

    def decide(self, now_s: float) -> tuple[list[str], dict[str, Record]]:
        """This round: the keys to read, and the records to write (by key)."""
        self.ready = {}
        self.busy = False
        to_read = self.to_read & self.pending
        reading = sorted(to_read)
        self.to_read = set()
        for key in self.entries:
            if key not in self.pending or key in to_read:
                continue
            live = [(self.calls[n], n, at) for n, at in self.entries[key] if n not in self.failed]
            if not live:
                self.pending.discard(key)
                continue
            record, decided = _decide_key(self.stored.get(key), live, now_s)
            if record is not None:
                self.ready[key] = (record, decided)
            elif key in self.fresh:
                self._settle(key, decided)
            else:
                reading.append(key)
        return reading, {key: record for key, (record, _) in self.ready.items()}

    def took_reads(self, got: dict[str, _Stored | None]) -> None:
        self.stored.update(got)
        self.fresh.update(got)
        for key, item in got.items():
            unheard = self.unheard.pop(key, None)
            if unheard is None or item is None or key not in self.pending:
                continue
            record, version, decided = unheard
            if item.version == version and item.record == record:
                # The lost write landed: its answers stand, as if they had been heard.
                self._settle(key, decided)

    def took_write(self, key: str, sent: _Sent, cancelled: Callable[..., LedgerError]) -> None:
        """A transaction that carried `key` was written or cancelled.

        Cancelled, by the key's own reason: a failed condition is a race lost (read
        again, decided again); a passing reason (throttled, another transaction on the
        item) writes the same decision again after a wait (`busy`); any other refuses
        the item, and fails its calls at once. Cancelled only beside other keys, it is
        written again at once. `CONFLICT_TRIES` cancellations fail its calls too.
        """
        if sent.written:
            self._settle(key, self.ready[key][1])
            return
        code = sent.reasons.get(key)
        self.tries[key] += 1
        refused = code not in (None, _CONDITION_FAILED_REASON, *_PASSING_REASONS)
        if refused or self.tries[key] >= CONFLICT_TRIES:
            self.fail(key, partial(cancelled, key=key, code=code, tries=self.tries[key]))
        elif code == _CONDITION_FAILED_REASON:
            self.to_read.add(key)
        elif code is not None:
            self.busy = True

    def request_failed(
        self, keys: Iterable[str], error: Callable[[str], LedgerError], *, read: bool
    ) -> None:
        """A request carrying `keys` failed whole: their sets go again alone, or fail."""
        keys = [key for key in keys if key in self.pending]
        if len({self.set_of[key] for key in keys}) > 1:
            self.alone.update(keys)
            if not read:
                for key in keys:
                    record, decided = self.ready[key]
                    self.unheard[key] = (record, _version(self.stored.get(key)) + 1, decided)
            # Read again first: a write may have landed unheard (`took_reads`).
            self.to_read.update(keys)
            return
        for key in keys:
            self.fail(key, error)

    def sets_alone(self, keys: Iterable[str]) -> tuple[list[str], list[list[str]]]:
        """`keys` split into those that may share requests, and the sets that go alone."""
        shared: list[str] = []
        apart: dict[int, list[str]] = {}
        for key in keys:
            if key in self.alone:
                apart.setdefault(self.set_of[key], []).append(key)
            else:
                shared.append(key)
        return shared, list(apart.values())

    def fail(self, key: str, error: Callable[[str], LedgerError]) -> None:
        """Fail every call with a claim on `key` (as its own operation), and drop the key."""
        for number, _ in self.entries[key]:
            self.failed.setdefault(number, error(self.calls[number].operation))
        self.pending.discard(key)

    def answer(self, number: int) -> Answer[object]:
        error = self.failed.get(number)
        return (None, error) if error is not None else (self.results[number], None)

    def _settle(self, key: str, decided: list[tuple[int, int, object]]) -> None:
        for number, at, answer in decided:
            self.results[number][at] = answer
        self.pending.discard(key)


async def _side_by_side(work: Sequence[Work]) -> None:
    """Run each piece of work concurrently (one alone needs no task group)."""
    if len(work) == 1:
        await work[0]()
        return
    async with anyio.create_task_group() as tg:
        for each in work:
            tg.start_soon(each)


def _version(item: _Stored | None) -> int:
    return item.version if item is not None else 0


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
        group_window_s: float = GROUP_WINDOW_S,
        group_max_ops: int = GROUP_MAX_OPS,
    ) -> None:
        self.owner = owner or default_owner()
        self.table = table
        self._client = client
        self._claim_s = claim_s
        self._ttl_s = ttl_s
        self._clock = clock
        # key -> (time.monotonic() when learned, the item then; None: there was none).
        self._known: OrderedDict[str, tuple[float, _Stored | None]] = OrderedDict()
        # Flushed by a task of the ledger's own, for as long as it is open (`async with`):
        # no caller's deadline reaches into the requests of the calls beside its own.
        self.group: OwnedGroupCommit[_Call, object] = OwnedGroupCommit(
            self._flush,
            window_s=group_window_s,
            max_ops=group_max_ops,
            abandoned=self._abandoned,
        )
        self._open = AsyncExitStack()

    async def __aenter__(self) -> Self:
        """Start the task that flushes the groups; it lives as long as the ledger."""
        await self._open.enter_async_context(self.group.flushing())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Cancel a flush still out (a stop waits for no request), answering its calls."""
        return await self._open.__aexit__(exc_type, exc, tb)

    def _abandoned(self, call: _Call) -> LedgerError:
        """A call the ledger closed on: its request cancelled, or never sent."""
        return LedgerError(
            self.backend,
            call.operation,
            SendError(
                ErrorClass.TRANSIENT,
                "retryd.LedgerCancelled",
                "the ledger closed (a stop) before this call was answered; whether it was "
                "written is unknown",
            ),
        )

    # -- what this ledger last saw of each key --------------------------------------------------

    def _learn(self, stored: dict[str, _Stored | None]) -> None:
        now = time.monotonic()
        for key, item in stored.items():
            known = self._known.get(key)
            if (
                known is not None
                and known[0] >= now - KNOWN_FOR_S
                and _version(known[1]) > _version(item)
            ):
                # A read that crossed a newer write of ours: the newer version is the one to
                # write over. (An item swept by its TTL since only costs a failed condition.)
                continue
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
        if isinstance(exc, LedgerError):
            # Said for the whole group's read: said again for this caller's own call.
            return LedgerError(self.backend, operation, exc.error)
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

    async def _batch_get(self, keys: Sequence[str]) -> list[Item]:
        """The items of up to 100 keys, read strongly; raises what the call failed with."""
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
            response = await self._client.batch_get_item(RequestItems=pending)
            items.extend(response.get("Responses", {}).get(self.table, []))
            pending = response.get("UnprocessedKeys") or {}
            for request in pending.values():
                # A retried read must be as strong as the first.
                request["ConsistentRead"] = True
            if not pending:
                return items
        raise LedgerError(
            self.backend,
            "read",
            SendError(
                ErrorClass.TRANSIENT,
                "retryd.UnprocessedKeys",
                f"BatchGetItem still left keys unread after {UNPROCESSED_ROUNDS} rounds",
            ),
        )

    async def _read(
        self, keys: Sequence[str], now_s: float
    ) -> tuple[dict[str, _Stored | None], dict[str, BaseException]]:
        """Each key's item as stored now (None: no item), and what the keys not read failed
        with; one BatchGetItem per 100 keys, side by side. Remembered for the next write."""
        distinct = list(dict.fromkeys(keys))
        stored: dict[str, _Stored | None] = {}
        failed: dict[str, BaseException] = {}

        async def read_part(part: list[str]) -> None:
            try:
                items = await self._batch_get(part)
            except (*_FAILURES, LedgerError) as exc:
                failed.update(dict.fromkeys(part, exc))
                return
            found: dict[str, _Stored | None] = dict.fromkeys(part)
            for item in items:
                key = str(item.get(KEY_ATTRIBUTE, {}).get("S", ""))
                try:
                    found[key] = from_item(item, now_s)
                except MalformedItemError as exc:
                    # This key's calls fail (never read as "no record"); the others go on.
                    found.pop(key, None)
                    failed[key] = MalformedItemError(f"the item of key {key!r} is malformed: {exc}")
            stored.update(found)

        parts = [
            distinct[start : start + BATCH_GET_MAX_KEYS]
            for start in range(0, len(distinct), BATCH_GET_MAX_KEYS)
        ]
        await _side_by_side([partial(read_part, part) for part in parts])
        self._learn(stored)
        return stored, failed

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

    async def _transact(self, keys: list[str], puts: list[dict[str, Any]]) -> _Sent:
        """One TransactWriteItems: written, cancelled (and which keys lost a race), or failed."""
        try:
            await self._client.transact_write_items(TransactItems=puts)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != _CANCELLED:
                return _Sent(keys, error=exc)
            reasons = exc.response.get("CancellationReasons") or []
            if len(reasons) != len(keys):
                # No per-item reasons: any of them may have changed.
                return _Sent(keys, reasons=dict.fromkeys(keys, _CONDITION_FAILED_REASON))
            # One reason per action, in the request's order; "None" where the item's
            # condition held and it was cancelled only with the others.
            return _Sent(
                keys,
                reasons={
                    key: str(code)
                    for key, reason in zip(keys, reasons, strict=True)
                    if (code := reason.get("Code")) not in (None, "None")
                },
            )
        except _FAILURES as exc:
            return _Sent(keys, error=exc)
        return _Sent(keys, written=True)

    # -- one group of calls: read, decide, conditionally write ---------------------------------

    async def _flush(self, calls: Sequence[_Call]) -> list[Answer[object]]:
        """Every call of a group in the fewest calls to DynamoDB; an answer for each."""
        answers: list[Answer[object]] = [(None, None)] * len(calls)
        reads = [(index, call) for index, call in enumerate(calls) if call.decide is None]
        writes = [(index, call) for index, call in enumerate(calls) if call.decide is not None]
        work: list[Work] = []
        if reads:
            work.append(partial(self._flush_reads, reads, answers))
        if writes:
            work.append(partial(self._flush_writes, writes, answers))
        await _side_by_side(work)
        return answers

    async def _flush_reads(
        self, calls: list[tuple[int, _Call]], answers: list[Answer[object]]
    ) -> None:
        """The reads of a group, as one BatchGetItem per 100 distinct keys."""
        now_s = self._clock()
        stored, failed = await self._read([key for _, call in calls for key in call.keys], now_s)
        concerned = [call for _, call in calls if any(key in failed for key in call.keys)]
        if len(concerned) > 1:
            # A request that failed whole for several calls says nothing of which one was
            # the cause: each call's keys are read again on their own.
            again: list[tuple[dict[str, _Stored | None], dict[str, BaseException]]] = []

            async def read_alone(keys: Sequence[str]) -> None:
                again.append(await self._read(keys, now_s))

            await _side_by_side([partial(read_alone, call.keys) for call in concerned])
            failed = {}
            for got, unread in again:
                stored.update(got)
                failed.update(unread)
        for index, call in calls:
            failure = next((failed[key] for key in call.keys if key in failed), None)
            if failure is not None:
                answers[index] = (None, self._error(call.operation, failure))
                continue
            records = {
                key: item.record
                for key in call.keys
                if (item := stored.get(key)) is not None and item.record is not None
            }
            answers[index] = (records, None)

    async def _flush_writes(
        self, calls: list[tuple[int, _Call]], answers: list[Answer[object]]
    ) -> None:
        """The claims of a group's calls, decided and written key by key in rounds (`_Writes`)."""
        keys = list(dict.fromkeys(claim.key for _, call in calls for claim in call.claims))
        writes = _Writes([call for _, call in calls], self._recalled(keys))
        busy_wait_s = BUSY_FIRST_WAIT_S
        while True:
            now_s = self._clock()
            reading, ready = writes.decide(now_s)
            if not reading and not ready:
                break
            sent, read = await self._round(reading, ready, writes, calls, now_s)
            for got, unread in read:
                writes.took_reads(got)
                for exc in {id(exc): exc for exc in unread.values()}.values():
                    keys = [key for key, each in unread.items() if each is exc]
                    writes.request_failed(keys, partial(self._error, exc=exc), read=True)
            for outcome in sent:
                if outcome.error is not None:
                    error = partial(self._error, exc=outcome.error)
                    writes.request_failed(outcome.keys, error, read=False)
                    continue
                for key in outcome.keys:
                    writes.took_write(key, outcome, self._cancelled)
            if writes.busy:
                # DynamoDB throttled an item, or another transaction held it: not a race
                # lost, so not read again, but not sent again at once either.
                await anyio.sleep(busy_wait_s)
                busy_wait_s = min(busy_wait_s * 2, BUSY_MAX_WAIT_S)
        for number, (index, _) in enumerate(calls):
            answers[index] = writes.answer(number)

    def _cancelled(self, operation: str, *, key: str, code: str | None, tries: int) -> LedgerError:
        """What a key's calls fail with when its transactions were cancelled `tries` times,
        or once with a reason that refuses the item itself (`code`)."""
        if code in (None, _CONDITION_FAILED_REASON, "TransactionConflict"):
            return contention_error(self.backend, operation, key, tries)
        return LedgerError(
            self.backend,
            operation,
            SendError(
                classify_code(code),
                code,
                f"TransactWriteItems cancelled for key {key!r} ({code}), {tries} time(s)",
            ),
        )

    async def _round(
        self,
        reading: list[str],
        ready: dict[str, Record],
        writes: _Writes,
        calls: list[tuple[int, _Call]],
        now_s: float,
    ) -> tuple[list[_Sent], list[tuple[dict[str, _Stored | None], dict[str, BaseException]]]]:
        """One round's reads and transactions, all side by side; a set of keys that
        failed in a shared request goes in requests of its own."""
        stored = writes.stored
        puts = {key: self._put(record, stored.get(key), now_s) for key, record in ready.items()}
        sizes = {key: item_bytes(put["Put"]["Item"]) for key, put in puts.items()}
        call_keys = [call.keys for _, call in calls]
        shared, apart = writes.sets_alone(puts)
        transactions = pack(call_keys, {key: sizes[key] for key in shared})
        for keys in apart:
            transactions.extend(pack(call_keys, {key: sizes[key] for key in keys}))
        shared_reads, apart_reads = writes.sets_alone(reading)
        reads = [keys for keys in (shared_reads, *apart_reads) if keys]
        sent: list[_Sent] = []
        read: list[tuple[dict[str, _Stored | None], dict[str, BaseException]]] = []

        async def send(keys: list[str]) -> None:
            outcome = await self._transact(keys, [puts[key] for key in keys])
            if outcome.written:
                self._learn(
                    {
                        key: _Stored(ready[key], (over.version + 1) if over else 1)
                        for key in keys
                        for over in (stored.get(key),)
                    }
                )
            sent.append(outcome)

        async def read_some(keys: list[str]) -> None:
            read.append(await self._read(keys, now_s))

        work: list[Work] = [partial(send, keys) for keys in transactions]
        work.extend(partial(read_some, keys) for keys in reads)
        await _side_by_side(work)
        return sent, read

    # -- the Ledger protocol -------------------------------------------------------------------

    async def _apply(self, operation: str, claims: Sequence[Claim], decide: Decider[R]) -> list[R]:
        if not claims:
            return []
        call = _Call(operation, [claim.key for claim in claims], claims, decide)
        return await self.group.call(call)  # type: ignore[return-value]  # the call's answers

    async def read(self, keys: Sequence[str]) -> dict[str, Record]:
        if not keys:
            return {}
        return await self.group.call(_Call("read", keys))  # type: ignore[return-value]

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
        # The client belongs to the run's AwsClients, which closes it; the flushing task
        # ends with the ledger's `async with`.
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
