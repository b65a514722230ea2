"""The target allowlist: anyone who can write to a DLQ must not be able to aim retryd anywhere.

Patterns are ARN globs matched field by field (see `retryd.arns`), so a
`*` stays inside its field: `arn:aws:lambda:*:123456789012:function:*` allows any
region of that account, never another account whose ID a whole-string glob would
let `*` swallow.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from retryd.arns import Arn, arn_fields, could_match_prefix, fields_match, parse_glob
from retryd.settings import GuardSettings

__all__ = [
    "LAMBDA_RESOURCE_PREFIX",
    "LAMBDA_SERVICE",
    "Allowlist",
    "lambda_may_be_target",
    "parse_glob",
    "subscriber_may_be_target",
]

# How a Lambda function's ARN looks: `arn:<partition>:lambda:<region>:<account>:function:<name>`.
LAMBDA_SERVICE = "lambda"
LAMBDA_RESOURCE_PREFIX = "function:"
SQS_SERVICE = "sqs"
# Distinct target ARNs whose answer is remembered (see Allowlist.allows).
MAX_REMEMBERED = 4096


class Allowlist:
    """Which target ARNs retryd may send to."""

    def __init__(self, globs: Sequence[str], allow_any: bool) -> None:
        # Parsed once here so that a malformed glob fails at start-up, not per message.
        self._patterns = tuple(parse_glob(glob) for glob in globs)
        self._allow_any = allow_any
        # Answers by ARN: a batch names a handful of targets, asked about for every
        # message. Emptied when full, so ARNs made up by DLQ writers cannot grow it.
        self._answers: dict[str, bool] = {}

    @classmethod
    def from_settings(cls, guards: GuardSettings) -> Allowlist:
        """The allowlist `[guards]` configures."""
        return cls(guards.allow_targets, guards.allow_any_target)

    def allows(self, arn: str) -> bool:
        """True when the ARN parses and (allow_any, or) some glob matches each of its fields."""
        answer = self._answers.get(arn)
        if answer is None:
            if len(self._answers) >= MAX_REMEMBERED:
                self._answers.clear()
            answer = self._answers[arn] = self._match(arn)
        return answer

    def _match(self, arn: str) -> bool:
        try:
            fields = arn_fields(Arn.parse(arn))
        except ValueError:
            return False
        if self._allow_any:
            return True
        return any(fields_match(fields, pattern) for pattern in self._patterns)


def lambda_may_be_target(guards: GuardSettings) -> bool:
    """Whether the allowlist can let a Lambda function through as a target.

    Only then does retryd read Lambda's feeds (retryd.discovery.feeds), and only then does
    `retryd iam-policy` grant those reads: the two agree by using this one test.
    """
    if guards.allow_any_target:
        return True
    for glob in guards.allow_targets:
        _, service_glob, _, _, resource = parse_glob(glob)
        if fnmatch.fnmatchcase(LAMBDA_SERVICE, service_glob) and could_match_prefix(
            resource, LAMBDA_RESOURCE_PREFIX
        ):
            return True
    return False


def subscriber_may_be_target(guards: GuardSettings) -> bool:
    """Whether the allowlist can let an SQS queue or a Lambda function through as a target.

    Only then does retryd read SNS subscriptions (retryd.discovery.feeds), and only then
    does `retryd iam-policy` grant those reads: both use this one test. Otherwise every
    subscriber retryd could name would be refused by the allowlist anyway.
    """
    if lambda_may_be_target(guards):
        return True
    # Any resource can be a queue's: only the service part of a glob can rule SQS out.
    return any(
        fnmatch.fnmatchcase(SQS_SERVICE, parse_glob(glob)[1]) for glob in guards.allow_targets
    )
