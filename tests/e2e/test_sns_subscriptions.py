"""SNS subscription DLQs drained unrouted: each message goes back to the subscriber that failed it.

The moto server stores subscriptions and their RedrivePolicy; the DLQ messages are
put there as SNS writes them (the JSON notification, or the raw message), since the
emulator does not dead-letter deliveries itself.
"""

from __future__ import annotations

import json
from typing import Any

from retryd.models import Outcome
from tests.conftest import SettingsFactory
from tests.e2e.helpers import cycle
from tests.world import World

PARKING = "retryd-parking"


def subscribe(
    world: World, topic_arn: str, protocol: str, endpoint: str, dlq: str, *, raw: bool = False
) -> str:
    world.create_queue(dlq)
    policy = json.dumps({"deadLetterTargetArn": world.queue_arn(dlq)})
    attributes = {"RedrivePolicy": policy}
    if raw:
        attributes["RawMessageDelivery"] = "true"
    arn: str = world.client("sns").subscribe(
        TopicArn=topic_arn,
        Protocol=protocol,
        Endpoint=endpoint,
        Attributes=attributes,
        ReturnSubscriptionArn=True,
    )["SubscriptionArn"]
    return arn


def notification(topic_arn: str, message: dict[str, Any], message_id: str) -> str:
    """A JSON notification as SNS delivers it without raw delivery."""
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": message_id,
            "TopicArn": topic_arn,
            "Message": json.dumps(message),
            "Timestamp": "2026-11-30T03:00:00.000Z",
            "SignatureVersion": "1",
            "Signature": "c2lnbmF0dXJl",
            "SigningCertURL": "https://sns.us-east-1.amazonaws.com/cert.pem",
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
        }
    )


def test_each_message_goes_back_only_to_the_subscriber_that_failed_it(
    world: World, make_settings: SettingsFactory
) -> None:
    """A topic with an SQS and a Lambda subscriber, each with its own DLQ, drained unrouted."""
    world.create_queue(PARKING)
    # The spy is a third subscriber: re-publishing to the topic would reach it.
    topic_arn, spy = world.create_topic_with_spy("orders")
    world.create_queue("orders-worker")
    function_arn = world.create_function("orders-fn")
    queue_sub = subscribe(
        world, topic_arn, "sqs", world.queue_arn("orders-worker"), "retry-orders-worker"
    )
    subscribe(world, topic_arn, "lambda", function_arn, "retry-orders-fn")
    for_queue = notification(topic_arn, {"order": 1}, "00000000-0000-0000-0000-000000000001")
    for_function = notification(topic_arn, {"order": 2}, "00000000-0000-0000-0000-000000000002")
    world.send("retry-orders-worker", for_queue)
    world.send("retry-orders-fn", for_function)
    world.record()

    report = cycle(make_settings())

    assert report.outcomes == {Outcome.RESUBMITTED.value: 2}
    assert {d.target.arn for d in report.decisions or [] if d.target} == {
        world.queue_arn("orders-worker"),
        function_arn,
    }
    # The queue subscriber gets the notification it missed, unchanged, and nothing else.
    worker = world.drain("orders-worker")
    assert [m["Body"] for m in worker] == [for_queue]
    assert worker[0]["MessageAttributes"]["retryd.source-queue"]["StringValue"] == (
        "retry-orders-worker"
    )
    # The function gets its own notification, as the event SNS invokes it with, only once.
    invocations = world.invocations("orders-fn")
    assert len(invocations) == 1
    (record,) = json.loads(invocations[0]["payload"])["Records"]
    assert record["EventSource"] == "aws:sns"
    assert json.loads(record["Sns"]["Message"]) == {"order": 2}
    assert record["EventSubscriptionArn"] != queue_sub
    # Nothing went through the topic: its other subscriber saw nothing.
    assert world.drain(spy) == []
    assert world.depth("retry-orders-worker") == world.depth("retry-orders-fn") == 0


def test_raw_delivery_resends_the_body_and_its_attributes(
    world: World, make_settings: SettingsFactory
) -> None:
    """With RawMessageDelivery the DLQ holds the published message; it goes back as it is."""
    world.create_queue(PARKING)
    topic_arn = world.client("sns").create_topic(Name="raw-orders")["TopicArn"]
    world.create_queue("raw-worker")
    subscribe(world, topic_arn, "sqs", world.queue_arn("raw-worker"), "retry-raw", raw=True)
    world.send(
        "retry-raw", "order 3 paid", {"kind": {"DataType": "String", "StringValue": "payment"}}
    )

    assert cycle(make_settings()).outcomes == {Outcome.RESUBMITTED.value: 1}

    (message,) = world.drain("raw-worker")
    assert message["Body"] == "order 3 paid"
    assert message["MessageAttributes"]["kind"]["StringValue"] == "payment"


def test_shared_dlq_is_ambiguous_and_a_route_settles_it(
    world: World, make_settings: SettingsFactory
) -> None:
    """Two subscriptions of one topic into one DLQ park ambiguous-target; a route decides."""
    world.create_queue(PARKING)
    topic_arn = world.client("sns").create_topic(Name="shared")["TopicArn"]
    world.create_queue("worker-a")
    world.create_queue("worker-b")
    world.create_queue("retry-shared")
    for worker in ("worker-a", "worker-b"):
        world.client("sns").subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=world.queue_arn(worker),
            Attributes={
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": world.queue_arn("retry-shared")}
                )
            },
        )
    world.send("retry-shared", notification(topic_arn, {"order": 4}, "id-4"))

    report = cycle(make_settings())

    assert report.outcomes == {Outcome.PARKED.value: 1}
    (decision,) = report.decisions or []
    assert decision.reason == "ambiguous-target"
    assert "2 SNS subscriptions" in decision.detail
    world.drain(PARKING)

    world.send("retry-shared", notification(topic_arn, {"order": 5}, "id-5"))
    routed = make_settings(
        routes=[{"queue": "retry-shared", "target": world.queue_arn("worker-b")}]
    )
    assert cycle(routed).outcomes == {Outcome.RESUBMITTED.value: 1}
    assert world.drain("worker-a") == []
    assert len(world.drain("worker-b")) == 1


def test_http_subscriber_is_parked_with_its_protocol(
    world: World, make_settings: SettingsFactory
) -> None:
    """An HTTPS subscriber has no target retryd can call: unsupported-target, protocol named."""
    world.create_queue(PARKING)
    topic_arn = world.client("sns").create_topic(Name="hooks")["TopicArn"]
    subscribe(world, topic_arn, "https", "https://hooks.example.com/orders", "retry-hooks")
    world.send("retry-hooks", notification(topic_arn, {"order": 6}, "id-6"))

    report = cycle(make_settings())

    assert report.outcomes == {Outcome.PARKED.value: 1}
    (decision,) = report.decisions or []
    assert decision.reason == "unsupported-target"
    assert "https" in decision.detail
    assert "hooks.example.com" not in decision.detail
    (copy,) = world.drain(PARKING)
    assert copy["MessageAttributes"]["retryd.reason"]["StringValue"] == "unsupported-target"


def test_no_subscription_reads_when_no_queue_or_function_may_be_a_target(
    world: World, make_settings: SettingsFactory
) -> None:
    """With only topics allowed, subscriptions are not read: the message stays unresolvable."""
    world.create_queue(PARKING)
    topic_arn = world.client("sns").create_topic(Name="narrow")["TopicArn"]
    world.create_queue("narrow-worker")
    subscribe(world, topic_arn, "sqs", world.queue_arn("narrow-worker"), "retry-narrow")
    world.send("retry-narrow", notification(topic_arn, {"order": 7}, "id-7"))
    settings = make_settings(guards={"allow_targets": [topic_arn]})

    report = cycle(settings)

    (decision,) = report.decisions or []
    assert decision.reason == "unresolvable"
    assert world.drain("narrow-worker") == []
