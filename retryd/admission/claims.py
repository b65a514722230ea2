"""The ledger's part in admission: claim each job's key right before it is sent, settle it after.

`begin` claims each job's key under its DLQ message, so that a crash, a lost
lease or a second replica can never resubmit it twice unseen; `settle` writes
what became of each permit: `commit` for a copy the target took, `release` for
one that was not sent or failed. A permit whose call was cancelled in flight is
never settled here: its claim stays begun, to be resumed as the same attempt.

Parking goes the same way: `begin_parks` claims each Park's key right before its
copy is written (a message parked already is only deleted), `commit_parks`
records the copies written, `release_parks` hands back the claims of copies that
failed. `renew` keeps the claims of work still in flight alive (a batch's
heartbeat calls it), so only a dead holder's claim is ever taken over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import structlog

from retryd.admission.permit import Fate, Permit
from retryd.admission.verdicts import Defer, DeferReason, Done, Go, Hold, Park
from retryd.ledger.base import (
    MAX_RECORDED_ATTEMPT,
    BeginStatus,
    Claim,
    Ledger,
    LedgerError,
    ParkCopy,
    ParkStatus,
    Record,
    decide_begin,
    decide_begin_park,
)
from retryd.models import FailReason, Job, ledger_hold_reason

log = structlog.get_logger("retryd.admission")


@dataclass
class Admitted:
    """One target's Go verdicts after the last admission steps: sent now, or turned away."""

    # To send now; each job's attempt is the one the ledger began it as.
    go: list[Go] = field(default_factory=list)
    deferred: list[Defer] = field(default_factory=list)
    held: list[Hold] = field(default_factory=list)
    done: list[Done] = field(default_factory=list)


@dataclass
class Parkable:
    """Park verdicts after their ledger claims: to write now, only to delete, or left alone."""

    # Claimed: write their copies now, then `commit_parks` (or `release_parks`).
    park: list[Park] = field(default_factory=list)
    # A copy is in the parking queue already (or the target has one): only delete them;
    # the attempt recorded with it, and whether it was a park (else a resubmission).
    done: list[tuple[Park, int, bool]] = field(default_factory=list)
    # Another live claim holds the key: left in the DLQ to be looked at again.
    busy: list[Park] = field(default_factory=list)
    # The ledger could not be written: left in the DLQ, with the reason and detail.
    held: list[tuple[Park, FailReason, str]] = field(default_factory=list)


# Why a message whose key another live claim holds is left for later.
BUSY_DETAIL = (
    "another message with this key is being resubmitted (here or by another replica); "
    "it is looked at again later"
)
BUSY_PARK_DETAIL = (
    "another message with this key is being resubmitted or parked (here or by another "
    "replica); it is looked at again later"
)


def claimed_elsewhere(job: Job, attempt: int, detail: str = BUSY_DETAIL) -> Defer:
    """The verdict for a job whose key another live claim holds: left for later, no attempt."""
    return Defer(job, DeferReason.CLAIMED_ELSEWHERE, 0.0, detail, attempt)


def _first_failed_s(job: Job) -> float | None:
    first_s = job.first_failed_at_s
    return first_s if first_s is not None else job.letter.sent_at_s


def park_claim(park: Park) -> Claim:
    """The ledger claim a Park is written under: its key, message and attempt (capped)."""
    first_failed_s = _first_failed_s(park.job) if park.job else park.letter.sent_at_s
    attempt = max(0, min(park.attempt, MAX_RECORDED_ATTEMPT))
    return Claim(park.key, park.letter.message_id, attempt, first_failed_s)


class Claims:
    """Claims keys in the ledger for the jobs about to be sent; settles them after."""

    def __init__(self, ledger: Ledger | None, clock_s: Callable[[], float]) -> None:
        self._ledger = ledger
        self._clock_s = clock_s

    async def begin(self, gos: Sequence[Go], admitted: Admitted) -> None:
        """Claim each Go's key; each ends up in one of `admitted`'s lists."""
        if self._ledger is None:
            admitted.go.extend(gos)
            return
        claims = [
            Claim(go.job.key, go.job.letter.message_id, go.attempt, _first_failed_s(go.job))
            for go in gos
        ]
        try:
            begun = await self._ledger.begin(claims) if claims else []
        except LedgerError as exc:
            admitted.held.extend(
                Hold(go.job, ledger_hold_reason(exc.error.error_class), str(exc)) for go in gos
            )
            return
        for go, claim, answer in zip(gos, claims, begun, strict=True):
            if answer.status is BeginStatus.DONE:
                admitted.done.append(Done(go.job, answer.attempt))
            elif answer.status is BeginStatus.PARKED:
                # Parked since admission read the ledger: a copy is safe, only delete it.
                admitted.done.append(Done(go.job, answer.attempt, parked=True))
            elif answer.status is BeginStatus.BUSY:
                admitted.deferred.append(claimed_elsewhere(go.job, go.job.attempt))
            else:
                # STARTED, or RESUMED: a resubmission begun earlier and never committed goes
                # again under the same key and attempt, so the target can tell it is a repeat.
                if answer.attempt == go.attempt and go.job.attempt == go.attempt - 1:
                    # Begun as the attempt admission counted (the usual case): nothing to
                    # copy (a job's copy costs more than the rest of its claim).
                    go.permit.claim = claim
                    admitted.go.append(go)
                    continue
                go.permit.claim = replace(claim, attempt=answer.attempt)
                job = replace(go.job, attempt=answer.attempt - 1)
                admitted.go.append(replace(go, job=job, attempt=answer.attempt))

    def would_wait(self, verdict: Go | Park, record: Record | None) -> Defer | None:
        """A dry run's word for what `begin` (or `begin_parks`) would answer BUSY, from `record`.

        The ledger's own rule (decide_begin, decide_begin_park) read, nothing written: a
        plan predicts `claimed-elsewhere` where the cycle will meet another live claim.
        A Park with no job (a letter no resolver could read) is left as it is.
        """
        if self._ledger is None or record is None or verdict.job is None:
            return None
        owner, now_s = self._ledger.owner, self._clock_s()
        if isinstance(verdict, Go):
            job = verdict.job
            claim = Claim(job.key, job.letter.message_id, verdict.attempt, _first_failed_s(job))
            begun, _ = decide_begin(record, claim, owner=owner, now_s=now_s, claim_s=0.0)
            busy = begun.status is BeginStatus.BUSY
            return claimed_elsewhere(job, job.attempt) if busy else None
        parking, _ = decide_begin_park(
            record, park_claim(verdict), owner=owner, now_s=now_s, claim_s=0.0
        )
        if parking.status is not ParkStatus.BUSY:
            return None
        return claimed_elsewhere(verdict.job, verdict.attempt, BUSY_PARK_DETAIL)

    async def settle(self, label: str, permits: Sequence[Permit]) -> None:
        """Write each settled permit's fate: commit what succeeded, release the rest."""
        due = [p for p in permits if p.claim is not None and p.fate is not None and not p.written]
        for permit in due:
            permit.written = True
        if self._ledger is None or not due:
            return
        done = [p.claim for p in due if p.fate is Fate.SUCCEEDED and p.claim is not None]
        undone = [p.claim for p in due if p.fate is not Fate.SUCCEEDED and p.claim is not None]
        if done:
            await self._commit(self._ledger, label, done)
        if undone:
            # Apart from the commit: a commit that fails must not leave these claims
            # holding their keys against every replica for claim_s.
            try:
                await self._ledger.release(undone)
            except LedgerError as exc:
                log.warning("ledger-settle-failed", target=label, error=str(exc))

    async def _commit(self, ledger: Ledger, label: str, done: Sequence[Claim]) -> None:
        try:
            kept = await ledger.commit(done, self._clock_s())
        except LedgerError as exc:
            # The targets already have their copies: deleting is still right. The
            # count is short by these attempts, and a begun claim expires by itself.
            log.warning("ledger-settle-failed", target=label, error=str(exc))
            return
        for claim in (claim for claim, ok in zip(done, kept, strict=True) if not ok):
            log.warning(
                "ledger-claim-lost",
                key=claim.key,
                message_id=claim.message_id,
                why="another replica took the claim over; the target has the copy",
            )

    async def renew(self, claims: Sequence[Claim]) -> list[bool]:
        """Keep `claims` (of work in flight) held one renewal period more; False: lost.

        LedgerError propagates: the caller's heartbeat stops and says so, and the
        work goes on (a claim lapsing only lets another holder resume it later).
        """
        if self._ledger is None or not claims:
            return [True] * len(claims)
        return await self._ledger.renew(claims)

    async def begin_parks(self, parks: Sequence[Park]) -> Parkable:
        """Claim each Park's key for its copy; each Park ends up in one of the lists."""
        parkable = Parkable()
        if self._ledger is None or not parks:
            parkable.park.extend(parks)
            return parkable
        try:
            answers = await self._ledger.begin_park([park_claim(park) for park in parks])
        except LedgerError as exc:
            reason = ledger_hold_reason(exc.error.error_class)
            parkable.held.extend((park, reason, str(exc)) for park in parks)
            return parkable
        for park, answer in zip(parks, answers, strict=True):
            if answer.status is ParkStatus.STARTED:
                parkable.park.append(park)
            elif answer.status is ParkStatus.BUSY:
                parkable.busy.append(park)
            else:
                parked = answer.status is ParkStatus.PARKED
                parkable.done.append((park, answer.attempt, parked))
        return parkable

    async def commit_parks(self, written: Sequence[tuple[Park, str]]) -> None:
        """Record the copies written, as (Park, parking message id); never raises.

        A failed write is logged: the copies are safe, so deleting is still right;
        only a message whose delete is then lost too may be parked once more.
        """
        if self._ledger is None or not written:
            return
        copies = [ParkCopy(park_claim(park), message_id) for park, message_id in written]
        try:
            kept = await self._ledger.commit_park(copies)
        except LedgerError as exc:
            log.warning("ledger-park-commit-failed", parked=len(copies), error=str(exc))
            return
        for copy in (copy for copy, ok in zip(copies, kept, strict=True) if not ok):
            log.warning(
                "ledger-claim-lost",
                key=copy.claim.key,
                message_id=copy.claim.message_id,
                why="another replica took the park claim over; the parking queue has the copy",
            )

    async def release_parks(self, parks: Sequence[Park]) -> None:
        """Hand back the claims of parks whose copies were not written; never raises."""
        if self._ledger is None or not parks:
            return
        try:
            await self._ledger.release([park_claim(park) for park in parks])
        except LedgerError as exc:
            # The claims lapse by themselves within one renewal period.
            log.warning("ledger-settle-failed", parked=len(parks), error=str(exc))
