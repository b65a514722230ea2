"""How drain.processes workers split the DLQs, and how their cycle reports add up."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retryd.drain.cycle import CycleReport
from retryd.drain.shard import WHOLE, Shard

ARNS = st.from_regex(
    r"arn:aws:sqs:[a-z]{2}-[a-z]+-[1-9]:[0-9]{12}:[A-Za-z0-9_-]{1,80}", fullmatch=True
)


@given(arn=ARNS, count=st.integers(min_value=1, max_value=16))
def test_every_dlq_falls_to_exactly_one_worker(arn: str, count: int) -> None:
    """Whatever the count, one worker and only one owns each DLQ, so none is drained twice."""
    owners = [index for index in range(count) if Shard(index, count).owns(arn)]
    assert len(owners) == 1


def test_the_split_is_the_same_in_every_process() -> None:
    """The owner comes from the ARN alone (CRC-32, not Python's salted hash): fixed values."""
    arn = "arn:aws:sqs:us-east-1:123456789012:retry-orders"
    assert [Shard(i, 4).owns(arn) for i in range(4)] == [False, False, False, True]
    assert WHOLE.owns(arn)


def test_twenty_dlqs_are_spread_over_two_workers() -> None:
    """The bench's 20 DLQs land on both workers, not all on one."""
    arns = [f"arn:aws:sqs:us-east-1:000000000000:retry-bench-{i:04d}" for i in range(20)]
    split = Counter(next(i for i in range(2) if Shard(i, 2).owns(arn)) for arn in arns)
    assert min(split.values()) >= 6, split


def test_a_shard_outside_the_count_is_refused() -> None:
    """Worker 2 of 2 does not exist (they are numbered from 0)."""
    with pytest.raises(ValueError, match="shard 2 of 2"):
        Shard(2, 2)


def test_worker_reports_add_up() -> None:
    """Counts and reasons summed, errors joined, the longest duration, discovery only if all did."""
    first = CycleReport(queues=3, discovered=True, received=30, duration_s=2.0)
    first.outcomes.update({"resubmitted": 28, "failed": 2})
    first.reasons.update({("failed", "transient-error"): 2})
    second = CycleReport(queues=2, discovered=False, received=5, duration_s=3.5)
    second.outcomes.update({"resubmitted": 5})
    second.errors.append("retry-b: AccessDenied")
    total = CycleReport(discovered=True)
    for report in (first, second):
        total.merge(CycleReport.from_json(report.to_json(), discovered=report.discovered))
    assert (total.queues, total.received, total.duration_s) == (5, 35, 3.5)
    assert total.outcomes["resubmitted"] == 33
    assert total.reasons == Counter({("failed", "transient-error"): 2})
    assert total.errors == ["retry-b: AccessDenied"]
    assert not total.discovered
