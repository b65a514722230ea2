"""A resumed resubmission that fails again keeps its attempt (review finding, pure decide_*)."""

from __future__ import annotations

from retryd.ledger.base import (
    BeginStatus,
    Claim,
    Record,
    decide_begin,
    decide_commit,
    decide_release,
)

CLAIM_S = 60.0


def _begin(record: Record | None, message: str, attempt: int, owner: str, now_s: float) -> Record:
    begun, written = decide_begin(
        record, Claim("k", message, attempt, None), owner=owner, now_s=now_s, claim_s=CLAIM_S
    )
    assert begun.status in (BeginStatus.STARTED, BeginStatus.RESUMED)
    assert written is not None
    return written


def test_an_abandoned_message_that_fails_again_is_resumed_as_its_first_attempt_again() -> None:
    """m1 is begun as 1 and abandoned mid-call (it may have reached the target); m2 takes the
    key over and commits 1; m1 is resumed as 1, fails transiently and is released. Back once
    more it must still go as attempt 1, so a target deduplicating on (key, message, attempt)
    sees one resubmission, not a second one as attempt 2."""
    record = _begin(None, "m1", 1, "a", now_s=0.0)
    record = _begin(record, "m2", 1, "b", now_s=CLAIM_S + 1)
    _, committed = decide_commit(record, Claim("k", "m2", 1, None), owner="b", at_s=CLAIM_S + 2)
    assert committed is not None
    resumed, taken = decide_begin(
        committed, Claim("k", "m1", 2, None), owner="c", now_s=CLAIM_S + 3, claim_s=CLAIM_S
    )
    assert (resumed.status, resumed.attempt) == (BeginStatus.RESUMED, 1)
    assert taken is not None
    _, released = decide_release(taken, Claim("k", "m1", 1, None), owner="c")
    assert released is not None

    again, _ = decide_begin(
        released, Claim("k", "m1", 2, None), owner="c", now_s=CLAIM_S + 4, claim_s=CLAIM_S
    )

    assert (again.status, again.attempt) == (BeginStatus.RESUMED, 1)
