"""How a dead letter failed: its error signature, and the failure group it belongs to.

Messages are grouped the way ServicePulse groups failed messages: by where they go
back to and by an error signature, the error each shape records with its numbers,
UUIDs and hex ids replaced by placeholders, so that a thousand timeouts of a thousand
orders are one group and not a thousand. `retryd inspect` shows the groups and their
ids; `retryd redrive --group` selects by them.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from retryd.models import DeadLetter, Job
from retryd.resolve.chain import ResolverChain
from retryd.resolve.stepfunctions_execution import EVENT_SOURCE as STATES_EVENT_SOURCE

NO_ERROR = "(no error recorded)"
# Longest signature kept: enough to tell errors apart, short enough for a table.
SIGNATURE_MAX_CHARS = 200

# Order matters: the longer shapes go first, so a UUID is not read as five numbers.
_PLACEHOLDERS = (
    (re.compile(r"\b[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\b"), "<uuid>"),
    (
        re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"),
        "<time>",
    ),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<hex>"),
    # Request ids, hashes, X-Ray trace parts: 8+ hex characters mixing digits and letters
    # (a run of letters alone may be a word: "deadbeef", "facade").
    (re.compile(r"\b(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
)


def normalise(message: str) -> str:
    """An error message with its variable parts (numbers, UUIDs, hex ids, times) as placeholders."""
    for pattern, placeholder in _PLACEHOLDERS:
        message = pattern.sub(placeholder, message)
    flat = " ".join(message.split())
    if len(flat) > SIGNATURE_MAX_CHARS:
        flat = flat[: SIGNATURE_MAX_CHARS - 3] + "..."
    return flat


def _signature(code: object, message: object) -> str | None:
    """`code: message` with the message normalised; None when neither is recorded.

    The code is kept as it is: it is already a category (`Timeout`, `NO_PERMISSIONS`, 500).
    """
    # bool is an int to Python, but `True` is no error code.
    is_code = isinstance(code, str | int) and not isinstance(code, bool)
    code_text = str(code).strip() if is_code else ""
    message_text = normalise(message) if isinstance(message, str) else ""
    if not code_text and not message_text:
        return None
    if code_text and message_text:
        return f"{code_text}: {message_text}"
    return code_text or message_text


def _from_body(body: Mapping[str, Any]) -> str | None:
    """The error a JSON body records: a retryd envelope's, a failed Step Functions
    execution's (its status-change event), or a Lambda destination record's."""
    envelope = body.get("envelope")
    if isinstance(envelope, str) and envelope.startswith("retryd/"):
        error = body.get("error")
        if isinstance(error, Mapping):
            return _signature(error.get("code"), error.get("message"))
        return None
    detail = body.get("detail")
    if body.get("source") == STATES_EVENT_SOURCE and isinstance(detail, Mapping):
        # `error` and `cause` as the failed state set them; a timeout or an abort has
        # neither, and its status says what happened.
        found = _signature(detail.get("error"), detail.get("cause"))
        status = detail.get("status")
        return found or (status if isinstance(status, str) and status else None)
    context = body.get("requestContext")
    if not isinstance(context, Mapping):
        return None
    response = body.get("responsePayload")
    if isinstance(response, Mapping):
        found = _signature(response.get("errorType"), response.get("errorMessage"))
        if found:
            return found
    condition = context.get("condition")
    return condition if isinstance(condition, str) and condition else None


def error_signature(letter: DeadLetter) -> str:
    """What went wrong with this message, as its shape recorded it, normalised for grouping.

    Shapes, first match wins: a retryd envelope's `error.code`/`error.message`; a
    Step Functions status-change event's `detail.error`/`detail.cause`, else its
    `detail.status`; a Lambda destination record's (a stream batch's pointer too)
    `responsePayload.errorType`/`errorMessage`, else its `requestContext.condition`;
    EventBridge's `ERROR_CODE`/`ERROR_MESSAGE` attributes; a Lambda async DLQ's
    `ErrorCode`/`ErrorMessage` attributes.
    """
    try:
        body = json.loads(letter.body)
    except (ValueError, RecursionError):
        # Not JSON, or nested deeper than the parser follows: no error recorded in it.
        body = None
    if isinstance(body, Mapping):
        found = _from_body(body)
        if found:
            return found
    for code, message in (("ERROR_CODE", "ERROR_MESSAGE"), ("ErrorCode", "ErrorMessage")):
        found = _signature(letter.attribute_string(code), letter.attribute_string(message))
        if found:
            return found
    return NO_ERROR


@dataclass
class FailureGroup:
    """Messages of one DLQ that go back to the same place and failed the same way."""

    target: str
    signature: str
    count: int
    oldest: datetime | None
    newest: datetime | None
    example_message_id: str
    # The most tries a source reported before the DLQ (Job.source_attempts); None if none did.
    source_attempts_max: int | None = None

    def add(self, letter: DeadLetter, source_attempts: int = 0) -> None:
        self.count += 1
        if source_attempts:
            self.source_attempts_max = max(self.source_attempts_max or 0, source_attempts)
        sent = letter.sent_at
        if sent is not None:
            self.oldest = sent if self.oldest is None else min(self.oldest, sent)
            self.newest = sent if self.newest is None else max(self.newest, sent)

    @property
    def id(self) -> str:
        """A short, stable id for `retryd redrive --group`."""
        return failure_group_id(self.target, self.signature)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "signature": self.signature,
            "count": self.count,
            "oldest": self.oldest.isoformat() if self.oldest else None,
            "newest": self.newest.isoformat() if self.newest else None,
            "example_message_id": self.example_message_id,
            "source_attempts_max": self.source_attempts_max,
        }


# Hex characters of a failure group's id: short to type, and a collision among one
# DLQ's few groups is vanishingly unlikely.
GROUP_ID_CHARS = 10


def failure_group_id(target: str, signature: str) -> str:
    """The id of the group of (target or `unresolved: reason`, error signature)."""
    return hashlib.sha256(f"{target}\n{signature}".encode("utf-8", "surrogatepass")).hexdigest()[
        :GROUP_ID_CHARS
    ]


def group_failures(chain: ResolverChain, letters: Sequence[DeadLetter]) -> list[FailureGroup]:
    """Letters grouped by (target ARN or `unresolved: reason`, error signature), largest first."""
    groups: dict[tuple[str, str], FailureGroup] = {}
    for letter in letters:
        resolved = chain.resolve(letter)
        target = (
            resolved.target.arn
            if isinstance(resolved, Job)
            else f"unresolved: {resolved.reason.value}"
        )
        key = (target, error_signature(letter))
        if key not in groups:
            groups[key] = FailureGroup(*key, 0, None, None, letter.message_id)
        groups[key].add(letter, resolved.source_attempts if isinstance(resolved, Job) else 0)
    return sorted(groups.values(), key=lambda g: (-g.count, g.target, g.signature))
