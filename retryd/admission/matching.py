"""ARN globs matched field by field: one definition for the allowlist, backoff and rate rules.

A `*` stays inside its field: `arn:aws:lambda:*:123456789012:function:*` matches
any region of that account, never another account that a whole-string glob would
let `*` swallow. The resource field keeps its colons, so `function:*` also covers
a qualified function (`function:charge:prod`). Matching is case-sensitive, with
fnmatch's `*`, `?` and `[...]` in each field.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import TypeVar

from retryd.models import Arn

_ARN_FIELDS = 6
_WILDCARDS = frozenset("*?")

ArnFields = tuple[str, str, str, str, str]

R = TypeVar("R")


def arn_fields(arn: Arn) -> ArnFields:
    """The five matchable fields of a parsed ARN (the leading `arn` is implied)."""
    return (arn.partition, arn.service, arn.region, arn.account, arn.resource)


def parse_glob(glob: str) -> ArnFields:
    """A glob's five matchable fields; ValueError when it does not have an ARN's shape."""
    parts = glob.split(":", _ARN_FIELDS - 1)
    if len(parts) != _ARN_FIELDS or parts[0] != "arn":
        raise ValueError(f"{glob!r} is not an ARN glob (arn:partition:service:region:...)")
    return (parts[1], parts[2], parts[3], parts[4], parts[5])


def literal_head(glob: str) -> str:
    """The part of a glob before its first wildcard."""
    for index, char in enumerate(glob):
        if char in _WILDCARDS:
            return glob[:index]
    return glob


def could_match_prefix(resource_glob: str, prefix: str) -> bool:
    """Whether some resource starting with `prefix` can match the glob (a cheap, safe test)."""
    head = literal_head(resource_glob)
    if head == resource_glob:
        return resource_glob.startswith(prefix)
    return prefix.startswith(head) or head.startswith(prefix)


def fields_match(fields: ArnFields, pattern: ArnFields) -> bool:
    """True when every field matches the glob in the same position."""
    return all(
        fnmatch.fnmatchcase(value, part) for value, part in zip(fields, pattern, strict=True)
    )


def glob_matches(arn: str, glob: str) -> bool:
    """Whether `arn` matches `glob` field by field; an unparsable ARN matches nothing.

    A glob without an ARN's shape is a configuration error, not a non-match: ValueError.
    """
    pattern = parse_glob(glob)
    try:
        fields = arn_fields(Arn.parse(arn))
    except ValueError:
        return False
    return fields_match(fields, pattern)


def first_matching(arn: str, rules: Sequence[R], pattern: Callable[[R], str]) -> R | None:
    """The first rule whose glob (`pattern(rule)`) matches `arn`, or None."""
    for rule in rules:
        if glob_matches(arn, pattern(rule)):
            return rule
    return None
