"""Failure records kept as S3 objects: the only module that lists, reads, deletes and tags them.

Lambda's S3 on-failure destination writes one JSON invocation record per object,
under `aws/lambda/async/<function-name>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<uuid>`
(Lambda developer guide, "Capturing records of Lambda asynchronous invocations",
the destinations table), the same record an SQS destination receives. A bucket
prefix holding such objects is a DLQ to retryd (`QueueRef` of kind S3), and an
object read from it is a `DeadLetter` whose message id is the object's key.

S3 has no visibility timeout and no receipt handle: what keeps two replicas from
both sending one object is a ledger claim per object (drain/buckets.py), and
what an SQS delete does after a safe copy is a delete here, or a tag when the
objects are to be kept (`[s3] settle = "tag"`). Nothing here raises for what S3
answers to a delete or a tag: the failures come back as values, as leases.py's do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from retryd import classify
from retryd.leases import LeaseFailure
from retryd.models import DeadLetter, QueueRef, SourceKind

# How an S3 source's URL begins (`s3://bucket/prefix`); its name is the rest.
S3_URL_SCHEME = "s3://"
# Where Lambda's S3 destination writes a function's records (then `<function-name>/`).
LAMBDA_ASYNC_PREFIX = "aws/lambda/async/"
# ListObjectsV2 returns at most 1000 keys a page; DeleteObjects takes at most 1000 keys.
LIST_PAGE_MAX = 1000
DELETE_BATCH_MAX = 1000
# The system attributes an object's letter carries (beside SQS's own names, which the
# guards read: SentTimestamp is the object's LastModified).
BUCKET_ATTRIBUTE = "S3Bucket"
KEY_ATTRIBUTE = "S3Key"
SIZE_ATTRIBUTE = "S3Size"
# An object larger than this is not read: an invocation record is at most Lambda's
# 1 MB asynchronous payload plus its response; the letter's body says why instead.
MAX_OBJECT_BYTES = 4 * 1024 * 1024
# The tag an object settled in "tag" mode carries; its value is the outcome.
SETTLED_TAG = "retryd-settled"

Client = Any


def source_ref(bucket: str, prefix: str) -> QueueRef:
    """The DLQ that is `prefix` in `bucket` (the prefix may be empty: the whole bucket)."""
    return QueueRef(
        name=f"{bucket}/{prefix}",
        url=f"{S3_URL_SCHEME}{bucket}/{prefix}",
        # The prefix's own ARN, so two prefixes of one bucket are two DLQs everywhere a
        # DLQ is told apart by ARN (the console's read model, a worker process's share).
        arn=f"arn:aws:s3:::{bucket}/{prefix}",
        kind=SourceKind.S3,
    )


def bucket_and_prefix(source: QueueRef) -> tuple[str, str]:
    """The bucket and prefix an S3 source names."""
    bucket, _, prefix = source.url.removeprefix(S3_URL_SCHEME).partition("/")
    return bucket, prefix


def object_url(letter: DeadLetter) -> str:
    """`s3://bucket/key` of the object a letter was read from."""
    bucket, _ = bucket_and_prefix(letter.queue)
    return f"{S3_URL_SCHEME}{bucket}/{letter.message_id}"


@dataclass(frozen=True, slots=True)
class Listed:
    """One object as a listing showed it."""

    key: str
    last_modified_s: float
    size: int


async def list_page(
    s3: Client, source: QueueRef, *, start_after: str, max_keys: int = LIST_PAGE_MAX
) -> tuple[list[Listed], bool]:
    """One ListObjectsV2 page of the source's keys after `start_after` (in key order), and
    whether more follow. AWS errors propagate."""
    bucket, prefix = bucket_and_prefix(source)
    request: dict[str, Any] = {
        "Bucket": bucket,
        "Prefix": prefix,
        "MaxKeys": min(max_keys, LIST_PAGE_MAX),
    }
    if start_after:
        request["StartAfter"] = start_after
    page = await s3.list_objects_v2(**request)
    listed = [
        Listed(str(item["Key"]), _seconds(item.get("LastModified")), int(item.get("Size", 0)))
        for item in page.get("Contents", [])
    ]
    return listed, bool(page.get("IsTruncated"))


def _seconds(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else 0.0


async def read(s3: Client, source: QueueRef, listed: Listed) -> DeadLetter | None:
    """The object as a letter; None when it is gone (settled by someone else). Other AWS
    errors propagate: the object stays where it is."""
    bucket, _ = bucket_and_prefix(source)
    attributes = {
        "SentTimestamp": str(int(listed.last_modified_s * 1000)),
        "ApproximateReceiveCount": "1",
        BUCKET_ATTRIBUTE: bucket,
        KEY_ATTRIBUTE: listed.key,
        SIZE_ATTRIBUTE: str(listed.size),
    }
    if listed.size > MAX_OBJECT_BYTES:
        # Not JSON, so the resolvers park it with the reason below in its body.
        body = f"object of {listed.size} bytes is larger than retryd reads ({MAX_OBJECT_BYTES})"
        return DeadLetter(source, listed.key, listed.key, body, attributes)
    try:
        response = await s3.get_object(Bucket=bucket, Key=listed.key)
    except Exception as exc:
        if _code(exc) in {"NoSuchKey", "404"}:
            return None
        raise
    async with response["Body"] as stream:
        raw: bytes = await stream.read()
    # Bytes that are not UTF-8 are kept visible, not dropped: such a record is parked.
    return DeadLetter(source, listed.key, listed.key, raw.decode("utf-8", "replace"), attributes)


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


async def delete(s3: Client, source: QueueRef, keys: Sequence[str]) -> list[LeaseFailure]:
    """Delete the objects (their copies are safe); those S3 did not delete."""
    bucket, _ = bucket_and_prefix(source)
    failures: list[LeaseFailure] = []
    for start in range(0, len(keys), DELETE_BATCH_MAX):
        chunk = keys[start : start + DELETE_BATCH_MAX]
        try:
            response = await s3.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True}
            )
        except Exception as exc:  # noqa: BLE001 - an object not deleted is read again later
            error = str(classify.from_exception(exc))
            failures.extend(LeaseFailure(key, error, True) for key in chunk)
            continue
        failures.extend(
            LeaseFailure(str(e.get("Key", "")), f"{e.get('Code', '')}: {e.get('Message', '')}")
            for e in response.get("Errors", [])
        )
    return failures


async def tag(
    s3: Client, source: QueueRef, keys: Sequence[str], outcome: str
) -> list[LeaseFailure]:
    """Tag the objects settled (kept in the bucket); those S3 did not tag."""
    bucket, _ = bucket_and_prefix(source)
    failures: list[LeaseFailure] = []
    for key in keys:
        try:
            await s3.put_object_tagging(
                Bucket=bucket,
                Key=key,
                Tagging={"TagSet": [{"Key": SETTLED_TAG, "Value": outcome}]},
            )
        except Exception as exc:  # noqa: BLE001 - an object not tagged is looked at again later
            failures.append(LeaseFailure(key, str(classify.from_exception(exc))))
    return failures
