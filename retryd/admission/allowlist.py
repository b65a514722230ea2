"""The target allowlist: anyone who can write to a DLQ must not be able to aim retryd anywhere.

Patterns are ARN globs matched field by field (see `retryd.admission.matching`), so a
`*` stays inside its field: `arn:aws:lambda:*:123456789012:function:*` allows any
region of that account, never another account whose ID a whole-string glob would
let `*` swallow.
"""

from __future__ import annotations

from collections.abc import Sequence

from retryd.admission.matching import arn_fields, fields_match, parse_glob
from retryd.models import Arn

__all__ = ["Allowlist", "parse_glob"]


class Allowlist:
    """Which target ARNs retryd may send to."""

    def __init__(self, globs: Sequence[str], allow_any: bool) -> None:
        # Parsed once here so that a malformed glob fails at start-up, not per message.
        self._patterns = tuple(parse_glob(glob) for glob in globs)
        self._allow_any = allow_any

    def allows(self, arn: str) -> bool:
        """True when the ARN parses and (allow_any, or) some glob matches each of its fields."""
        try:
            fields = arn_fields(Arn.parse(arn))
        except ValueError:
            return False
        if self._allow_any:
            return True
        return any(fields_match(fields, pattern) for pattern in self._patterns)
