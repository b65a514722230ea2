"""The attempt ledger's contract: value types, the protocol, and the decisions every backend shares.

The ledger answers two questions per idempotency key: how many resubmissions
were committed (and when the key first failed, and when it was last tried), and
whether this process may resubmit a given DLQ message now. The second is a
claim: `begin` takes it before the resubmission, `commit` records it after, and
`release` hands it back when nothing was sent. A claim carries an expiry a short
renewal period ahead (`ledger.claim_renew_s`), which its holder pushes on with
`renew` while it works: a live holder keeps its claim however slow the target,
and one that died holds the key only until the period lapses.

Parking is claimed the same way: `begin_park` takes the key's claim for a message
about to be copied to the parking queue, `commit_park` records the copy (attempt
and parking message id) once it is written. A parked message that comes back (its
delete was lost, its process died before the delete) is then only deleted, and
the parking queue holds one copy of it.

A key holds one claim at a time, yet several DLQ messages can share a key (a
producer that failed twice with one idempotency key). So a record also keeps
the DLQ messages whose resubmission it committed lately: one that comes back
(its delete was lost, or its lease ran out after the commit) is only deleted,
even after another message has claimed the key since. And it keeps the ones
whose begun claim was abandoned (its lease ran out mid-call, its process died)
and then taken over by another message: one that comes back is resumed under
the attempt it was begun as, so a target that deduplicates on (key, message,
attempt), like Step Functions execution names, sees the same resubmission again
rather than a new one.

Backends differ only in how they read and write a record atomically; what to
write is decided here by pure functions (`decide_begin`, `decide_commit`,
`decide_release`, `decide_renew`, `decide_begin_park`, `decide_commit_park`), so
all three backends behave identically.

Records written before claims were renewed or parks recorded read as they are:
their claim simply expires at the time stored with it, and they have parked nothing.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol, TypeVar

from retryd.errors import RetrydError
from retryd.models import ErrorClass, SendError

R = TypeVar("R")

# How many committed (message id, attempt) pairs a record remembers. Enough for the
# duplicates of one piece of work that sit in a DLQ at the same time; a message
# committed 16 resubmissions ago has been past its lease, and so deleted or back
# and answered DONE, long before.
COMMITTED_MEMORY = 16
# The highest attempt number a record stores. A resubmission's is at most
# guards.max_attempts + 1; a park's comes from the message (a forged `retryd.attempt`
# can be any integer) and is stored capped, within every backend's integers.
MAX_RECORDED_ATTEMPT = 2**31 - 1


class ClaimState(StrEnum):
    """Where a claim on a key stands."""

    # A resubmission is on its way; it may have reached the target.
    BEGUN = "begun"
    COMMITTED = "committed"
    # A copy is being written to the parking queue; nothing was sent to a target.
    PARKING = "parking"


# States in which a claim holds its key until it expires.
HOLDING_STATES = frozenset({ClaimState.BEGUN, ClaimState.PARKING})


@dataclass(frozen=True, slots=True)
class Record:
    """What the ledger knows about one idempotency key."""

    key: str
    # Resubmissions committed for this key (the highest attempt number committed).
    attempts: int
    # Unix seconds: the earliest first failure ever reported for the key.
    first_failed_at_s: float | None
    # Unix seconds of the last committed resubmission; backoff counts from it.
    last_attempt_at_s: float | None
    # The latest claim: which DLQ message, as which attempt, in what state, held by whom.
    claim_message_id: str | None
    claim_attempt: int
    claim_state: ClaimState | None
    claim_owner: str | None
    # Unix seconds after which a BEGUN claim is abandoned (its owner crashed or stalled).
    claim_expires_at_s: float
    # (DLQ message id, attempt) of the last COMMITTED_MEMORY committed resubmissions,
    # newest last, one pair per message: a message found here is DONE.
    committed: tuple[tuple[str, int], ...] = ()
    # (DLQ message id, attempt) of begun claims abandoned and then taken over by another
    # message, never committed; newest last, at most COMMITTED_MEMORY: RESUMED as that attempt.
    abandoned: tuple[tuple[str, int], ...] = ()
    # (DLQ message id, attempt, parking queue message id) of the last COMMITTED_MEMORY
    # parked copies, newest last, one per message: a message found here is only deleted.
    parked: tuple[tuple[str, int, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Claim:
    """A wish to resubmit one DLQ message under its idempotency key."""

    key: str
    # The DLQ message id being resubmitted.
    message_id: str
    # The attempt number this resubmission will be (1 is the first).
    attempt: int
    first_failed_at_s: float | None


class BeginStatus(StrEnum):
    """What `begin` allows for one claim."""

    # The claim is ours: resubmit.
    STARTED = "started"
    # This message was begun before and never committed (a crash, a lost lease),
    # whether or not another message has held the key since: resubmit again with
    # the same key and the attempt returned.
    RESUMED = "resumed"
    # This message's resubmission was committed: do not resubmit, only delete it.
    DONE = "done"
    # A copy of this message is in the parking queue: do not resubmit, only delete it.
    PARKED = "parked"
    # A live claim on the key is held for another message (by anyone, this process
    # included), or for this message by another owner: leave the message alone.
    BUSY = "busy"


class ParkStatus(StrEnum):
    """What `begin_park` allows for one message about to be parked."""

    # The claim is ours: write the parked copy, then `commit_park`.
    STARTED = "started"
    # A copy of this message is in the parking queue already: only delete it.
    PARKED = "parked"
    # This message's resubmission was committed: only delete it, never park a copy.
    RESUBMITTED = "resubmitted"
    # A live claim on the key is held (for another message, or for this one by
    # another owner): leave the message alone; it is looked at again later.
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class ParkBegun:
    """The answer to one park claim, and the attempt recorded with what settled it."""

    status: ParkStatus
    attempt: int


@dataclass(frozen=True, slots=True)
class ParkCopy:
    """A parked copy written for `claim`'s message, to record with `commit_park`."""

    claim: Claim
    # The parking queue's MessageId for the copy.
    parking_message_id: str


@dataclass(frozen=True, slots=True)
class Begun:
    """The answer to one claim: what to do, and as which attempt."""

    status: BeginStatus
    # RESUMED, DONE, PARKED, BUSY: the attempt recorded with what is stored; STARTED: the claim's.
    attempt: int


class LedgerError(RetrydError):
    """The ledger could not be read or written: the messages involved stay in their DLQs."""

    def __init__(self, backend: str, operation: str, error: SendError) -> None:
        self.backend = backend
        self.operation = operation
        self.error = error
        super().__init__(f"{backend} ledger {operation} failed ({error.error_class}): {error}")


def contention_error(backend: str, operation: str, key: str, tries: int) -> LedgerError:
    """A key that kept changing under every conditional write we tried."""
    return LedgerError(
        backend,
        operation,
        SendError(
            ErrorClass.TRANSIENT,
            "retryd.LedgerContention",
            f"key {key!r} changed under each of {tries} conditional writes",
        ),
    )


class Ledger(Protocol):
    """Attempts and in-flight resubmissions per idempotency key."""

    # Metric label: "memory", "sqlite" or "dynamodb".
    backend: str
    # This process's owner id, stored with the claims it holds.
    owner: str

    async def read(self, keys: Sequence[str]) -> dict[str, Record]:
        """The records of `keys` in one batched read; keys with no record are absent."""
        ...

    async def begin(self, claims: Sequence[Claim]) -> list[Begun]:
        """Try to take each claim; one answer per claim, in order."""
        ...

    async def commit(self, claims: Sequence[Claim], at_s: float) -> list[bool]:
        """Record each resubmission as made at `at_s`; False where the claim was taken over."""
        ...

    async def release(self, claims: Sequence[Claim]) -> None:
        """Hand back claims of ours that were never sent (or parked): no attempt is consumed."""
        ...

    async def renew(self, claims: Sequence[Claim]) -> list[bool]:
        """Push each claim of ours one renewal period on; False where it is ours no longer."""
        ...

    async def begin_park(self, claims: Sequence[Claim]) -> list[ParkBegun]:
        """Try to take each key's claim to park its message; one answer per claim, in order."""
        ...

    async def commit_park(self, copies: Sequence[ParkCopy]) -> list[bool]:
        """Record each parked copy; False where the park claim had been taken over meanwhile."""
        ...

    async def aclose(self) -> None:
        """Release the backend's resources; safe to call twice."""
        ...


def default_owner() -> str:
    """Host, process and a random suffix: unique even when a pid is reused after a restart."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _earliest(stored: float | None, reported: float | None) -> float | None:
    if stored is None:
        return reported
    if reported is None:
        return stored
    return min(stored, reported)


def committed_attempt(record: Record | None, message_id: str) -> int | None:
    """The attempt under which `message_id`'s resubmission was committed; None if not known."""
    if record is None:
        return None
    for committed_id, attempt in record.committed:
        if committed_id == message_id:
            return attempt
    # A claim committed so long ago that COMMITTED_MEMORY later commits pushed it out.
    if record.claim_state is ClaimState.COMMITTED and record.claim_message_id == message_id:
        return record.claim_attempt
    return None


def parked_attempt(record: Record | None, message_id: str) -> int | None:
    """The attempt recorded with `message_id`'s parked copy; None if none is known."""
    if record is None:
        return None
    return next((attempt for known, attempt, _ in record.parked if known == message_id), None)


def _remember(
    pairs: tuple[tuple[str, int], ...], message_id: str, attempt: int
) -> tuple[tuple[str, int], ...]:
    """`pairs` with (message, attempt) added (a message's first pair is kept), bounded."""
    if any(known == message_id for known, _ in pairs):
        return pairs
    return (*pairs, (message_id, attempt))[-COMMITTED_MEMORY:]


def _remember_parked(
    copies: tuple[tuple[str, int, str], ...], copy: tuple[str, int, str]
) -> tuple[tuple[str, int, str], ...]:
    """`copies` with `copy` added (a message's first copy is kept), bounded."""
    if any(known == copy[0] for known, _, _ in copies):
        return copies
    return (*copies, copy)[-COMMITTED_MEMORY:]


def _forget(pairs: tuple[tuple[str, int], ...], message_id: str) -> tuple[tuple[str, int], ...]:
    if not pairs:
        # Most keys never abandoned a claim.
        return pairs
    return tuple(pair for pair in pairs if pair[0] != message_id)


def _pair_attempt(pairs: tuple[tuple[str, int], ...], message_id: str) -> int | None:
    return next((attempt for known, attempt in pairs if known == message_id), None)


def _new_claim(
    record: Record | None,
    claim: Claim,
    owner: str,
    expires_at_s: float,
    attempt: int,
    *,
    state: ClaimState = ClaimState.BEGUN,
) -> Record:
    """`claim` taken as `attempt` in `state`; a begun claim it takes the key from is
    remembered abandoned."""
    abandoned = record.abandoned if record else ()
    if (
        record is not None
        and record.claim_state is ClaimState.BEGUN
        and record.claim_message_id is not None
        and record.claim_message_id != claim.message_id
        and committed_attempt(record, record.claim_message_id) is None
    ):
        abandoned = _remember(abandoned, record.claim_message_id, record.claim_attempt)
    if state is ClaimState.BEGUN:
        # Sent again now under the attempt it was begun as: no longer abandoned. A park
        # keeps the entry: should its copy fail, the message is still resumed as that attempt.
        abandoned = _forget(abandoned, claim.message_id)
    return Record(
        key=claim.key,
        attempts=record.attempts if record else 0,
        first_failed_at_s=_earliest(
            record.first_failed_at_s if record else None, claim.first_failed_at_s
        ),
        last_attempt_at_s=record.last_attempt_at_s if record else None,
        claim_message_id=claim.message_id,
        claim_attempt=attempt,
        claim_state=state,
        claim_owner=owner,
        claim_expires_at_s=expires_at_s,
        committed=record.committed if record else (),
        abandoned=abandoned,
        parked=record.parked if record else (),
    )


def _settled(record: Record, message_id: str) -> Begun | None:
    """DONE or PARKED when this message's copy is safe already, whoever holds the key now."""
    done_attempt = committed_attempt(record, message_id)
    if done_attempt is not None:
        # This very message already reached the target.
        return Begun(BeginStatus.DONE, done_attempt)
    parked_as = parked_attempt(record, message_id)
    if parked_as is not None:
        # Its copy is in the parking queue: a resubmission now would make it two copies.
        return Begun(BeginStatus.PARKED, parked_as)
    return None


def decide_begin(
    record: Record | None, claim: Claim, *, owner: str, now_s: float, claim_s: float
) -> tuple[Begun, Record | None]:
    """The answer to `claim` given the stored `record`, and the record to write (None: no write).

    `claim_s` is the renewal period: a claim taken now holds its key until `now_s +
    claim_s` unless its holder renews it.
    """
    if record is None:
        return Begun(BeginStatus.STARTED, claim.attempt), _new_claim(
            None, claim, owner, now_s + claim_s, claim.attempt
        )
    settled = _settled(record, claim.message_id)
    if settled is not None:
        return settled, None
    held = record.claim_state in HOLDING_STATES
    ours = record.claim_owner == owner
    live = record.claim_expires_at_s > now_s
    if record.claim_message_id == claim.message_id:
        if held and not ours and live:
            return Begun(BeginStatus.BUSY, record.claim_attempt), None
        if record.claim_state is ClaimState.BEGUN:
            # Ours from before a crash, or abandoned by its owner: send it again as the
            # same attempt, so a target that deduplicates on the key sees one resubmission.
            resumed = replace(
                record,
                claim_owner=owner,
                claim_expires_at_s=now_s + claim_s,
                first_failed_at_s=_earliest(record.first_failed_at_s, claim.first_failed_at_s),
            )
            return Begun(BeginStatus.RESUMED, record.claim_attempt), resumed
        # A park of this message never finished (nothing reached a target): taken over below.
    elif held and live:
        # Ours too: taking the key over would forget that the first message's
        # resubmission may be on its way, and a lost delete would then resend it.
        return Begun(BeginStatus.BUSY, record.claim_attempt), None
    # Begun once, abandoned, and another message has held the key since: it may have
    # reached the target under that attempt, so it goes again as that one.
    abandoned_attempt = _pair_attempt(record.abandoned, claim.message_id)
    status, attempt = (
        (BeginStatus.STARTED, claim.attempt)
        if abandoned_attempt is None
        else (BeginStatus.RESUMED, abandoned_attempt)
    )
    return Begun(status, attempt), _new_claim(record, claim, owner, now_s + claim_s, attempt)


def holds(record: Record | None, claim: Claim, owner: str) -> bool:
    """Whether `owner` still holds `claim` (begun or already committed by it)."""
    return (
        record is not None
        and record.claim_message_id == claim.message_id
        and record.claim_owner == owner
        and record.claim_state is not None
    )


def decide_commit(
    record: Record | None, claim: Claim, *, owner: str, at_s: float
) -> tuple[bool, Record | None]:
    """Record a resubmission made at `at_s`; False when `owner` no longer holds the claim.

    The attempt is counted either way: the resubmission did happen, and counting
    is a max, so a late commit can never lower or double the count. For the same
    reason the message joins `committed` either way, under the attempt the held
    claim was begun as (the claim's own attempt when the claim was lost).
    """
    counted_attempts = max(record.attempts if record else 0, claim.attempt)
    first_failed = _earliest(record.first_failed_at_s if record else None, claim.first_failed_at_s)
    if record is None:
        counted = Record(
            key=claim.key,
            attempts=counted_attempts,
            first_failed_at_s=first_failed,
            last_attempt_at_s=at_s,
            claim_message_id=None,
            claim_attempt=0,
            claim_state=None,
            claim_owner=None,
            claim_expires_at_s=0.0,
            committed=((claim.message_id, claim.attempt),),
        )
        return False, counted
    last_attempt = at_s if record.last_attempt_at_s is None else max(record.last_attempt_at_s, at_s)
    ours = holds(record, claim, owner)
    # Built whole, not by dataclasses.replace twice: this runs once per resubmission.
    counted = Record(
        key=record.key,
        attempts=counted_attempts,
        first_failed_at_s=first_failed,
        last_attempt_at_s=last_attempt,
        claim_message_id=record.claim_message_id,
        claim_attempt=record.claim_attempt,
        claim_state=ClaimState.COMMITTED if ours else record.claim_state,
        claim_owner=record.claim_owner,
        claim_expires_at_s=record.claim_expires_at_s,
        committed=_remember(
            record.committed, claim.message_id, record.claim_attempt if ours else claim.attempt
        ),
        # Done now: DONE is answered before anything else is looked at.
        abandoned=_forget(record.abandoned, claim.message_id),
        parked=record.parked,
    )
    return ours, (counted if counted != record else None)


def decide_release(
    record: Record | None, claim: Claim, *, owner: str
) -> tuple[None, Record | None]:
    """Drop `owner`'s begun (or parking) claim for this message; anything else is left as it is."""
    if (
        record is None
        or not holds(record, claim, owner)
        or record.claim_state not in HOLDING_STATES
    ):
        return None, None
    abandoned = record.abandoned
    if record.claim_state is ClaimState.BEGUN and record.claim_attempt <= record.attempts:
        # A claim resumed below the count (abandoned, then another message committed):
        # its first call may have reached the target, so if this message comes back it
        # goes again as that attempt, not as the next one.
        abandoned = _remember(record.abandoned, claim.message_id, record.claim_attempt)
    released = replace(
        record,
        claim_message_id=None,
        claim_attempt=0,
        claim_state=None,
        claim_owner=None,
        claim_expires_at_s=0.0,
        abandoned=abandoned,
    )
    return None, released


def decide_renew(
    record: Record | None, claim: Claim, *, owner: str, now_s: float, claim_s: float
) -> tuple[bool, Record | None]:
    """Push `owner`'s begun or parking claim on to `now_s + claim_s`; False if it is not ours.

    A claim past its expiry that nobody took over is still ours and is renewed: any
    other owner acting on the key would have written the record. An expiry already
    further on (a record written with a longer claim) is kept.
    """
    if (
        record is None
        or not holds(record, claim, owner)
        or record.claim_state not in HOLDING_STATES
    ):
        return False, None
    expires_at_s = now_s + claim_s
    if expires_at_s <= record.claim_expires_at_s:
        return True, None
    return True, replace(record, claim_expires_at_s=expires_at_s)


def decide_begin_park(
    record: Record | None, claim: Claim, *, owner: str, now_s: float, claim_s: float
) -> tuple[ParkBegun, Record | None]:
    """Whether `owner` may park `claim`'s message now, and the record to write (None: no write).

    A park takes the key's one claim, as a resubmission does: two replicas holding
    the same message (one of them past its lease) never both write a parked copy.
    It consumes no attempt.
    """
    if record is not None:
        parked_as = parked_attempt(record, claim.message_id)
        if parked_as is not None:
            return ParkBegun(ParkStatus.PARKED, parked_as), None
        done_attempt = committed_attempt(record, claim.message_id)
        if done_attempt is not None:
            # The target has it: a parked copy too would be a second one.
            return ParkBegun(ParkStatus.RESUBMITTED, done_attempt), None
        holding = record.claim_state in HOLDING_STATES and record.claim_expires_at_s > now_s
        ours = record.claim_message_id == claim.message_id and record.claim_owner == owner
        if holding and not ours:
            return ParkBegun(ParkStatus.BUSY, record.claim_attempt), None
    taken = _new_claim(
        record, claim, owner, now_s + claim_s, claim.attempt, state=ClaimState.PARKING
    )
    return ParkBegun(ParkStatus.STARTED, claim.attempt), taken


def decide_commit_park(
    record: Record | None, copy: ParkCopy, *, owner: str
) -> tuple[bool, Record | None]:
    """Record a parked copy; False when `owner` no longer held the message's park claim.

    The copy is recorded either way, as a late commit is: it is in the parking
    queue, and a message found parked is only deleted.
    """
    claim = copy.claim
    entry = (claim.message_id, claim.attempt, copy.parking_message_id)
    if record is None:
        recorded = Record(
            key=claim.key,
            attempts=0,
            first_failed_at_s=claim.first_failed_at_s,
            last_attempt_at_s=None,
            claim_message_id=None,
            claim_attempt=0,
            claim_state=None,
            claim_owner=None,
            claim_expires_at_s=0.0,
            parked=(entry,),
        )
        return False, recorded
    ours = holds(record, claim, owner) and record.claim_state is ClaimState.PARKING
    recorded = replace(
        record,
        parked=_remember_parked(record.parked, entry),
        first_failed_at_s=_earliest(record.first_failed_at_s, claim.first_failed_at_s),
        abandoned=_forget(record.abandoned, claim.message_id),
    )
    if ours:
        # The key is free again: a park leaves nothing in flight behind it.
        recorded = replace(
            recorded,
            claim_message_id=None,
            claim_attempt=0,
            claim_state=None,
            claim_owner=None,
            claim_expires_at_s=0.0,
        )
    return ours, (recorded if recorded != record else None)


Decide = Callable[[Record | None, Claim], tuple[R, Record | None]]


def park_copies_decide(copies: Sequence[ParkCopy], owner: str) -> tuple[list[Claim], Decide[bool]]:
    """`commit_park` as claims and a Decide over them, for backends that settle claims.

    Each claim finds its copy's parking message id by key and message id.
    """
    ids = {(copy.claim.key, copy.claim.message_id): copy.parking_message_id for copy in copies}

    def decide(record: Record | None, claim: Claim) -> tuple[bool, Record | None]:
        copy = ParkCopy(claim, ids[(claim.key, claim.message_id)])
        return decide_commit_park(record, copy, owner=owner)

    return [copy.claim for copy in copies], decide


def settle(
    records: Mapping[str, Record], claims: Sequence[Claim], decide: Decide[R]
) -> tuple[list[R], dict[str, Record]]:
    """Apply `decide` to each claim in order over `records`; returns answers and changed records.

    Claims on the same key see each other's writes, as they would one by one.
    """
    working = dict(records)
    changed: dict[str, Record] = {}
    answers = []
    for claim in claims:
        answer, written = decide(working.get(claim.key), claim)
        if written is not None:
            working[claim.key] = written
            changed[claim.key] = written
        answers.append(answer)
    return answers, changed
