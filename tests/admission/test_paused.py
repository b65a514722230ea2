"""The pause guard: a paused target's messages are deferred, spend nothing, and are capped."""

from __future__ import annotations

import anyio
from hypothesis import given
from hypothesis import strategies as st

from retryd.admission.guards import Guards
from retryd.admission.paused import Pause, PauseSet, paused
from retryd.admission.verdicts import Defer, DeferReason, Go, Park
from retryd.models import DeadLetter, Job, QueueRef, Target
from retryd.settings import GuardSettings

CHARGE = "arn:aws:lambda:us-east-1:123456789012:function:charge"
OTHER = "arn:aws:lambda:us-east-1:123456789012:function:other"
QUEUE = QueueRef("retry-a", "https://sqs/retry-a", "arn:aws:sqs:us-east-1:123456789012:retry-a")


def job_for(arn: str, attempt: int = 0) -> Job:
    letter = DeadLetter(QUEUE, "m1", "rh", "{}")
    return Job(letter, Target.from_arn(arn), "{}", "k", attempt=attempt)


def pause(pattern: str, until_s: float | None = None) -> Pause:
    return Pause("p1", pattern, "migration", "me", 0.0, until_s)


def test_a_paused_target_is_deferred_with_no_attempt_spent() -> None:
    """Guards.assess defers a paused target's job as `paused`, keeping its attempt number."""
    guards = Guards(GuardSettings(allow_targets=["arn:aws:lambda:*:*:*"]), clock_s=lambda: 100.0)
    guards.set_pauses(PauseSet((pause(CHARGE),)))
    verdicts = anyio.run(guards.assess, [job_for(CHARGE, attempt=2), job_for(OTHER)])
    assert isinstance(verdicts[0], Defer)
    assert (verdicts[0].reason, verdicts[0].attempt) == (DeferReason.PAUSED, 2)
    assert isinstance(verdicts[1], Go)


def test_the_allowlist_still_parks_before_a_pause_defers() -> None:
    """A target off the allowlist is parked even while paused: a pause grants nothing."""
    guards = Guards(GuardSettings(allow_targets=[OTHER]), clock_s=lambda: 100.0)
    guards.set_pauses(PauseSet((pause("*"),)))
    [verdict] = anyio.run(guards.assess, [job_for(CHARGE)])
    assert isinstance(verdict, Park)


@given(
    now_s=st.floats(0, 1e6),
    left_s=st.floats(0.001, 1e6),
    recheck_s=st.floats(1, 600),
    rescuable_s=st.floats(0, 1e6),
    open_ended=st.booleans(),
)
def test_the_hide_lasts_until_the_pause_can_end_and_never_past_retention(
    now_s: float, left_s: float, recheck_s: float, rescuable_s: float, open_ended: bool
) -> None:
    """Hidden until the pause's end (open-ended: one recheck), never longer than rescuable."""
    until_s = None if open_ended else now_s + left_s
    defer = paused(
        job_for(CHARGE),
        PauseSet((pause(CHARGE, until_s),)),
        now_s,
        recheck_s=recheck_s,
        rescuable_s=rescuable_s,
    )
    assert defer is not None
    expected = recheck_s if until_s is None else until_s - now_s
    assert defer.delay_s <= rescuable_s
    assert defer.delay_s == min(max(0.0, expected), rescuable_s)


def test_an_ended_pause_holds_nothing() -> None:
    """Past its end a pause no longer covers its target."""
    pauses = PauseSet((pause(CHARGE, until_s=50.0),))
    assert paused(job_for(CHARGE), pauses, 60.0, recheck_s=60, rescuable_s=1e9) is None
