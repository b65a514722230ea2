"""Values read from SQS system attributes never raise, whatever the attribute holds."""

from __future__ import annotations

from retryd.models import DeadLetter, QueueRef

QUEUE = QueueRef("retry-x", "https://sqs.example/1/retry-x", "arn:aws:sqs:us-east-1:1:retry-x")


def test_non_ascii_digits_in_sent_timestamp_read_as_absent() -> None:
    """'²' passes str.isdigit() but is no number: SentTimestamp is then absent, not a crash."""
    letter = DeadLetter(QUEUE, "m", "r", "", system_attributes={"SentTimestamp": "\u00b2"})
    assert letter.sent_at_s is None
    assert letter.sent_at is None
