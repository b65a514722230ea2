"""The allowlist's question asked before any message: can a Lambda function be a target at all."""

from __future__ import annotations

import pytest

from retryd.admission.allowlist import MAX_REMEMBERED, Allowlist, lambda_may_be_target
from retryd.settings import GuardSettings

ACCOUNT = "123456789012"


@pytest.mark.parametrize(
    ("globs", "expected"),
    [
        ([f"arn:aws:lambda:*:{ACCOUNT}:function:*"], True),
        ([f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:charge"], True),
        ([f"arn:aws:*:*:{ACCOUNT}:*"], True),
        ([f"arn:aws:lambda:*:{ACCOUNT}:func*"], True),
        ([f"arn:aws:sqs:*:{ACCOUNT}:*", f"arn:aws:sns:*:{ACCOUNT}:*"], False),
        # A service glob that matches Lambda, but a resource no function has.
        ([f"arn:aws:*:*:{ACCOUNT}:stateMachine:*"], False),
        ([f"arn:aws:lambda:*:{ACCOUNT}:layer:*"], False),
    ],
)
def test_lambda_may_be_a_target_only_when_some_glob_can_match_a_function(
    globs: list[str], expected: bool
) -> None:
    """Each glob is tested on its service and on whether its resource can start `function:`."""
    assert lambda_may_be_target(GuardSettings(allow_targets=globs)) is expected


def test_allow_any_target_lets_lambda_through() -> None:
    """With every target allowed, Lambda's feeds are worth reading."""
    assert lambda_may_be_target(GuardSettings(allow_any_target=True)) is True


def test_remembered_answers_are_the_same_and_bounded() -> None:
    """Asked again, the same answer; ARNs made up by DLQ writers cannot grow its memory."""
    allowlist = Allowlist(["arn:aws:sqs:*:123456789012:orders-*"], allow_any=False)
    good = "arn:aws:sqs:us-east-1:123456789012:orders-1"
    for _ in range(2):
        assert allowlist.allows(good)
        assert not allowlist.allows("arn:aws:sqs:us-east-1:999999999999:orders-1")
        assert not allowlist.allows("not an arn")
    for n in range(MAX_REMEMBERED * 2):
        assert not allowlist.allows(f"arn:aws:sqs:us-east-1:123456789012:other-{n}")
    assert len(allowlist._answers) <= MAX_REMEMBERED
    assert allowlist.allows(good)
