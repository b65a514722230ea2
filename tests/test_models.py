"""Values read from SQS system attributes never raise, whatever the attribute holds."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from retryd.models import DeadLetter, QueueRef, Target

QUEUE = QueueRef("retry-x", "https://sqs.example/1/retry-x", "arn:aws:sqs:us-east-1:1:retry-x")


def test_non_ascii_digits_in_sent_timestamp_read_as_absent() -> None:
    """'²' passes str.isdigit() but is no number: SentTimestamp is then absent, not a crash."""
    letter = DeadLetter(QUEUE, "m", "r", "", system_attributes={"SentTimestamp": "\u00b2"})
    assert letter.sent_at_s is None
    assert letter.sent_at is None


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:lambda:us-east-1:123456789012:function:",
        "arn:aws:lambda:us-east-1:123456789012:function:rel-fn:",
        "arn:aws:lambda:us-east-1:123456789012:function:" + "f" * 65,
        "arn:aws:states:us-east-1:123456789012:stateMachine:",
        "arn:aws:states:us-east-1:123456789012:stateMachine:has space",
        "arn:aws:sqs:us-east-1:123456789012:" + "q" * 81,
        "arn:aws:sqs:us-east-1:123456789012:bad/name",
        "arn:aws:sns:us-east-1:123456789012:",
        "arn:aws:events:us-east-1:123456789012:event-bus/",
        "arn:aws:events:us-east-1:123456789012:event-bus/" + "b" * 257,
    ],
)
def test_a_target_arn_without_a_valid_resource_name_is_refused(arn: str) -> None:
    """No call goes to a name AWS could not hold (an empty bus name would reach the default)."""
    with pytest.raises(ValueError, match=r"no valid resource name|not an ARN|resource"):
        Target.from_arn(arn)


# Account strings an ARN could carry: anything without the colon that ends the field.
_ACCOUNTS = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters=":"), max_size=14),
    st.from_regex(r"\d{10,14}", fullmatch=True),
)


@given(account=_ACCOUNTS)
# Another script's zero: `\d` takes it, AWS does not.
@example(account="00000000000\u0660")
def test_a_target_arn_names_no_account_or_a_twelve_digit_one(account: str) -> None:
    """An account that is neither empty nor 12 digits is refused: it would reach SQS as an owner."""
    arn = f"arn:aws:sqs:eu-west-1:{account}:orders"
    if account == "" or (len(account) == 12 and account.isascii() and account.isdigit()):
        assert Target.from_arn(arn).arn == arn
    else:
        with pytest.raises(ValueError, match="account"):
            Target.from_arn(arn)
