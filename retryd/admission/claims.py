"""The ledger's part in admission: claim each job's key right before it is sent, settle it after.

`begin` claims each job's key under its DLQ message, so that a crash, a lost
lease or a second replica can never resubmit it twice unseen; `settle` writes
what became of each permit: `commit` for a copy the target took, `release` for
one that was not sent or failed. A permit whose call was cancelled in flight is
never settled here: its claim stays begun, to be resumed as the same attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import structlog

from retryd.admission.permit import Fate, Permit
from retryd.admission.verdicts import Defer, DeferReason, Done, Go, Hold
from retryd.ledger.base import BeginStatus, Claim, Ledger, LedgerError
from retryd.models import Job, ledger_hold_reason

log = structlog.get_logger("retryd.admission")


@dataclass
class Admitted:
    """One target's Go verdicts after the last admission steps: sent now, or turned away."""

    # To send now; each job's attempt is the one the ledger began it as.
    go: list[Go] = field(default_factory=list)
    deferred: list[Defer] = field(default_factory=list)
    held: list[Hold] = field(default_factory=list)
    done: list[Done] = field(default_factory=list)


def _first_failed_s(job: Job) -> float | None:
    first_s = job.first_failed_at_s
    return first_s if first_s is not None else job.letter.sent_at_s


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
            elif answer.status is BeginStatus.BUSY:
                admitted.deferred.append(
                    Defer(
                        go.job,
                        DeferReason.CLAIMED_ELSEWHERE,
                        0.0,
                        "another message with this key is being resubmitted (here or by "
                        "another replica); it is looked at again later",
                        go.job.attempt,
                    )
                )
            else:
                # STARTED, or RESUMED: a resubmission begun earlier and never committed goes
                # again under the same key and attempt, so the target can tell it is a repeat.
                go.permit.claim = replace(claim, attempt=answer.attempt)
                job = replace(go.job, attempt=answer.attempt - 1)
                admitted.go.append(replace(go, job=job, attempt=answer.attempt))

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
