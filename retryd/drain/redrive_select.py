"""What a redrive selects, and how a parked copy is seen as if it were still in its DLQ.

SQS cannot receive selectively, so a redrive receives and then decides: each
selector is a predicate over the message as received and as resolved. All of
them must agree (they combine with AND; a selector given several values, such
as two `--target` globs, matches any of them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError

from retryd import stamps
from retryd.arns import glob_matches, parse_glob
from retryd.errors import ExitCode, RetrydError
from retryd.models import DeadLetter, Job, QueueRef, Unresolvable
from retryd.resolve.failure_groups import error_signature, failure_group_id


class SelectorError(RetrydError, ValueError):
    """A selector that cannot be used (a bad glob, JMESPath expression, or time).

    Bad input, so exit 2, as for an invalid configuration.
    """

    exit_code = ExitCode.CONFIG


@dataclass(frozen=True, slots=True)
class Selector:
    """The combined selectors of one redrive; the empty selector selects everything."""

    reasons: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    since_s: float | None = None
    until_s: float | None = None
    message_ids: tuple[str, ...] = ()
    where: str | None = None
    _compiled: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for glob in self.targets:
            if glob != "*":
                try:
                    parse_glob(glob)
                except ValueError as exc:
                    raise SelectorError(f"--target: {exc}") from None
        if self.where is not None:
            try:
                object.__setattr__(self, "_compiled", jmespath.compile(self.where))
            except JMESPathError as exc:
                first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise SelectorError(
                    f"--where {self.where!r} is not a JMESPath expression: {first_line}"
                ) from None

    def to_json(self) -> dict[str, Any]:
        return {
            "reasons": list(self.reasons),
            "targets": list(self.targets),
            "groups": list(self.groups),
            "since_s": self.since_s,
            "until_s": self.until_s,
            "message_ids": list(self.message_ids),
            "where": self.where,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Selector:
        return cls(
            reasons=tuple(raw.get("reasons", ())),
            targets=tuple(raw.get("targets", ())),
            groups=tuple(raw.get("groups", ())),
            since_s=raw.get("since_s"),
            until_s=raw.get("until_s"),
            message_ids=tuple(raw.get("message_ids", ())),
            where=raw.get("where"),
        )

    def selects(self, received: DeadLetter, resolved: Job | Unresolvable) -> bool:
        """Whether the message (as received, and as resolved) is selected."""
        return (
            (not self.message_ids or received.message_id in self.message_ids)
            and (not self.reasons or received.attribute_string(stamps.REASON) in self.reasons)
            and (not self.targets or self._target_matches(resolved))
            and (not self.groups or group_of(received, resolved) in self.groups)
            and self._in_window(first_failed_s(received, resolved))
            and (self._compiled is None or self._where_holds(received.body))
        )

    def _target_matches(self, resolved: Job | Unresolvable) -> bool:
        if not isinstance(resolved, Job):
            return False
        return any(g == "*" or glob_matches(resolved.target.arn, g) for g in self.targets)

    def _in_window(self, first_s: float | None) -> bool:
        if self.since_s is None and self.until_s is None:
            return True
        if first_s is None:
            return False
        return (self.since_s is None or first_s >= self.since_s) and (
            self.until_s is None or first_s <= self.until_s
        )

    def _where_holds(self, body: str) -> bool:
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return False
        try:
            found = self._compiled.search(document)
        except (JMESPathError, TypeError, ValueError):
            # A type error on this message's shape (jmespath raises Python's own
            # TypeError comparing a string with a number) means it does not match,
            # not that the redrive stops.
            return False
        # JMESPath's own truth: false, null, "", [], {} are false.
        return found not in (None, False, "", [], {})


def group_of(received: DeadLetter, resolved: Job | Unresolvable) -> str:
    """The failure-group id `retryd inspect` shows for this message."""
    target = (
        resolved.target.arn if isinstance(resolved, Job) else f"unresolved: {resolved.reason.value}"
    )
    return failure_group_id(target, error_signature(received))


def first_failed_s(received: DeadLetter, resolved: Job | Unresolvable) -> float | None:
    """When the message first failed: as resolved, else when it reached its queue."""
    if isinstance(resolved, Job) and resolved.first_failed_at_s is not None:
        return resolved.first_failed_at_s
    return received.sent_at_s


def as_if_in_source(letter: DeadLetter, sources: Mapping[str, QueueRef]) -> DeadLetter:
    """A parked copy seen as if it were still in its `retryd.source-queue`.

    Same body, the original attributes (unpacked from the overflow attribute
    when parking had packed them), and the source queue as its queue, so the
    same routes, feed map and resolvers apply. The message id and receipt
    handle stay the parked copy's: they are what is deleted from parking.
    """
    source_name = letter.attribute_string(stamps.SOURCE_QUEUE)
    queue = sources.get(source_name or "")
    attributes = dict(letter.message_attributes)
    packed = attributes.pop(stamps.OVERFLOW, None)
    if packed is not None and packed.string_value:
        try:
            attributes.update(stamps.unpack_overflow(packed.string_value))
        except ValueError:
            # Not what parking wrote: leave the attributes as they are.
            attributes[stamps.OVERFLOW] = packed
    for name in (stamps.REASON, stamps.DETAIL):
        attributes.pop(name, None)
    return replace(
        letter,
        queue=queue if queue is not None else letter.queue,
        message_attributes=attributes,
    )


def source_names(letters: Sequence[DeadLetter]) -> set[str]:
    """The `retryd.source-queue` names among parked copies."""
    return {name for letter in letters if (name := letter.attribute_string(stamps.SOURCE_QUEUE))}
