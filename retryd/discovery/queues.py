"""Which DLQs retryd is responsible for: queues matched by name prefix (and tags), or listed.

Discovery runs at the start of every cycle, so it has to stay cheap on accounts
with thousands of queues: ListQueues is paged 1,000 at a time, tag look-ups are
made only for queues whose name already matched, and every ARN is derived from
the queue URL instead of one GetQueueAttributes call per queue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from botocore.exceptions import ClientError

from retryd.arns import is_account_id, is_queue_url, parse_queue_url, queue_name
from retryd.classify import is_missing_queue
from retryd.models import QueueRef, queue_ref_from_url
from retryd.settings import DiscoverySettings

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

log = structlog.get_logger("retryd.discovery")

# ListQueues returns at most 1,000 URLs per call, and only pages (NextToken) when
# MaxResults is sent: without it AWS silently stops at the first 1,000.
LIST_PAGE_SIZE = 1000
# ListQueueTags is one call per queue; this keeps a large account from opening
# hundreds of connections at once while still overlapping the round trips.
TAG_LOOKUP_CONCURRENCY = 16


async def _list_by_prefix(sqs: SQSClient, prefix: str) -> list[str]:
    urls: list[str] = []
    request: dict[str, Any] = {"QueueNamePrefix": prefix, "MaxResults": LIST_PAGE_SIZE}
    while True:
        page = await sqs.list_queues(**request)
        urls.extend(page.get("QueueUrls", []))
        token = page.get("NextToken")
        if not token:
            return urls
        request["NextToken"] = token


async def find_queue_url(sqs: SQSClient, entry: str) -> str | None:
    """The URL of the queue a name or URL names, through this client; None when it does not exist.

    ValueError when `entry` looks like a URL but is no queue URL; AWS errors other
    than a missing queue propagate.
    """
    request: dict[str, Any] = {"QueueName": queue_name(entry)}
    if is_queue_url(entry):
        # Asking by name plus owner both proves the queue exists and returns the URL
        # for the endpoint this client talks to.
        account = parse_queue_url(entry).account
        if is_account_id(account):
            request["QueueOwnerAWSAccountId"] = account
    try:
        response = await sqs.get_queue_url(**request)
    except ClientError as exc:
        if not is_missing_queue(exc):
            raise
        return None
    return str(response["QueueUrl"])


async def find_queue(sqs: SQSClient, entry: str) -> QueueRef | None:
    """The queue a name or URL names (see `find_queue_url`), or None when it does not exist."""
    url = await find_queue_url(sqs, entry)
    return None if url is None else queue_ref_from_url(url, sqs.meta.region_name)


async def _resolve_explicit(sqs: SQSClient, entry: str) -> str | None:
    """The queue's URL, or None (logged) when it does not exist."""
    url = await find_queue_url(sqs, entry)
    if url is None:
        log.warning("explicit-queue-missing", queue=entry)
    return url


def _tags_match(tags: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(tags.get(key) == value for key, value in wanted.items())


async def _filter_by_tags(
    sqs: SQSClient, urls: Sequence[str], wanted: Mapping[str, str]
) -> list[str]:
    """The URLs whose queues carry every wanted tag; the first failed look-up is raised as is."""
    limiter = anyio.CapacityLimiter(TAG_LOOKUP_CONCURRENCY)
    kept: set[str] = set()
    # Kept out of the task group's ExceptionGroup so callers see the AWS error itself.
    errors: list[Exception] = []

    async def check(url: str, scope: anyio.CancelScope) -> None:
        async with limiter:
            try:
                tags = (await sqs.list_queue_tags(QueueUrl=url)).get("Tags", {})
            except Exception as exc:  # noqa: BLE001 - kept and re-raised after the group
                if isinstance(exc, ClientError) and is_missing_queue(exc):
                    # Deleted since ListQueues: nothing left to drain.
                    log.debug("queue-vanished", url=url)
                    return
                errors.append(exc)
                scope.cancel()
                return
        if _tags_match(tags, wanted):
            kept.add(url)

    async with anyio.create_task_group() as group:
        for url in urls:
            group.start_soon(check, url, group.cancel_scope)
    if errors:
        raise errors[0]
    return [url for url in urls if url in kept]


async def discover_queues(
    sqs: SQSClient, settings: DiscoverySettings, parking_queue: str
) -> list[QueueRef]:
    """Every DLQ retryd should drain this cycle, sorted by name.

    A queue is found by one of `settings.queue_prefixes` (case-sensitive, as
    ListQueues is) and then kept only if it carries every `settings.queue_tags`
    pair; or it is named in `settings.queues` (a name or a URL). Explicitly
    listed queues are the operator's explicit word and are NOT tag-filtered; one
    that does not exist is logged and skipped. The parking queue (`parking_queue`,
    a name or URL, compared by name) is never returned, and no queue is returned
    twice. Explicit entries are resolved with GetQueueUrl through this client, so
    a URL must name a queue in the client's region. AWS errors other than a
    missing queue propagate: the caller decides that the cycle failed.
    """
    parking_name = queue_name(parking_queue)
    default_region: str | None = sqs.meta.region_name

    by_prefix: dict[str, str] = {}
    for prefix in settings.queue_prefixes:
        for url in await _list_by_prefix(sqs, prefix):
            name = parse_queue_url(url).name
            if name != parking_name:
                by_prefix.setdefault(url, name)
    matched = list(by_prefix)
    if settings.queue_tags:
        matched = await _filter_by_tags(sqs, matched, settings.queue_tags)

    explicit: list[str] = []
    for entry in settings.queues:
        if queue_name(entry) == parking_name:
            log.warning("parking-queue-listed", queue=entry)
            continue
        resolved = await _resolve_explicit(sqs, entry)
        if resolved is not None:
            explicit.append(resolved)

    # Keyed by ARN: the same queue reached by two prefixes, or by a prefix and the
    # explicit list, may come back with differently spelled URLs.
    found: dict[str, QueueRef] = {}
    for url in [*matched, *explicit]:
        ref = queue_ref_from_url(url, default_region)
        found.setdefault(ref.arn, ref)
    queues = sorted(found.values(), key=lambda ref: (ref.name, ref.arn))

    for ref in queues:
        log.debug("queue-discovered", queue=ref.name, arn=ref.arn)
    log.info(
        "queues-discovered",
        matched_by_prefix=len(by_prefix),
        removed_by_tags=len(by_prefix) - len(matched),
        explicit=len(explicit),
        total=len(queues),
    )
    return queues
