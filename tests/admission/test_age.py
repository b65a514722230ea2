"""Age guards: too old to retry (max_age_s) and about to be deleted by SQS (retention rescue)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.admission.age import retention_expiring, too_old

NOW_S = 1_700_000_000.0
DAY_S = 86_400
FOUR_DAYS_S = 4 * DAY_S

# -- too old -----------------------------------------------------------------------------


def test_unknown_first_failure_is_never_too_old() -> None:
    """Without a first-failure time the guard has nothing to show, so it lets the message be."""
    assert too_old(None, NOW_S, 60) is None


def test_exactly_max_age_is_not_yet_too_old() -> None:
    """Too old means older than max_age_s; reaching it exactly is still allowed."""
    assert too_old(NOW_S - 3_600, NOW_S, 3_600) is None


def test_past_max_age_is_too_old_and_says_how_old() -> None:
    """One second past max_age_s parks it, with the age and the limit in the detail."""
    detail = too_old(NOW_S - 3_601, NOW_S, 3_600)
    assert detail == "first failed 3601s ago, more than max_age_s 3600s"


def test_first_failure_in_the_future_is_not_too_old() -> None:
    """A producer's clock ahead of ours gives a negative age, which is not 'too old'."""
    assert too_old(NOW_S + 600, NOW_S, 60) is None


def test_max_age_must_be_positive() -> None:
    """A zero max age would park everything; it is refused as a caller error."""
    with pytest.raises(ValueError, match="max_age_s"):
        too_old(NOW_S, NOW_S, 0)


@given(
    age_s=st.floats(min_value=-1e7, max_value=1e7),
    max_age_s=st.floats(min_value=1, max_value=1e7),
)
def test_too_old_exactly_when_age_exceeds_the_limit(age_s: float, max_age_s: float) -> None:
    """The verdict is `age > max_age_s`, for any age and limit."""
    first_s = NOW_S - age_s
    assert (too_old(first_s, NOW_S, max_age_s) is not None) == (NOW_S - first_s > max_age_s)


# -- retention rescue -------------------------------------------------------------------


def test_unknown_sent_time_or_retention_is_never_expiring() -> None:
    """Without SentTimestamp or the queue's retention there is no deletion time to beat."""
    assert retention_expiring(None, FOUR_DAYS_S, NOW_S, 600) is None
    assert retention_expiring(NOW_S - FOUR_DAYS_S, None, NOW_S, 600) is None


def test_time_in_the_source_queue_counts_against_dlq_retention() -> None:
    """A message 1 day in its source queue and 4 days retention in the DLQ goes after 3 days there.

    SentTimestamp is the original enqueue time (standard queues keep it on a redrive move),
    so the guard sees the deletion coming 4 days after that, not 4 days after the move.
    """
    sent_s = NOW_S - 4 * DAY_S + 300  # 1 day in the source queue, nearly 3 in the DLQ
    detail = retention_expiring(sent_s, FOUR_DAYS_S, NOW_S, 600)
    assert detail is not None
    assert "ends in 300s" in detail


def test_deletion_after_the_horizon_is_left_alone() -> None:
    """A message SQS keeps past the next look is not parked."""
    assert retention_expiring(NOW_S - FOUR_DAYS_S + 601, FOUR_DAYS_S, NOW_S, 600) is None


def test_deletion_exactly_at_the_horizon_is_rescued() -> None:
    """At the boundary the guard parks: losing the message is worse than parking it early."""
    assert retention_expiring(NOW_S - FOUR_DAYS_S + 600, FOUR_DAYS_S, NOW_S, 600) is not None


def test_already_past_retention_is_rescued_and_says_so() -> None:
    """A message still readable after its deletion time is parked; the detail says 'ago'."""
    detail = retention_expiring(NOW_S - FOUR_DAYS_S - 5, FOUR_DAYS_S, NOW_S, 0)
    assert detail is not None
    assert "ends 5s ago" in detail


def test_zero_horizon_only_rescues_what_is_due_now() -> None:
    """With no horizon, only a message whose deletion time has come is parked."""
    assert retention_expiring(NOW_S - FOUR_DAYS_S + 1, FOUR_DAYS_S, NOW_S, 0) is None
    assert retention_expiring(NOW_S - FOUR_DAYS_S, FOUR_DAYS_S, NOW_S, 0) is not None


@pytest.mark.parametrize(
    ("retention_s", "horizon_s", "field"), [(0, 600, "retention_s"), (60, -1, "horizon_s")]
)
def test_nonsense_inputs_are_errors(retention_s: int, horizon_s: float, field: str) -> None:
    """A non-positive retention or a negative horizon is a caller's bug, named in the error."""
    with pytest.raises(ValueError, match=field):
        retention_expiring(NOW_S, retention_s, NOW_S, horizon_s)


@given(
    in_queue_s=st.floats(min_value=0, max_value=2e6),
    retention_s=st.integers(min_value=60, max_value=1_209_600),
    horizon_s=st.floats(min_value=0, max_value=1e5),
)
def test_expiring_exactly_when_deletion_is_within_the_horizon(
    in_queue_s: float, retention_s: int, horizon_s: float
) -> None:
    """The verdict is `sent + retention <= now + horizon`, for any inputs."""
    sent_s = NOW_S - in_queue_s
    expected = sent_s + retention_s <= NOW_S + horizon_s
    assert (retention_expiring(sent_s, retention_s, NOW_S, horizon_s) is not None) == expected
