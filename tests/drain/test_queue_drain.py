"""What one queue's drain remembers within a cycle: only what can still come back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from retryd.admission.verdicts import DeferReason
from retryd.drain.cycle import Handled
from retryd.models import Decision, Outcome, QueueRef
from tests.native_helpers import letter

QUEUE = QueueRef(
    "dlq",
    "https://sqs.us-east-1.amazonaws.com/123456789012/dlq",
    "arn:aws:sqs:us-east-1:123456789012:dlq",
)
# What comes back to the same drain taken for a stale message (a deferred one, unless
# paused, is judged again when it comes back due).
LEFT_STALE = {Outcome.FAILED, Outcome.REFUSED}
REASONS = [reason.value for reason in DeferReason]


@given(st.lists(st.sampled_from(list(Outcome)), max_size=40))
def test_forgets_deleted_messages_and_keeps_the_rest(outcomes: list[Outcome]) -> None:
    """After a batch, only the messages still in the DLQ are remembered (memory bounded by them)."""
    state = Handled()
    letters = [
        letter(on=QUEUE, message_id=f"m-{n}", receipt_handle=f"r-{n}") for n in range(len(outcomes))
    ]
    state.saw(letters)
    state.settled([Decision(lt, outcome) for lt, outcome in zip(letters, outcomes, strict=True)])
    assert state.seen == {
        lt.message_id
        for lt, outcome in zip(letters, outcomes, strict=True)
        if outcome in LEFT_STALE
    }


def test_a_long_drain_of_resubmitted_messages_remembers_nothing() -> None:
    """Draining 10,000 messages that all leave the DLQ ends with an empty memory, not 10,000 ids."""
    state = Handled()
    for start in range(0, 10_000, 10):
        batch = [
            letter(on=QUEUE, message_id=f"m-{n}", receipt_handle=f"r-{n}")
            for n in range(start, start + 10)
        ]
        state.saw(batch)
        state.settled([Decision(lt, Outcome.RESUBMITTED) for lt in batch])
    assert state.seen == set()


@given(
    st.lists(
        st.tuples(st.sampled_from([Outcome.DEFERRED, Outcome.FAILED]), st.sampled_from(REASONS)),
        max_size=20,
    )
)
def test_deferred_messages_are_judged_again_this_cycle_unless_paused(
    results: list[tuple[Outcome, str]],
) -> None:
    """Deferred for its backoff, tokens, a breaker or another replica's claim: forgotten, so
    when it comes back due it is judged again, not taken for a stale message. Paused (the
    pauses are read once a cycle) or failed: remembered."""
    state = Handled()
    letters = [
        letter(on=QUEUE, message_id=f"m-{n}", receipt_handle=f"r-{n}") for n in range(len(results))
    ]
    state.saw(letters)
    state.settled(
        [
            Decision(lt, outcome, reason=reason)
            for lt, (outcome, reason) in zip(letters, results, strict=True)
        ]
    )
    assert state.seen == {
        lt.message_id
        for lt, (outcome, reason) in zip(letters, results, strict=True)
        if outcome is not Outcome.DEFERRED or reason == DeferReason.PAUSED
    }
