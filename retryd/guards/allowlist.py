"""The target allowlist: anyone who can write to a DLQ must not be able to aim retryd anywhere.

Patterns are ARN globs matched field by field, so a `*` stays inside its field:
`arn:aws:lambda:*:123456789012:function:*` allows any region of that account,
never another account whose ID a whole-string glob would let `*` swallow.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from retryd.models import Arn

_ARN_FIELDS = 6


def _fields(arn: Arn) -> tuple[str, str, str, str, str]:
    return (arn.partition, arn.service, arn.region, arn.account, arn.resource)


def parse_glob(glob: str) -> tuple[str, str, str, str, str]:
    """A glob's five matchable fields; ValueError when it does not have an ARN's shape."""
    parts = glob.split(":", _ARN_FIELDS - 1)
    if len(parts) != _ARN_FIELDS or parts[0] != "arn":
        raise ValueError(f"{glob!r} is not an ARN glob (arn:partition:service:region:...)")
    return (parts[1], parts[2], parts[3], parts[4], parts[5])


class Allowlist:
    """Which target ARNs retryd may send to."""

    def __init__(self, globs: Sequence[str], allow_any: bool) -> None:
        self._patterns = tuple(parse_glob(glob) for glob in globs)
        self._allow_any = allow_any

    def allows(self, arn: str) -> bool:
        """True when the ARN parses and (allow_any, or) some glob matches each of its fields."""
        try:
            fields = _fields(Arn.parse(arn))
        except ValueError:
            return False
        if self._allow_any:
            return True
        return any(
            all(
                fnmatch.fnmatchcase(value, part)
                for value, part in zip(fields, pattern, strict=True)
            )
            for pattern in self._patterns
        )
