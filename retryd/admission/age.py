"""The age guards: too old to be worth retrying, or about to be deleted by SQS.

Both work in unix seconds (the timestamps come from SQS and from the envelope).
"""

from __future__ import annotations


def too_old(first_failed_at_s: float | None, now_s: float, max_age_s: float) -> str | None:
    """Why the message is too old to retry (first failure more than `max_age_s` ago), or None.

    Unknown first-failure times are never too old: the guard only refuses what it can show.
    """
    if max_age_s <= 0:
        raise ValueError(f"max_age_s must be > 0, not {max_age_s}")
    if first_failed_at_s is None:
        return None
    age_s = now_s - first_failed_at_s
    if age_s <= max_age_s:
        return None
    return f"first failed {age_s:.0f}s ago, more than max_age_s {max_age_s:.0f}s"


def retention_expiring(
    sent_at_s: float | None, retention_s: int | None, now_s: float, horizon_s: float
) -> str | None:
    """Why SQS will delete the message within `horizon_s` (so park it now), or None.

    SQS deletes a message `MessageRetentionPeriod` seconds after its enqueue time.
    For a standard queue a redrive policy keeps the ORIGINAL enqueue time when it
    moves a message into the DLQ, so time spent in the source queue counts against
    the DLQ's retention; for a FIFO queue the move resets it. See "Setting up
    dead-letter queue retention in Amazon SQS":
    https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/setting-up-dead-letter-queue-retention.html

    `sent_at_s` must therefore be the message's `SentTimestamp` system attribute
    as read from the DLQ (unix seconds), not the time it reached the DLQ: for a
    standard queue that is the original enqueue time SQS measures retention from.
    For a FIFO DLQ the clock restarted at the move, so SentTimestamp can only be
    earlier than the real start: the guard then parks early, never late.
    Unknown inputs (no timestamp, no retention) are never expiring.

    A deletion at exactly `now_s + horizon_s` counts as expiring: SQS does not say
    on which side of that instant it acts.
    """
    if horizon_s < 0:
        raise ValueError(f"horizon_s must be >= 0, not {horizon_s}")
    if sent_at_s is None or retention_s is None:
        return None
    if retention_s <= 0:
        raise ValueError(f"retention_s must be > 0, not {retention_s}")
    deleted_at_s = sent_at_s + retention_s
    if deleted_at_s > now_s + horizon_s:
        return None
    left_s = deleted_at_s - now_s
    when = f"{-left_s:.0f}s ago" if left_s <= 0 else f"in {left_s:.0f}s"
    return (
        f"the DLQ's retention of {retention_s}s ends {when}, before retryd would try "
        f"again (within {horizon_s:.0f}s)"
    )
