"""The feed map: which functions and queues send their failures to each DLQ, learned in bulk."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, cast

import anyio
import pytest
from botocore.exceptions import ClientError
from structlog.testing import capture_logs

from retryd.aws import AwsClients, open_clients
from retryd.discovery.feeds import Feed, FeedCache, FeedKind, FeedMap, map_feeds
from retryd.models import QueueRef, queue_ref_from_url
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.native_helpers import function_arn, queue, queue_arn
from tests.world import REGION, World

# -- against moto ---------------------------------------------------------------------------


def refs(world: World, *names: str) -> list[QueueRef]:
    return [queue_ref_from_url(world.queue_url(name), REGION) for name in names]


def build(make_settings: SettingsFactory, queues: Sequence[QueueRef]) -> FeedMap:
    async def run() -> FeedMap:
        async with open_clients(make_settings().aws) as clients:
            return await map_feeds(clients, queues)

    result: FeedMap = anyio.run(run)
    return result


def redrive_into(world: World, source: str, dlq: str) -> None:
    policy = f'{{"deadLetterTargetArn": "{world.queue_arn(dlq)}", "maxReceiveCount": "3"}}'
    world.create_queue(source, RedrivePolicy=policy)


def on_failure(world: World, function: str, destination: str) -> None:
    world.client("lambda").put_function_event_invoke_config(
        FunctionName=function, DestinationConfig={"OnFailure": {"Destination": destination}}
    )


def test_redrive_sources_are_mapped_to_their_dlqs(
    world: World, make_settings: SettingsFactory
) -> None:
    """ListDeadLetterSourceQueues: every queue whose redrive policy names a DLQ feeds it."""
    for dlq in ("retry-orders", "retry-solo", "retry-empty"):
        world.create_queue(dlq)
    redrive_into(world, "orders-a", "retry-orders")
    redrive_into(world, "orders-b", "retry-orders")
    redrive_into(world, "solo", "retry-solo")

    feeds = build(make_settings, refs(world, "retry-orders", "retry-solo", "retry-empty"))

    assert feeds.feeding(world.queue_arn("retry-orders")) == (
        Feed(FeedKind.SQS_REDRIVE, world.queue_arn("orders-a")),
        Feed(FeedKind.SQS_REDRIVE, world.queue_arn("orders-b")),
    )
    assert feeds.feeding(world.queue_arn("retry-solo")) == (
        Feed(FeedKind.SQS_REDRIVE, world.queue_arn("solo")),
    )
    assert feeds.feeding(world.queue_arn("retry-empty")) == ()
    assert feeds.errors == ()


def test_on_failure_destinations_map_their_functions(
    world: World, make_settings: SettingsFactory
) -> None:
    """ListFunctionEventInvokeConfigs: a function whose on-failure destination is a DLQ feeds it."""
    world.create_queue("retry-resize")
    world.create_queue("not-watched")
    resize = world.create_function("resize")
    world.create_function("elsewhere")
    world.create_function("plain")
    on_failure(world, "resize", world.queue_arn("retry-resize"))
    on_failure(world, "elsewhere", world.queue_arn("not-watched"))

    feeds = build(make_settings, refs(world, "retry-resize"))

    assert feeds.feeding(world.queue_arn("retry-resize")) == (
        Feed(FeedKind.LAMBDA_ON_FAILURE, resize),
    )
    # Only the queues asked about are in the map.
    assert set(feeds.feeds) == {world.queue_arn("retry-resize")}


def test_a_list_functions_error_is_recorded_and_the_rest_is_mapped(
    world: World, make_settings: SettingsFactory
) -> None:
    """AccessDenied on ListFunctions is in `errors`; redrive sources are still learned."""
    world.create_queue("retry-orders")
    redrive_into(world, "orders", "retry-orders")
    world.faults.add(
        Fault(
            service="lambda",
            operation="GET",
            code="AccessDeniedException",
            status=403,
            contains="/2015-03-31/functions\n",
            message="not allowed to list functions",
        )
    )

    feeds = build(make_settings, refs(world, "retry-orders"))

    assert feeds.errors == ("ListFunctions: AccessDeniedException (not allowed to list functions)",)
    assert feeds.feeding(world.queue_arn("retry-orders")) == (
        Feed(FeedKind.SQS_REDRIVE, world.queue_arn("orders")),
    )


def test_a_redrive_lookup_error_names_the_queue(
    world: World, make_settings: SettingsFactory
) -> None:
    """A failed ListDeadLetterSourceQueues is recorded against its DLQ; other DLQs still map."""
    for dlq in ("retry-bad", "retry-good"):
        world.create_queue(dlq)
    redrive_into(world, "good", "retry-good")
    world.faults.add(
        Fault(
            service="sqs",
            operation="ListDeadLetterSourceQueues",
            code="AccessDenied",
            contains="retry-bad",
        )
    )

    feeds = build(make_settings, refs(world, "retry-bad", "retry-good"))

    assert len(feeds.errors) == 1
    assert feeds.errors[0].startswith("ListDeadLetterSourceQueues: AccessDenied")
    assert feeds.errors[0].endswith("for retry-bad")
    assert feeds.feeding(world.queue_arn("retry-good")) != ()


# -- on AWS's documented response shapes (what moto does not do) ------------------------------

DLQ = queue("retry-orders")
OTHER = queue("retry-other")


def client_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, operation)


class FakeLambda:
    """ListFunctions / ListFunctionEventInvokeConfigs answering in the API reference's shape.

    Real AWS returns DeadLetterConfig and pages with NextMarker; moto does neither.
    Pages are keyed by the Marker that asks for them (None for the first page).
    """

    def __init__(
        self,
        function_pages: Mapping[str | None, dict[str, Any]],
        config_pages: Mapping[str, Mapping[str | None, dict[str, Any]] | ClientError],
        list_error: ClientError | None = None,
    ) -> None:
        self.function_pages = function_pages
        self.config_pages = config_pages
        self.list_error = list_error
        self.requests: list[tuple[str, dict[str, Any]]] = []

    async def list_functions(self, **request: Any) -> dict[str, Any]:
        self.requests.append(("ListFunctions", request))
        if self.list_error is not None:
            raise self.list_error
        return self.function_pages[request.get("Marker")]

    async def list_function_event_invoke_configs(self, **request: Any) -> dict[str, Any]:
        self.requests.append(("ListFunctionEventInvokeConfigs", request))
        pages = self.config_pages.get(request["FunctionName"], {None: {}})
        if isinstance(pages, ClientError):
            raise pages
        return pages[request.get("Marker")]


@dataclasses.dataclass
class _Meta:
    region_name: str = "us-east-1"


class FakeSqs:
    """ListDeadLetterSourceQueues answering in the API reference's shape, with NextToken pages."""

    meta = _Meta()

    def __init__(self, pages: Mapping[tuple[str, str | None], dict[str, Any]]) -> None:
        self.pages = pages
        self.requests: list[dict[str, Any]] = []

    async def list_dead_letter_source_queues(self, **request: Any) -> dict[str, Any]:
        self.requests.append(request)
        return self.pages.get((request["QueueUrl"], request.get("NextToken")), {"queueUrls": []})


def clients(lambda_: FakeLambda, sqs: FakeSqs) -> AwsClients:
    others = {field.name: None for field in dataclasses.fields(AwsClients)}
    # Fakes stand in for the two clients the feed map reads; the others are never called.
    return AwsClients(**cast(dict[str, Any], {**others, "lambda_": lambda_, "sqs": sqs}))


def function(name: str, dlq_arn: str | None = None) -> dict[str, Any]:
    """A FunctionConfiguration as ListFunctions returns it (trimmed to what matters)."""
    config: dict[str, Any] = {
        "FunctionName": name,
        "FunctionArn": function_arn(name),
        "Runtime": "python3.12",
    }
    if dlq_arn is not None:
        config["DeadLetterConfig"] = {"TargetArn": dlq_arn}
    return config


def invoke_config(arn: str, destination: str | None) -> dict[str, Any]:
    """A FunctionEventInvokeConfig as ListFunctionEventInvokeConfigs returns it."""
    on_failure = {"Destination": destination} if destination else {}
    return {
        "FunctionArn": arn,
        "LastModified": 1573687896.493,
        "MaximumRetryAttempts": 2,
        "MaximumEventAgeInSeconds": 3600,
        "DestinationConfig": {"OnSuccess": {}, "OnFailure": on_failure},
    }


def url(name: str) -> str:
    return f"https://sqs.us-east-1.amazonaws.com/123456789012/{name}"


def mapped(lambda_: FakeLambda, sqs: FakeSqs, queues: Sequence[QueueRef]) -> FeedMap:
    async def run() -> FeedMap:
        return await map_feeds(clients(lambda_, sqs), queues)

    result: FeedMap = anyio.run(run)
    return result


def test_dead_letter_config_and_every_page_are_read() -> None:
    """DeadLetterConfig.TargetArn, on-failure configs per qualifier, NextMarker/NextToken pages."""
    lambda_ = FakeLambda(
        function_pages={
            None: {"Functions": [function("a", DLQ.arn)], "NextMarker": "page-2"},
            "page-2": {"Functions": [function("b", OTHER.arn), function("c")]},
        },
        config_pages={
            function_arn("c"): {
                None: {
                    "FunctionEventInvokeConfigs": [
                        invoke_config(function_arn("c") + ":$LATEST", OTHER.arn)
                    ],
                    "NextMarker": "cfg-2",
                },
                "cfg-2": {
                    "FunctionEventInvokeConfigs": [
                        invoke_config(function_arn("c") + ":live", DLQ.arn),
                        invoke_config(function_arn("c") + ":7", None),
                    ]
                },
            }
        },
    )
    sqs = FakeSqs(
        {
            (DLQ.url, None): {"queueUrls": [url("orders-a")], "NextToken": "t-2"},
            (DLQ.url, "t-2"): {"queueUrls": [url("orders-b")]},
        }
    )

    feeds = mapped(lambda_, sqs, [DLQ, OTHER])

    assert feeds.feeding(DLQ.arn) == (
        Feed(FeedKind.LAMBDA_DLQ, function_arn("a")),
        Feed(FeedKind.LAMBDA_ON_FAILURE, function_arn("c") + ":live"),
        Feed(FeedKind.SQS_REDRIVE, queue_arn("orders-a")),
        Feed(FeedKind.SQS_REDRIVE, queue_arn("orders-b")),
    )
    assert feeds.feeding(OTHER.arn) == (
        Feed(FeedKind.LAMBDA_DLQ, function_arn("b")),
        Feed(FeedKind.LAMBDA_ON_FAILURE, function_arn("c") + ":$LATEST"),
    )
    listed = [request for operation, request in lambda_.requests if operation == "ListFunctions"]
    assert listed == [{"MaxItems": 50}, {"MaxItems": 50, "Marker": "page-2"}]
    assert {"QueueUrl": DLQ.url, "MaxResults": 1000, "NextToken": "t-2"} in sqs.requests
    assert feeds.errors == ()


def test_one_lookup_per_function_and_per_dlq_never_per_message() -> None:
    """The map costs one config look-up per function and one source look-up per DLQ."""
    names = [f"f{index}" for index in range(20)]
    lambda_ = FakeLambda({None: {"Functions": [function(name) for name in names]}}, {})
    sqs = FakeSqs({})
    mapped(lambda_, sqs, [DLQ, OTHER])
    configs = [r for op, r in lambda_.requests if op == "ListFunctionEventInvokeConfigs"]
    assert sorted(r["FunctionName"] for r in configs) == sorted(function_arn(n) for n in names)
    assert len(sqs.requests) == 2


def test_a_function_deleted_since_listing_is_not_an_error() -> None:
    """ResourceNotFoundException on one function's configs: it feeds nothing, no error."""
    lambda_ = FakeLambda(
        {None: {"Functions": [function("gone"), function("a", DLQ.arn)]}},
        {function_arn("gone"): client_error("ResourceNotFoundException", "List")},
    )
    feeds = mapped(lambda_, FakeSqs({}), [DLQ])
    assert feeds.errors == ()
    assert feeds.feeding(DLQ.arn) == (Feed(FeedKind.LAMBDA_DLQ, function_arn("a")),)


def test_many_failed_function_lookups_make_one_error_line() -> None:
    """The same error for many functions is one line naming a few and counting the rest."""
    names = [f"f{index}" for index in range(5)]
    denied = client_error("AccessDeniedException", "ListFunctionEventInvokeConfigs")
    lambda_ = FakeLambda(
        {None: {"Functions": [function(name) for name in names]}},
        {function_arn(name): denied for name in names},
    )
    (line,) = mapped(lambda_, FakeSqs({}), [DLQ]).errors
    assert line.startswith("ListFunctionEventInvokeConfigs: AccessDeniedException")
    assert line.endswith("and 2 more")


# -- the cache --------------------------------------------------------------------------------


def refresh(cache: FeedCache, lambda_: FakeLambda, queues: Sequence[QueueRef]) -> FeedMap:
    async def run() -> FeedMap:
        return await cache.refresh_if_due(clients(lambda_, FakeSqs({})), queues)

    result: FeedMap = anyio.run(run)
    return result


def counting_lambda() -> FakeLambda:
    return FakeLambda({None: {"Functions": [function("a", DLQ.arn)]}}, {})


def builds(lambda_: FakeLambda) -> int:
    return sum(1 for operation, _ in lambda_.requests if operation == "ListFunctions")


def test_the_cache_is_empty_before_its_first_refresh() -> None:
    """`current` is an empty map until a cycle has refreshed it."""
    assert FeedCache(5).current.feeds == {}


def test_the_cache_rebuilds_on_the_first_call_and_every_n_calls() -> None:
    """With refresh_cycles=3 the map is built on calls 1, 4 and 7, reused in between."""
    cache, lambda_ = FeedCache(3), counting_lambda()
    seen = []
    for _ in range(7):
        refresh(cache, lambda_, [DLQ])
        seen.append(builds(lambda_))
    assert seen == [1, 1, 1, 2, 2, 2, 3]
    assert cache.current.feeding(DLQ.arn) == (Feed(FeedKind.LAMBDA_DLQ, function_arn("a")),)


def test_busy_cycles_rebuild_no_sooner_than_the_maps_minimum_age() -> None:
    """Back-to-back busy cycles: due by count after 3 calls, rebuilt only once 30 s old; a new
    queue still forces one at once."""
    now_s = [0.0]
    cache, lambda_ = FeedCache(3, min_age_s=30.0, clock=lambda: now_s[0]), counting_lambda()
    seen = []
    for _ in range(6):
        refresh(cache, lambda_, [DLQ])
        seen.append(builds(lambda_))
        now_s[0] += 1.0
    assert seen == [1, 1, 1, 1, 1, 1]
    now_s[0] = 30.0
    refresh(cache, lambda_, [DLQ])
    assert builds(lambda_) == 2
    refresh(cache, lambda_, [DLQ, OTHER])
    assert builds(lambda_) == 3


def test_a_new_queue_forces_a_rebuild() -> None:
    """A DLQ the map has not seen is mapped at once, not after the interval."""
    cache, lambda_ = FeedCache(100), counting_lambda()
    refresh(cache, lambda_, [DLQ])
    refresh(cache, lambda_, [DLQ])
    refresh(cache, lambda_, [DLQ, OTHER])
    refresh(cache, lambda_, [OTHER])
    assert builds(lambda_) == 2


def test_a_rebuild_with_errors_keeps_the_previous_feeds() -> None:
    """AccessDenied on a later rebuild: the last good feeds stay, the error is shown."""
    cache = FeedCache(1)
    refresh(cache, counting_lambda(), [DLQ])
    failing = FakeLambda({}, {}, list_error=client_error("AccessDeniedException", "ListFunctions"))
    with capture_logs() as logs:
        kept = refresh(cache, failing, [DLQ])
    assert kept.feeding(DLQ.arn) == (Feed(FeedKind.LAMBDA_DLQ, function_arn("a")),)
    assert kept.errors == ("ListFunctions: AccessDeniedException (AccessDeniedException)",)
    assert cache.current is kept
    assert any(log["event"] == "feed-map-incomplete-kept-previous" for log in logs)


def test_the_first_map_is_used_even_when_incomplete() -> None:
    """With no earlier map, what could be learned is better than nothing."""
    failing = FakeLambda({}, {}, list_error=client_error("AccessDeniedException", "ListFunctions"))
    feeds = refresh(FeedCache(3), failing, [DLQ])
    assert feeds.errors
    assert feeds.feeds == {}


def test_every_build_is_logged_at_debug_level() -> None:
    """The map itself goes to the debug log, one line per build."""
    with capture_logs() as logs:
        refresh(FeedCache(2), counting_lambda(), [DLQ])
    (built,) = [log for log in logs if log["event"] == "feed-map-built"]
    assert built["log_level"] == "debug"
    assert built["feeds"] == {DLQ.arn: [f"lambda-dlq:{function_arn('a')}"]}


def test_refresh_cycles_must_be_positive() -> None:
    """A cache that would never rebuild is refused."""
    with pytest.raises(ValueError, match="at least 1"):
        FeedCache(0)


# -- the lazy cache (the drain cycle's): redrive sources per DLQ, once it has messages ---------


class FailingSqs(FakeSqs):
    """ListDeadLetterSourceQueues refused for every queue."""

    async def list_dead_letter_source_queues(self, **request: Any) -> dict[str, Any]:
        self.requests.append(request)
        raise client_error("AccessDenied", "ListDeadLetterSourceQueues")


def lazy_step(
    cache: FeedCache, sqs: FakeSqs, queues: Sequence[QueueRef], learn: Sequence[QueueRef]
) -> FeedMap:
    """One cycle's feed work: refresh if due, then learn the DLQs that have messages."""

    async def run() -> FeedMap:
        both = clients(counting_lambda(), sqs)
        await cache.refresh_if_due(both, queues)
        for dlq in learn:
            await cache.learn(both, dlq)
        return cache.current

    result: FeedMap = anyio.run(run)
    return result


def test_a_lazy_cache_looks_up_only_dlqs_with_messages_once_per_rebuild() -> None:
    """Empty DLQs cost no look-up; a DLQ with messages costs one per rebuild, not per cycle."""
    sqs = FakeSqs({(DLQ.url, None): {"queueUrls": [url("orders")]}})
    cache = FeedCache(3, lazy_redrive=True)
    for _ in range(3):
        feeds = lazy_step(cache, sqs, [DLQ, OTHER], learn=[DLQ])
    assert [request["QueueUrl"] for request in sqs.requests] == [DLQ.url]
    assert feeds.of_kind(DLQ.arn, FeedKind.SQS_REDRIVE) == (
        Feed(FeedKind.SQS_REDRIVE, queue_arn("orders")),
    )
    assert feeds.of_kind(DLQ.arn, FeedKind.LAMBDA_DLQ) == (
        Feed(FeedKind.LAMBDA_DLQ, function_arn("a")),
    )
    lazy_step(cache, sqs, [DLQ, OTHER], learn=[DLQ])
    assert len(sqs.requests) == 2


def test_a_lazy_rebuild_keeps_learned_sources_until_the_next_look_up() -> None:
    """A rebuild does not forget a DLQ's sources; its next look-up replaces them."""
    cache = FeedCache(1, lazy_redrive=True)
    lazy_step(cache, FakeSqs({(DLQ.url, None): {"queueUrls": [url("a")]}}), [DLQ], learn=[DLQ])
    moved = FakeSqs({(DLQ.url, None): {"queueUrls": [url("b")]}})
    kept = lazy_step(cache, moved, [DLQ], learn=[])
    assert kept.of_kind(DLQ.arn, FeedKind.SQS_REDRIVE) == (
        Feed(FeedKind.SQS_REDRIVE, queue_arn("a")),
    )
    relearned = lazy_step(cache, moved, [DLQ], learn=[DLQ])
    assert relearned.of_kind(DLQ.arn, FeedKind.SQS_REDRIVE) == (
        Feed(FeedKind.SQS_REDRIVE, queue_arn("b")),
    )


def test_a_failed_lazy_look_up_keeps_what_was_known_and_says_why() -> None:
    """AccessDenied on a later look-up: the DLQ keeps its sources, the map names the error."""
    cache = FeedCache(1, lazy_redrive=True)
    lazy_step(cache, FakeSqs({(DLQ.url, None): {"queueUrls": [url("a")]}}), [DLQ], learn=[DLQ])
    with capture_logs() as logs:
        feeds = lazy_step(cache, FailingSqs({}), [DLQ], learn=[DLQ])
    assert feeds.of_kind(DLQ.arn, FeedKind.SQS_REDRIVE) == (
        Feed(FeedKind.SQS_REDRIVE, queue_arn("a")),
    )
    assert feeds.errors == (
        f"ListDeadLetterSourceQueues: AccessDenied (AccessDenied) for {DLQ.name}",
    )
    assert any(log["event"] == "feed-map-incomplete" for log in logs)


def test_an_eager_cache_ignores_learn() -> None:
    """`plan` and `inspect` map every DLQ up front; learn adds no call there."""
    sqs = FakeSqs({})
    cache = FeedCache(3)
    lazy_step(cache, sqs, [DLQ, OTHER], learn=[DLQ, OTHER])
    assert len(sqs.requests) == 2
