"""The interface every resolver implements, and what they share: reading retryd's own stamps.

A resolver turns one dead letter into a Job (where it goes back to, and as
what), an Unresolvable (it is this resolver's shape, but broken), or None (not
its shape: ask the next one). Resolvers are pure and cheap per message; anything
they need from AWS is learned once and passed in when they are built.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Protocol

from retryd.models import Attributes, DeadLetter, Job, MessageAttribute, Target, Unresolvable
from retryd.resolve.keys import MAX_KEY_CHARS, idempotency_key
from retryd.stamps import ATTEMPT as ATTEMPT_ATTRIBUTE
from retryd.stamps import FIRST_FAILED_AT as FIRST_FAILED_AT_ATTRIBUTE
from retryd.stamps import KEY as KEY_ATTRIBUTE
from retryd.stamps import PREFIX as STAMP_PREFIX

# Plain non-negative integers only: SQS Numbers may be written as 1e100 or 3.5,
# and neither is an attempt count (nor should a stamp cost a bignum to read).
_ATTEMPT_TEXT = re.compile(r"\d{1,18}")


class Resolver(Protocol):
    """Recognises one message shape and resolves it."""

    name: str

    def resolve(self, letter: DeadLetter) -> Job | Unresolvable | None:
        """A Job or an Unresolvable for a message of this shape; None for any other shape."""
        ...


def stamped_attempt(letter: DeadLetter) -> int | None:
    """`retryd.attempt` (a Number attribute) when present and well formed, else None."""
    attribute = letter.message_attributes.get(ATTEMPT_ATTRIBUTE)
    if attribute is None or not _is_number(attribute):
        return None
    text = (attribute.string_value or "").strip()
    if not _ATTEMPT_TEXT.fullmatch(text):
        return None
    return int(text)


def stamped_key(letter: DeadLetter) -> str | None:
    """`retryd.key` when it is a usable key; None when absent, empty or longer than any we write."""
    attribute = letter.message_attributes.get(KEY_ATTRIBUTE)
    if attribute is None or not attribute.data_type.startswith("String"):
        return None
    value = attribute.string_value
    if not value or len(value) > MAX_KEY_CHARS:
        return None
    return value


def stamped_first_failed_at(letter: DeadLetter) -> datetime | None:
    """`retryd.first-failed-at` as an aware datetime; None when absent or not ISO-8601."""
    value = letter.attribute_string(FIRST_FAILED_AT_ATTRIBUTE)
    if not value:
        return None
    return parse_timestamp(value)


def parse_timestamp(text: str) -> datetime | None:
    """An ISO-8601 timestamp; one without an offset is taken as UTC (how retryd writes them)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def forward_attributes(letter: DeadLetter) -> Attributes:
    """The message's own attributes, without retryd's stamps (those are re-stamped on send)."""
    kept: dict[str, MessageAttribute] = {
        name: attribute
        for name, attribute in letter.message_attributes.items()
        if not name.startswith(STAMP_PREFIX)
    }
    return MappingProxyType(kept)


def _is_number(attribute: MessageAttribute) -> bool:
    # SQS custom types extend the base type after a dot: "Number.int".
    return attribute.data_type == "Number" or attribute.data_type.startswith("Number.")


def body_as_is(letter: DeadLetter, target: Target, resolver: str) -> Job:
    """A Job that sends the message's own body and attributes to `target`.

    For shapes whose body is the original work (static routes, Lambda async DLQs,
    SQS redrive DLQs): identity, attempt and first failure come from retryd's
    stamps where the message carries them.
    """
    return Job(
        letter=letter,
        target=target,
        body=letter.body,
        key=idempotency_key(target.arn, letter.body, stamped_key(letter)),
        attempt=stamped_attempt(letter) or 0,
        resolver=resolver,
        first_failed_at=stamped_first_failed_at(letter) or letter.sent_at,
        forward_attributes=forward_attributes(letter),
    )
