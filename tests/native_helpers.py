"""Helpers for tests of AWS's own DLQ shapes: fixtures as DeadLetters, fixed feed maps, parking."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from retryd.discovery.feeds import Feed, FeedKind, FeedMap
from retryd.models import DeadLetter, MessageAttribute, QueueRef

FIXTURES = Path(__file__).parent / "fixtures" / "messages"
ACCOUNT = "123456789012"
REGION = "us-east-1"
PARKING = "retryd-parking"


def queue(name: str) -> QueueRef:
    return QueueRef(
        name=name,
        url=f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}",
        arn=f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}",
    )


DLQ = queue("retry-orders")


def fixture(name: str) -> dict[str, Any]:
    """tests/fixtures/messages/<name>.json as a dict."""
    loaded: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return loaded


def letter_from_wire(item: Mapping[str, Any], on: QueueRef = DLQ) -> DeadLetter:
    """A DeadLetter from one ReceiveMessage `Messages[]` item as JSON (binary values base64)."""
    attributes = {}
    for name, raw in item.get("MessageAttributes", {}).items():
        wire = dict(raw)
        if isinstance(wire.get("BinaryValue"), str):
            wire["BinaryValue"] = base64.b64decode(wire["BinaryValue"])
        attributes[name] = MessageAttribute.from_wire(wire)
    return DeadLetter(
        queue=on,
        message_id=item["MessageId"],
        receipt_handle=item["ReceiptHandle"],
        body=item["Body"],
        system_attributes=dict(item.get("Attributes", {})),
        message_attributes=attributes,
    )


def load_letter(name: str, on: QueueRef = DLQ) -> DeadLetter:
    return letter_from_wire(fixture(name), on)


def letter(
    body: str | Mapping[str, Any] | list[Any] = "{}",
    attributes: Mapping[str, MessageAttribute | str] | None = None,
    system: Mapping[str, str] | None = None,
    on: QueueRef = DLQ,
    *,
    message_id: str = "m-1",
    receipt_handle: str = "rh-1",
) -> DeadLetter:
    """A DeadLetter as received, for tests with no SQS: dict/list bodies become JSON, plain
    string attribute values String attributes; `system` is SQS's own attributes (none unless
    given). The one builder of a received message for the unit tests."""
    text = body if isinstance(body, str) else json.dumps(body)
    wired = {
        name: value if isinstance(value, MessageAttribute) else MessageAttribute.string(value)
        for name, value in (attributes or {}).items()
    }
    return DeadLetter(
        queue=on,
        message_id=message_id,
        receipt_handle=receipt_handle,
        body=text,
        system_attributes=dict(system or {}),
        message_attributes=wired,
    )


def with_attributes(base: DeadLetter, **changes: MessageAttribute | str | None) -> DeadLetter:
    """The letter with attributes set (a value) or removed (None)."""
    attributes = dict(base.message_attributes)
    for name, value in changes.items():
        if value is None:
            attributes.pop(name, None)
        else:
            attributes[name] = (
                value if isinstance(value, MessageAttribute) else MessageAttribute.string(value)
            )
    return DeadLetter(
        base.queue,
        base.message_id,
        base.receipt_handle,
        base.body,
        base.system_attributes,
        attributes,
    )


@dataclass
class FixedFeeds:
    """A FeedSource that always answers with one map."""

    current: FeedMap = field(default_factory=FeedMap)


def feed_map(
    feeds: Mapping[QueueRef, Sequence[tuple[FeedKind, str]]], errors: Sequence[str] = ()
) -> FixedFeeds:
    built = {
        dlq.arn: tuple(Feed(kind, arn) for kind, arn in entries) for dlq, entries in feeds.items()
    }
    return FixedFeeds(FeedMap(MappingProxyType(built), 0.0, tuple(errors)))


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


def queue_arn(name: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"


def parked_by_reason(messages: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Parked messages (as ReceiveMessage returns them) grouped by their retryd.reason."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for message in messages:
        reason = message["MessageAttributes"]["retryd.reason"]["StringValue"]
        grouped.setdefault(reason, []).append(dict(message))
    return grouped


def detail_of(message: Mapping[str, Any]) -> str:
    detail: str = message["MessageAttributes"]["retryd.detail"]["StringValue"]
    return detail
