"""The feed map learns SNS subscriptions' DLQs from the moto server, in bulk and paged."""

from __future__ import annotations

import json
from collections.abc import Sequence

import anyio

from retryd.aws import open_clients
from retryd.discovery.feeds import FeedCache, FeedKind, FeedMap, map_feeds
from retryd.models import QueueRef, queue_ref_from_url
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.world import REGION, World


def refs(world: World, *names: str) -> list[QueueRef]:
    return [queue_ref_from_url(world.queue_url(name), REGION) for name in names]


def build(make_settings: SettingsFactory, queues: Sequence[QueueRef], *, sns: bool) -> FeedMap:
    async def run() -> FeedMap:
        async with open_clients(make_settings().aws) as clients:
            return await map_feeds(clients, queues, lambda_feeds=False, sns_feeds=sns)

    result: FeedMap = anyio.run(run)
    return result


def subscribe(
    world: World, topic_arn: str, queue: str, dlq: str | None, *, raw: bool = False
) -> str:
    attributes = {}
    if dlq is not None:
        attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": world.queue_arn(dlq)})
    if raw:
        attributes["RawMessageDelivery"] = "true"
    arn: str = world.client("sns").subscribe(
        TopicArn=topic_arn,
        Protocol="sqs",
        Endpoint=world.queue_arn(queue),
        Attributes=attributes,
        ReturnSubscriptionArn=True,
    )["SubscriptionArn"]
    return arn


def test_subscriptions_are_mapped_to_the_dlqs_their_redrive_policies_name(
    world: World, make_settings: SettingsFactory
) -> None:
    """Subscriber, protocol and raw delivery are learned; no DLQ or an unwatched one is skipped."""
    for name in ("retry-a", "retry-b", "elsewhere-dlq", "worker-a", "worker-b", "worker-c"):
        world.create_queue(name)
    topic = world.client("sns").create_topic(Name="orders")["TopicArn"]
    sub_a = subscribe(world, topic, "worker-a", "retry-a", raw=True)
    sub_b = subscribe(world, topic, "worker-b", "retry-b")
    subscribe(world, topic, "worker-c", None)
    subscribe(world, topic, "worker-c", "elsewhere-dlq")

    feeds = build(make_settings, refs(world, "retry-a", "retry-b"), sns=True)

    assert feeds.errors == ()
    (a,) = feeds.of_kind(world.queue_arn("retry-a"), FeedKind.SNS_SUBSCRIPTION)
    (b,) = feeds.of_kind(world.queue_arn("retry-b"), FeedKind.SNS_SUBSCRIPTION)
    assert a.source_arn == sub_a
    assert a.subscription is not None
    assert a.subscription.endpoint == world.queue_arn("worker-a")
    assert a.subscription.protocol == "sqs"
    assert a.subscription.topic_arn == topic
    assert a.subscription.raw is True
    assert b.source_arn == sub_b
    assert b.subscription is not None
    assert b.subscription.raw is False
    assert set(feeds.feeds) == {world.queue_arn("retry-a"), world.queue_arn("retry-b")}


def test_every_page_of_subscriptions_is_read(world: World, make_settings: SettingsFactory) -> None:
    """ListSubscriptions returns 100 a page: the ones past the first page are found too."""
    world.create_queue("retry-many")
    topic = world.client("sns").create_topic(Name="busy")["TopicArn"]
    for index in range(105):
        world.create_queue(f"w-{index}")
        subscribe(world, topic, f"w-{index}", "retry-many")
    first_page = world.client("sns").list_subscriptions()
    assert "NextToken" in first_page  # the world really spans two pages

    feeds = build(make_settings, refs(world, "retry-many"), sns=True)

    assert len(feeds.feeding(world.queue_arn("retry-many"))) == 105


def test_no_sns_calls_without_sns_feeds(world: World, make_settings: SettingsFactory) -> None:
    """With sns_feeds off (no queue or function may be a target) subscriptions stay unread."""
    world.create_queue("retry-a")
    world.create_queue("worker-a")
    topic = world.client("sns").create_topic(Name="orders")["TopicArn"]
    subscribe(world, topic, "worker-a", "retry-a")
    world.faults.add(Fault(service="sns", operation="ListSubscriptions", code="AccessDenied"))

    feeds = build(make_settings, refs(world, "retry-a"), sns=False)

    assert feeds.feeds == {}
    assert feeds.errors == ()


def test_a_failed_attribute_read_is_recorded_and_the_rest_still_map(
    world: World, make_settings: SettingsFactory
) -> None:
    """AccessDenied on one GetSubscriptionAttributes names that subscription in the errors."""
    for name in ("retry-a", "retry-b", "worker-a", "worker-b"):
        world.create_queue(name)
    topic = world.client("sns").create_topic(Name="orders")["TopicArn"]
    denied = subscribe(world, topic, "worker-a", "retry-a")
    subscribe(world, topic, "worker-b", "retry-b")
    world.faults.add(
        Fault(
            service="sns",
            operation="GetSubscriptionAttributes",
            code="AuthorizationError",
            status=403,
            contains=denied.rsplit(":", 1)[1],
            message="not allowed",
        )
    )

    feeds = build(make_settings, refs(world, "retry-a", "retry-b"), sns=True)

    (error,) = feeds.errors
    assert error.startswith("GetSubscriptionAttributes: AuthorizationError")
    assert denied in error
    assert feeds.feeding(world.queue_arn("retry-a")) == ()
    assert len(feeds.feeding(world.queue_arn("retry-b"))) == 1


def test_a_failed_listing_is_recorded(world: World, make_settings: SettingsFactory) -> None:
    """AccessDenied on ListSubscriptions is in the errors; the map is otherwise built."""
    world.create_queue("retry-a")
    world.faults.add(Fault(service="sns", operation="ListSubscriptions", code="AuthorizationError"))

    feeds = build(make_settings, refs(world, "retry-a"), sns=True)

    assert feeds.errors[0].startswith("ListSubscriptions: AuthorizationError")


def test_the_cache_reads_subscriptions_only_when_a_subscriber_may_be_a_target(
    make_settings: SettingsFactory,
) -> None:
    """FeedCache.for_settings: on for a queue or function allowlist, off for topics only."""
    queues = make_settings(guards={"allow_targets": ["arn:aws:sqs:*:123456789012:*"]})
    topics = make_settings(guards={"allow_targets": ["arn:aws:sns:*:123456789012:*"]})
    assert FeedCache.for_settings(queues)._sns_feeds is True
    assert FeedCache.for_settings(topics)._sns_feeds is False
