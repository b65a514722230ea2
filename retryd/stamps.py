"""The message attributes retryd adds to what it resubmits or parks, within SQS's 10-attribute cap.

Two rules shape everything here. A resubmitted message keeps every attribute
its producer set, so when the cap is reached retryd's own stamps give way. A
parked message must lose nothing at all, so originals that do not fit are packed
into one JSON attribute instead of being dropped.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping

from retryd.models import Attributes, DeadLetter, Job, MessageAttribute, SourceKind

PREFIX = "retryd."

ATTEMPT = "retryd.attempt"
KEY = "retryd.key"
FIRST_FAILED_AT = "retryd.first-failed-at"
SOURCE_QUEUE = "retryd.source-queue"
# `s3://bucket/key` of the S3 object a parked record was read from (S3 sources only).
SOURCE_OBJECT = "retryd.source-object"
# "2/3": which event of a replayed stream batch split to fit Lambda's 6 MB synchronous
# payload limit (retryd.targets.lambda_function; in the ClientContext only).
PART = "retryd.part"
# `name@version` of the transform that rewrote the payload (retryd.resolve.hooks).
TRANSFORM = "retryd.transform"

REASON = "retryd.reason"
DETAIL = "retryd.detail"
OVERFLOW = "retryd.overflow-attributes"

# "Each message can have up to 10 metadata attributes" - Amazon SQS Developer Guide,
# "Amazon SQS message attributes". SNS raw delivery to SQS inherits the same cap.
MAX_ATTRIBUTES = 10

# Kept first when slots run short: the attempt count is what the next failure's
# guards need most, the key is what lets a consumer deduplicate.
RESUBMIT_STAMP_PRIORITY = (ATTEMPT, KEY, FIRST_FAILED_AT, SOURCE_QUEUE)
PARKING_STAMPS = (REASON, DETAIL, SOURCE_QUEUE, ATTEMPT)

# Characters SQS accepts in a message body and in String attribute values (the
# W3C XML character set, as listed in the SendMessage API reference). Anything
# else makes the whole SendMessage fail, so free text retryd writes is cleaned.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def stamp_for_resubmit(job: Job) -> tuple[dict[str, MessageAttribute], int]:
    """The attributes to send with a resubmitted job, and how many retryd stamps did not fit.

    The user's attributes always go through; retryd's stamps take what is left
    of the 10 slots, in RESUBMIT_STAMP_PRIORITY order. Stale `retryd.*` names in
    the originals are replaced by this attempt's stamps, never forwarded; the one
    exception is `retryd.transform`, which only the hooks stage puts on a job (the
    resolvers strip every `retryd.*` name), and which comes last of the stamps.
    """
    attributes = {
        name: value for name, value in job.forward_attributes.items() if not name.startswith(PREFIX)
    }
    wanted = _resubmit_stamps(job)
    transform = job.forward_attributes.get(TRANSFORM)
    if transform is not None and transform.string_value:
        wanted[TRANSFORM] = transform
    free_slots = max(0, MAX_ATTRIBUTES - len(attributes))
    kept = list(wanted.items())[:free_slots]
    attributes.update(kept)
    return attributes, len(wanted) - len(kept)


def _resubmit_stamps(job: Job) -> dict[str, MessageAttribute]:
    stamps = {
        ATTEMPT: MessageAttribute.number(job.next_attempt),
        KEY: MessageAttribute.string(job.key),
    }
    if job.first_failed_at is not None:
        stamps[FIRST_FAILED_AT] = MessageAttribute.string(job.first_failed_at.isoformat())
    stamps[SOURCE_QUEUE] = MessageAttribute.string(job.letter.queue.name)
    # SQS and SNS both refuse a String attribute with an empty value.
    return {name: value for name, value in stamps.items() if value.string_value}


def source_attempts_note(source_attempts: int) -> str:
    """How a parked copy's detail names the source's own tries; "" when there were none."""
    if source_attempts <= 0:
        return ""
    return f"(the source tried {source_attempts} time(s) before its DLQ; not counted by retryd)"


def parking_detail(detail: str, source_attempts: int, max_bytes: int) -> str:
    """The detail, cleaned and cut to max_bytes, ending with the source's tries when known.

    The note is kept whole when the detail has to be cut: it is what tells a reader
    that the source's tries, however many, did not spend retryd's attempts.
    """
    note = source_attempts_note(source_attempts)
    if not note or len(note) + 1 > max_bytes // 2:
        return clean_text(detail, max_bytes)
    head = clean_text(detail, max_bytes - len(note) - 1)
    return f"{head} {note}" if head else note


def stamp_for_parking(
    letter: DeadLetter,
    reason: str,
    detail: str,
    attempt: int,
    detail_max_bytes: int,
    *,
    source_attempts: int = 0,
) -> dict[str, MessageAttribute]:
    """The original attributes plus why the message was parked, never more than 10 in all.

    When the originals and the parking stamps do not fit together, the stamps
    stay, as many originals as fit stay beside them, and the rest are packed
    into one `retryd.overflow-attributes` JSON attribute (see unpack_overflow).
    An empty detail is left off rather than sent as a value SQS would refuse.
    """
    stamps = {
        REASON: MessageAttribute.string(reason),
        DETAIL: MessageAttribute.string(parking_detail(detail, source_attempts, detail_max_bytes)),
        SOURCE_QUEUE: MessageAttribute.string(letter.queue.name),
        ATTEMPT: MessageAttribute.number(attempt),
    }
    if letter.queue.kind is SourceKind.S3:
        # The object is deleted once parked: the copy says where it was.
        bucket = letter.system_attributes.get("S3Bucket", "")
        stamps[SOURCE_OBJECT] = MessageAttribute.string(f"s3://{bucket}/{letter.message_id}")
    stamps = {name: value for name, value in stamps.items() if value.string_value}
    # An original under a stamp's name is an earlier verdict of retryd's: this one supersedes it.
    originals = {
        name: value for name, value in letter.message_attributes.items() if name not in stamps
    }
    if len(originals) + len(stamps) <= MAX_ATTRIBUTES:
        return {**originals, **stamps}
    direct_slots = MAX_ATTRIBUTES - len(stamps) - 1
    # An original that is itself an overflow attribute (a parked message parked again)
    # goes last, so it lands inside the new overflow instead of under its name.
    names = sorted(originals, key=lambda name: name == OVERFLOW)
    direct = {name: originals[name] for name in names[:direct_slots]}
    packed = {name: originals[name] for name in names[direct_slots:]}
    return {**direct, OVERFLOW: MessageAttribute.string(pack_overflow(packed)), **stamps}


def pack_overflow(attributes: Attributes) -> str:
    """Attributes as one JSON object; ASCII-only, so SQS accepts it whatever they hold."""
    return json.dumps(
        {name: value.to_json() for name, value in attributes.items()},
        ensure_ascii=True,
        separators=(",", ":"),
    )


def unpack_overflow(text: str) -> dict[str, MessageAttribute]:
    """The inverse of pack_overflow; ValueError when the text is not what it wrote."""
    raw = json.loads(text)
    if isinstance(raw, dict):
        return {str(name): _attribute_from_json(value) for name, value in raw.items()}
    raise ValueError("overflow attributes must be a JSON object")


def _attribute_from_json(raw: object) -> MessageAttribute:
    data_type = raw.get("DataType") if isinstance(raw, Mapping) else None
    if isinstance(raw, Mapping) and isinstance(data_type, str):
        binary = raw.get("BinaryValue")
        string = raw.get("StringValue")
        return MessageAttribute(
            data_type=data_type,
            string_value=string if isinstance(string, str) else None,
            binary_value=base64.b64decode(binary, validate=True)
            if isinstance(binary, str)
            else None,
        )
    raise ValueError(f"not a packed message attribute: {raw!r}")


def has_forbidden_chars(text: str) -> bool:
    """Whether SQS/SNS would refuse `text` as a body or String value (see _NOT_XML_CHAR)."""
    return _NOT_XML_CHAR.search(text) is not None


def clean_text(text: str, max_bytes: int) -> str:
    """Free text made safe for an SQS attribute and cut to max_bytes of UTF-8, whole characters."""
    cleaned = _NOT_XML_CHAR.sub("\ufffd", text)
    encoded = cleaned.encode("utf-8")
    if len(encoded) <= max_bytes:
        return cleaned
    # A cut inside a multi-byte character leaves an incomplete tail that "ignore" drops.
    return encoded[:max_bytes].decode("utf-8", "ignore")


def attributes_size_bytes(attributes: Attributes) -> int:
    """What attributes add to a message's size: SQS counts each name, data type and value."""
    return sum(len(name.encode()) + value.wire_size for name, value in attributes.items())


def message_size_bytes(body: str, attributes: Attributes) -> int:
    """A message's size as SQS and SNS measure it against their limits."""
    return len(body.encode("utf-8", "surrogatepass")) + attributes_size_bytes(attributes)
