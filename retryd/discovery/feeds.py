"""What feeds each DLQ: the Lambda functions and SQS queues whose failures land in it.

Lambda async DLQ messages and SQS redrive messages do not say where they came
from (a redriven message does, but only on real AWS), so the resolvers for those
shapes look the answer up here. The map is built from a few paginated list
calls every `discovery.feeds_refresh_cycles` cycles and cached in between: no
message ever costs a look-up of its own.

AWS calls used (the IAM actions retryd needs for this map):
- lambda:ListFunctions - `DeadLetterConfig.TargetArn` of each function
  (API reference, FunctionConfiguration).
- lambda:ListFunctionEventInvokeConfigs - `DestinationConfig.OnFailure.Destination`
  of each function, version and alias (API reference, FunctionEventInvokeConfig).
- sqs:ListDeadLetterSourceQueues - the queues whose redrive policy names a DLQ.
- sns:ListSubscriptions and sns:GetSubscriptionAttributes - the subscriptions whose
  redrive policy names a DLQ (retryd.discovery.subscriptions).

A failed call never fails the map: it is recorded in `FeedMap.errors` and the
map holds what the other calls learned.

In the drain cycle the redrive sources are learned lazily (`FeedCache(lazy_redrive=True)`):
a DLQ's sources are only read by the resolvers of its messages, and most DLQs are
empty most of the time, so each DLQ's ListDeadLetterSourceQueues is made the first
time it has messages after each rebuild (`FeedCache.learn`), not for every DLQ up front.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Protocol

import anyio
import structlog
from botocore.exceptions import ClientError

from retryd.admission.allowlist import lambda_may_be_target, subscriber_may_be_target
from retryd.aws import AwsClients, Client
from retryd.classify import from_exception, is_missing_queue
from retryd.discovery.subscriptions import Subscription, read_subscriptions
from retryd.models import ErrorClass, QueueRef, queue_ref_from_url
from retryd.settings import Settings

log = structlog.get_logger("retryd.feeds")

# ListFunctions and ListFunctionEventInvokeConfigs return at most 50 items a page
# (Lambda API reference, MaxItems).
LAMBDA_PAGE_SIZE = 50
# ListDeadLetterSourceQueues takes MaxResults 1-1,000 and only pages when it is sent.
SQS_PAGE_SIZE = 1000
# One ListFunctionEventInvokeConfigs per function and one ListDeadLetterSourceQueues
# per DLQ: overlapped for speed, bounded so a large account does not become a burst.
LOOKUP_CONCURRENCY = 8
# How many function names an error line quotes before it just counts them.
_NAMED_IN_ERROR = 3


class FeedKind(StrEnum):
    """How a resource sends its failures to a DLQ."""

    # A function's DeadLetterConfig: Lambda sends the event as it was, with RequestID,
    # ErrorCode and ErrorMessage attributes.
    LAMBDA_DLQ = "lambda-dlq"
    # A function's (or version's, or alias's) asynchronous on-failure destination.
    LAMBDA_ON_FAILURE = "lambda-on-failure"
    # A queue whose redrive policy moves messages here after maxReceiveCount receives.
    SQS_REDRIVE = "sqs-redrive"
    # An SNS subscription's redrive policy: SNS moves here what it could not deliver.
    SNS_SUBSCRIPTION = "sns-subscription"


@dataclass(frozen=True, slots=True)
class Feed:
    """One resource feeding a DLQ: a function ARN (qualified when the config is), a queue ARN,
    or a subscription ARN (then `subscription` says who the subscriber is)."""

    kind: FeedKind
    source_arn: str
    subscription: Subscription | None = None


def _frozen_feeds() -> Mapping[str, tuple[Feed, ...]]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class FeedMap:
    """DLQ queue ARN -> what feeds it, as learned at `built_at_s` (unix seconds)."""

    feeds: Mapping[str, tuple[Feed, ...]] = field(default_factory=_frozen_feeds)
    built_at_s: float = 0.0
    # What could not be learned (e.g. AccessDenied on ListFunctions): a missing feed
    # may be missing because of one of these.
    errors: tuple[str, ...] = ()
    # A transient error (throttling, 5xx, a dropped connection) left the map incomplete:
    # a message no resolver recognises may only be unrecognised for now, and is left in
    # its DLQ rather than parked (retryd.resolve.chain).
    unsure: bool = False
    # (S3 bucket ARN, function ARN) of each on-failure destination that is a bucket:
    # S3 sources ([discovery] s3_from_destinations), not DLQs any queue ARN names.
    s3_destinations: tuple[tuple[str, str], ...] = ()

    def feeding(self, queue_arn: str) -> tuple[Feed, ...]:
        """Everything known to feed this DLQ, in a stable order; () when nothing is."""
        return self.feeds.get(queue_arn, ())

    def of_kind(self, queue_arn: str, *kinds: FeedKind) -> tuple[Feed, ...]:
        """The feeds of this DLQ whose kind is one of `kinds`."""
        return tuple(feed for feed in self.feeding(queue_arn) if feed.kind in kinds)


class FeedSource(Protocol):
    """Where resolvers read the feed map: a FeedCache in the daemon, a fixed map in tests."""

    @property
    def current(self) -> FeedMap: ...


@dataclass
class _Collected:
    """What the look-ups of one build found, filled in by concurrent tasks."""

    wanted: frozenset[str]
    feeds: dict[str, set[Feed]] = field(default_factory=lambda: defaultdict(set))
    # (operation, error code) -> names of the resources the call failed for.
    failures: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))
    messages: dict[tuple[str, str], str] = field(default_factory=dict)
    transient: bool = False
    s3_destinations: set[tuple[str, str]] = field(default_factory=set)

    def add(self, queue_arn: str, feed: Feed) -> None:
        if queue_arn in self.wanted:
            self.feeds[queue_arn].add(feed)

    def fail(self, operation: str, resource: str, exc: Exception) -> None:
        error = from_exception(exc)
        self.transient = self.transient or error.error_class is ErrorClass.TRANSIENT
        self.failures[(operation, error.code)].append(resource)
        self.messages.setdefault((operation, error.code), error.message)

    def errors(self) -> tuple[str, ...]:
        lines = []
        for (operation, code), resources in sorted(self.failures.items()):
            named = ", ".join(sorted(resources)[:_NAMED_IN_ERROR])
            more = len(resources) - _NAMED_IN_ERROR
            where = f"{named} and {more} more" if more > 0 else named
            message = self.messages.get((operation, code)) or ""
            line = f"{operation}: {code}" + (f" ({message})" if message else "")
            lines.append(f"{line} for {where}" if where else line)
        return tuple(lines)

    def to_map(self) -> FeedMap:
        ordered = {
            queue: tuple(sorted(feeds, key=lambda feed: (feed.kind.value, feed.source_arn)))
            for queue, feeds in sorted(self.feeds.items())
        }
        return FeedMap(
            MappingProxyType(ordered),
            time.time(),
            self.errors(),
            self.transient,
            tuple(sorted(self.s3_destinations)),
        )


async def map_feeds(
    clients: AwsClients,
    queues: Sequence[QueueRef],
    *,
    lambda_feeds: bool = True,
    sns_feeds: bool = False,
    redrive_feeds: bool = True,
) -> FeedMap:
    """Which functions, queues and subscriptions feed each of `queues`; never raises for AWS.

    Lambda's list calls are made only with `lambda_feeds`: when no Lambda can be a
    target, a Lambda's failures can only be parked, and the IAM policy
    (retryd.iam.policy) grants no Lambda reads. SNS subscriptions are read
    only with `sns_feeds`, for the same reason (no queue or function can be a target).
    Without `redrive_feeds` no queue's redrive sources are looked up (a lazy cache
    learns them per queue).
    """
    collected = _Collected(frozenset(queue.arn for queue in queues))
    limiter = anyio.CapacityLimiter(LOOKUP_CONCURRENCY)
    async with anyio.create_task_group() as group:
        if lambda_feeds:
            group.start_soon(_map_lambda_feeds, clients.lambda_, collected, limiter)
        if sns_feeds:
            group.start_soon(_map_subscriptions, clients.sns, collected, limiter)
        if redrive_feeds:
            for queue in queues:
                group.start_soon(_map_redrive_sources, clients.sqs, queue, collected, limiter)
    return collected.to_map()


async def _map_lambda_feeds(
    client: Client, collected: _Collected, limiter: anyio.CapacityLimiter
) -> None:
    try:
        functions = await _list_functions(client)
    except Exception as exc:  # noqa: BLE001 - recorded in the map's errors, the map goes on
        collected.fail("ListFunctions", "", exc)
        return
    async with anyio.create_task_group() as group:
        for function in functions:
            arn = function.get("FunctionArn")
            if not isinstance(arn, str):
                continue
            target = (function.get("DeadLetterConfig") or {}).get("TargetArn")
            if isinstance(target, str):
                collected.add(target, Feed(FeedKind.LAMBDA_DLQ, arn))
            group.start_soon(_map_on_failure, client, arn, collected, limiter)


async def _list_functions(client: Client) -> list[dict[str, Any]]:
    functions: list[dict[str, Any]] = []
    request: dict[str, Any] = {"MaxItems": LAMBDA_PAGE_SIZE}
    while True:
        page = await client.list_functions(**request)
        functions.extend(page.get("Functions", []))
        marker = page.get("NextMarker")
        if not marker:
            return functions
        request["Marker"] = marker


async def _map_on_failure(
    client: Client, function_arn: str, collected: _Collected, limiter: anyio.CapacityLimiter
) -> None:
    request: dict[str, Any] = {"FunctionName": function_arn, "MaxItems": LAMBDA_PAGE_SIZE}
    async with limiter:
        try:
            while True:
                page = await client.list_function_event_invoke_configs(**request)
                for config in page.get("FunctionEventInvokeConfigs", []):
                    _add_on_failure(config, function_arn, collected)
                marker = page.get("NextMarker")
                if not marker:
                    return
                request["Marker"] = marker
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                # Deleted since ListFunctions: it feeds nothing any more.
                return
            collected.fail("ListFunctionEventInvokeConfigs", function_arn, exc)
        except Exception as exc:  # noqa: BLE001 - recorded in the map's errors, the map goes on
            collected.fail("ListFunctionEventInvokeConfigs", function_arn, exc)


def _add_on_failure(config: Mapping[str, Any], function_arn: str, collected: _Collected) -> None:
    on_failure = (config.get("DestinationConfig") or {}).get("OnFailure") or {}
    destination = on_failure.get("Destination")
    if not isinstance(destination, str):
        return
    # The config's own ARN carries the version or alias it belongs to: resubmitting
    # to that qualifier runs the code (and config) that failed.
    source = config.get("FunctionArn")
    if ":s3:::" in destination:
        # A bucket (Lambda's S3 destination, on failure only): a source, not a queue's feed.
        collected.s3_destinations.add((destination, function_arn))
        return
    collected.add(
        destination,
        Feed(FeedKind.LAMBDA_ON_FAILURE, source if isinstance(source, str) else function_arn),
    )


async def _map_subscriptions(
    client: Client, collected: _Collected, limiter: anyio.CapacityLimiter
) -> None:
    for subscription in await read_subscriptions(client, collected.wanted, limiter, collected.fail):
        collected.add(
            subscription.dlq_arn,
            Feed(FeedKind.SNS_SUBSCRIPTION, subscription.arn, subscription),
        )


async def _map_redrive_sources(
    client: Client, queue: QueueRef, collected: _Collected, limiter: anyio.CapacityLimiter
) -> None:
    region: str | None = client.meta.region_name
    request: dict[str, Any] = {"QueueUrl": queue.url, "MaxResults": SQS_PAGE_SIZE}
    async with limiter:
        try:
            while True:
                page = await client.list_dead_letter_source_queues(**request)
                for url in page.get("queueUrls", []):
                    source = queue_ref_from_url(url, region)
                    collected.add(queue.arn, Feed(FeedKind.SQS_REDRIVE, source.arn))
                token = page.get("NextToken")
                if not token:
                    return
                request["NextToken"] = token
        except ClientError as exc:
            if is_missing_queue(exc):
                # Deleted since discovery: there is nothing left to drain from it.
                return
            collected.fail("ListDeadLetterSourceQueues", queue.name, exc)
        except Exception as exc:  # noqa: BLE001 - recorded in the map's errors, the map goes on
            collected.fail("ListDeadLetterSourceQueues", queue.name, exc)


class FeedCache:
    """The feed map, rebuilt every `refresh_cycles` cycles or when a new DLQ appears.

    With `min_age_s`, a rebuild that is due by count also waits until the map is that old:
    busy cycles follow each other at once (`schedule.busy_interval_s`), and ten of them
    can pass in seconds, while the list calls behind a rebuild are paginated and throttled
    per account.
    """

    def __init__(
        self,
        refresh_cycles: int,
        *,
        lambda_feeds: bool = True,
        sns_feeds: bool = False,
        lazy_redrive: bool = False,
        min_age_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if refresh_cycles < 1:
            raise ValueError("refresh_cycles must be at least 1")
        self._refresh_cycles = refresh_cycles
        self._min_age_s = min_age_s
        self._clock = clock
        self._built_at_s = 0.0
        self._lambda_feeds = lambda_feeds
        self._sns_feeds = sns_feeds
        self._lazy_redrive = lazy_redrive
        self._current = FeedMap()
        self._calls = 0
        self._seen: frozenset[str] = frozenset()
        self._built = False
        # Lazy mode: the DLQs whose redrive sources were looked up since the last rebuild.
        self._learned: set[str] = set()

    @classmethod
    def for_settings(cls, settings: Settings, *, lazy_redrive: bool = False) -> FeedCache:
        """The cache a cycle (and `plan`) uses: Lambda is read only when it may be a target,
        SNS subscriptions only when their subscriber (a queue or a function) may be one,
        which is also when `retryd iam-policy` grants those reads."""
        return cls(
            settings.discovery.feeds_refresh_cycles,
            lambda_feeds=lambda_may_be_target(settings.guards),
            sns_feeds=subscriber_may_be_target(settings.guards),
            lazy_redrive=lazy_redrive,
            # As old as `refresh_cycles` cycles with a rest after each would make it.
            min_age_s=settings.discovery.feeds_refresh_cycles * settings.schedule.interval_s,
        )

    @property
    def current(self) -> FeedMap:
        """The latest map; empty before the first refresh."""
        return self._current

    async def refresh_if_due(self, clients: AwsClients, queues: Sequence[QueueRef]) -> FeedMap:
        """The map for this cycle, rebuilt first when it is due.

        Due on the first call, every `refresh_cycles` calls after the last build (once it
        is `min_age_s` old), and whenever a queue appears that the map has not seen. A
        rebuild that hit AWS errors does not replace a good map: the previous feeds are kept
        (plus the new feeds of queues the previous map knew none for), with the new errors,
        until a rebuild succeeds.
        """
        self._calls += 1
        arns = frozenset(queue.arn for queue in queues)
        fresh = (
            self._calls < self._refresh_cycles or self._clock() - self._built_at_s < self._min_age_s
        )
        if self._built and fresh and arns <= self._seen:
            return self._current
        try:
            built = await map_feeds(
                clients,
                queues,
                lambda_feeds=self._lambda_feeds,
                sns_feeds=self._sns_feeds,
                redrive_feeds=not self._lazy_redrive,
            )
        except Exception as exc:  # noqa: BLE001 - a stale map beats no map
            # map_feeds records AWS errors itself; this is a bug, and must not stop draining.
            log.warning("feed-map-refresh-failed", error=str(from_exception(exc)))
            return self._current
        self._calls = 0
        self._built_at_s = self._clock()
        self._seen = arns
        if self._lazy_redrive:
            # The redrive sources learned so far stay until each DLQ's next look-up.
            built = _with_redrive_of(built, self._current, arns)
            self._learned.clear()
        if built.errors and self._built:
            for error in built.errors:
                log.warning("feed-map-incomplete-kept-previous", error=error)
            built = _keep_previous(self._current, built)
        else:
            for error in built.errors:
                log.warning("feed-map-incomplete", error=error)
        self._current = built
        self._built = True
        log.debug(
            "feed-map-built",
            queues=len(arns),
            feeds={
                queue: [f"{feed.kind.value}:{feed.source_arn}" for feed in feeds]
                for queue, feeds in built.feeds.items()
            },
            errors=list(built.errors),
        )
        return built

    async def learn(self, clients: AwsClients, queue: QueueRef) -> FeedMap:
        """In lazy mode, look up `queue`'s redrive sources once per rebuild; call before
        resolving its messages. A failed look-up keeps what was known and is not retried
        before the next rebuild, as in an eager build."""
        if not self._lazy_redrive or queue.arn in self._learned:
            return self._current
        self._learned.add(queue.arn)
        collected = _Collected(frozenset({queue.arn}))
        await _map_redrive_sources(
            clients.sqs, queue, collected, anyio.CapacityLimiter(LOOKUP_CONCURRENCY)
        )
        learned = collected.to_map()
        for error in learned.errors:
            log.warning("feed-map-incomplete", error=error)
        # No await from here on: concurrent look-ups of other DLQs each merge whole.
        current = self._current
        feeds = dict(current.feeds)
        if not learned.errors:
            kept = tuple(
                feed for feed in feeds.get(queue.arn, ()) if feed.kind is not FeedKind.SQS_REDRIVE
            )
            merged = tuple(
                sorted(
                    (*kept, *learned.feeding(queue.arn)),
                    key=lambda feed: (feed.kind.value, feed.source_arn),
                )
            )
            if merged:
                feeds[queue.arn] = merged
            else:
                feeds.pop(queue.arn, None)
        errors = tuple(dict.fromkeys((*current.errors, *learned.errors)))
        self._current = FeedMap(
            MappingProxyType(dict(sorted(feeds.items()))),
            current.built_at_s,
            errors,
            current.unsure or learned.unsure,
            current.s3_destinations,
        )
        return self._current


def _with_redrive_of(built: FeedMap, previous: FeedMap, queues: frozenset[str]) -> FeedMap:
    """`built` (no redrive look-ups) plus the redrive feeds `previous` knew for `queues`."""
    merged = {queue: list(feeds) for queue, feeds in built.feeds.items()}
    for queue, feeds in previous.feeds.items():
        redrive = [feed for feed in feeds if feed.kind is FeedKind.SQS_REDRIVE]
        if queue in queues and redrive:
            merged.setdefault(queue, []).extend(redrive)
    ordered = {
        queue: tuple(sorted(feeds, key=lambda feed: (feed.kind.value, feed.source_arn)))
        for queue, feeds in sorted(merged.items())
    }
    return FeedMap(
        MappingProxyType(ordered),
        built.built_at_s,
        built.errors,
        built.unsure,
        built.s3_destinations,
    )


def _keep_previous(previous: FeedMap, partial: FeedMap) -> FeedMap:
    """The previous feeds, plus the partial map's feeds of queues the previous map knew none for."""
    merged = dict(previous.feeds)
    for queue, feeds in partial.feeds.items():
        merged.setdefault(queue, feeds)
    return FeedMap(
        MappingProxyType(dict(sorted(merged.items()))),
        previous.built_at_s,
        partial.errors,
        # The feeds of queues the previous map knew none for may be the ones missing.
        partial.unsure,
        tuple(sorted({*previous.s3_destinations, *partial.s3_destinations})),
    )
