"""SNS subscription DLQs: each message goes back to the subscriber of the subscription it fits."""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from retryd.discovery.feeds import Feed, FeedKind, FeedMap
from retryd.discovery.subscriptions import Subscription, dead_letter_target
from retryd.models import (
    DeadLetter,
    Job,
    MessageAttribute,
    ParkReason,
    Target,
    TargetType,
    Unresolvable,
)
from retryd.resolve import build_chain
from retryd.resolve.sns_subscription import SnsSubscriptionResolver, parse_notification
from tests import strategies
from tests.conftest import SettingsFactory
from tests.native_helpers import FixedFeeds, function_arn, queue, queue_arn

DLQ = queue("retry-orders-sub")
TOPIC = "arn:aws:sns:us-east-1:123456789012:orders"
OTHER_TOPIC = "arn:aws:sns:us-east-1:123456789012:audit"
WORKER = queue_arn("orders-worker")
FUNCTION = function_arn("orders-fn")


def subscription(
    name: str, protocol: str, endpoint: str, *, raw: bool = False, topic: str = TOPIC
) -> Subscription:
    return Subscription(f"{topic}:{name}", topic, protocol, endpoint, DLQ.arn, raw)


def feeds(*subscriptions: Subscription, extra: Sequence[Feed] = ()) -> FixedFeeds:
    entries = tuple(Feed(FeedKind.SNS_SUBSCRIPTION, s.arn, s) for s in subscriptions)
    return FixedFeeds(FeedMap(MappingProxyType({DLQ.arn: entries + tuple(extra)})))


def notification(message: str = '{"order": 7}', topic: str = TOPIC) -> str:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "5d5e0f3c-0000-0000-0000-000000000001",
            "TopicArn": topic,
            "Message": message,
            "Timestamp": "2026-11-30T03:00:00.000Z",
            "SignatureVersion": "1",
            "Signature": "c2ln",
            "SigningCertURL": "https://sns.us-east-1.amazonaws.com/cert.pem",
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
        }
    )


def resolve(body: str, source: FixedFeeds, **attributes: MessageAttribute) -> Any:
    return SnsSubscriptionResolver(source).resolve(DeadLetter(DLQ, "m", "r", body, {}, attributes))


def test_raw_sqs_subscriber_gets_the_body_and_attributes_as_they_are() -> None:
    """Raw delivery: the DLQ body is the published message; it goes to the subscribed queue."""
    sub = subscription("raw", "sqs", WORKER, raw=True)
    job = resolve('{"order": 7}', feeds(sub), kind=MessageAttribute.string("order"))
    assert isinstance(job, Job)
    assert job.target == Target(TargetType.SQS, WORKER)
    assert job.body == '{"order": 7}'
    assert job.forward_attributes["kind"].string_value == "order"
    assert job.resolver == "sns-subscription"


def test_non_raw_sqs_subscriber_gets_the_notification_unchanged() -> None:
    """Without raw delivery a queue subscriber gets the JSON notification: resent byte for byte."""
    body = notification()
    job = resolve(body, feeds(subscription("wrapped", "sqs", WORKER)))
    assert isinstance(job, Job)
    assert job.body == body


def test_lambda_subscriber_is_invoked_with_the_sns_event_it_expects() -> None:
    """A Lambda subscriber gets the notification inside a Records event, as SNS invokes it."""
    sub = subscription("fn", "lambda", FUNCTION)
    job = resolve(notification(), feeds(sub))
    assert isinstance(job, Job)
    assert job.target == Target(TargetType.LAMBDA, FUNCTION)
    (record,) = json.loads(job.body)["Records"]
    assert record["EventSource"] == "aws:sns"
    assert record["EventSubscriptionArn"] == sub.arn
    assert record["Sns"]["Message"] == '{"order": 7}'
    assert record["Sns"]["TopicArn"] == TOPIC
    assert record["Sns"]["SigningCertUrl"].startswith("https://")
    assert "SigningCertURL" not in record["Sns"]


def test_a_lambda_subscription_dlq_message_that_is_not_a_notification_is_parked() -> None:
    """Lambda subscriptions cannot be raw, so a body that is no notification is not theirs."""
    answer = resolve("plain text", feeds(subscription("fn", "lambda", FUNCTION)))
    assert isinstance(answer, Unresolvable)
    assert answer.reason is ParkReason.UNRESOLVABLE


def test_several_subscriptions_sharing_a_dlq_are_ambiguous() -> None:
    """Two subscriptions of one topic into one DLQ: nothing says which subscriber failed."""
    a = subscription("a", "sqs", WORKER)
    b = subscription("b", "lambda", FUNCTION)
    answer = resolve(notification(), feeds(a, b))
    assert isinstance(answer, Unresolvable)
    assert answer.reason is ParkReason.AMBIGUOUS_TARGET
    assert a.arn in answer.detail
    assert b.arn in answer.detail


def test_the_notifications_topic_picks_the_subscription() -> None:
    """Subscriptions of different topics share a DLQ: the notification's TopicArn decides."""
    orders = subscription("a", "sqs", WORKER)
    audit = subscription("b", "lambda", FUNCTION, topic=OTHER_TOPIC)
    job = resolve(notification(topic=OTHER_TOPIC), feeds(orders, audit))
    assert isinstance(job, Job)
    assert job.target.arn == FUNCTION


def test_raw_and_wrapped_subscriptions_are_told_apart_by_the_body() -> None:
    """A notification is the wrapped subscription's; any other body the raw one's."""
    wrapped = subscription("a", "lambda", FUNCTION)
    raw = subscription("b", "sqs", WORKER, raw=True)
    source = feeds(wrapped, raw)
    assert resolve(notification(), source).target.arn == FUNCTION
    assert resolve("plain", source).target.arn == WORKER


def test_http_email_and_sms_subscribers_are_parked_with_the_protocol() -> None:
    """No target retryd can call: unsupported-target, the protocol named, the endpoint not."""
    for protocol, endpoint in (
        ("https", "https://hooks.example.com/orders"),
        ("email", "ops@example.com"),
        ("sms", "+15555550100"),
    ):
        answer = resolve(notification(), feeds(subscription("x", protocol, endpoint)))
        assert isinstance(answer, Unresolvable)
        assert answer.reason is ParkReason.UNSUPPORTED_TARGET
        assert protocol in answer.detail
        assert endpoint not in answer.detail


def test_messages_marked_by_sqs_or_lambda_are_left_to_their_resolvers() -> None:
    """A redriven SQS message or a Lambda async DLQ message is not an SNS subscription's."""
    source = feeds(subscription("raw", "sqs", WORKER, raw=True))
    redriven = DeadLetter(DLQ, "m", "r", "x", {"DeadLetterQueueSourceArn": queue_arn("src")})
    assert SnsSubscriptionResolver(source).resolve(redriven) is None
    lambda_attrs = {
        "RequestID": MessageAttribute.string("id"),
        "ErrorCode": MessageAttribute.number(200),
    }
    assert resolve("x", source, **lambda_attrs) is None


def test_a_queue_also_fed_by_a_function_is_ambiguous_unless_the_body_is_a_notification() -> None:
    """SNS and a Lambda DLQ in one queue: only a notification shows the message is SNS's."""
    lambda_feed = Feed(FeedKind.LAMBDA_DLQ, function_arn("other"))
    source = feeds(subscription("raw", "sqs", WORKER, raw=True), extra=[lambda_feed])
    answer = resolve("plain", source)
    assert isinstance(answer, Unresolvable)
    assert answer.reason is ParkReason.AMBIGUOUS_TARGET
    wrapped = feeds(subscription("fn", "lambda", FUNCTION), extra=[lambda_feed])
    assert resolve(notification(), wrapped).target.arn == FUNCTION


def test_no_subscription_feeds_the_queue_means_not_this_shape() -> None:
    """Without a subscription feeding the DLQ the resolver steps aside."""
    assert resolve(notification(), FixedFeeds()) is None


def test_a_static_route_overrides_the_subscription(make_settings: SettingsFactory) -> None:
    """The route is the operator's word: it wins over what the feed map infers."""
    routed = function_arn("routed")
    chain = build_chain(
        make_settings(routes=[{"queue": DLQ.name, "target": routed}]),
        feeds(subscription("raw", "sqs", WORKER, raw=True)),
    )
    answer = chain.resolve(DeadLetter(DLQ, "m", "r", "body"))
    assert isinstance(answer, Job)
    assert answer.target.arn == routed
    unrouted = build_chain(make_settings(), feeds(subscription("raw", "sqs", WORKER, raw=True)))
    inferred = unrouted.resolve(DeadLetter(DLQ, "m", "r", "body"))
    assert isinstance(inferred, Job)
    assert inferred.target.arn == WORKER


def test_redrive_policy_parsing() -> None:
    """deadLetterTargetArn is read from the RedrivePolicy JSON; anything else is no DLQ."""
    assert dead_letter_target('{"deadLetterTargetArn": "arn:aws:sqs:r:1:q"}') == "arn:aws:sqs:r:1:q"
    for policy in (None, "", "{", "[]", '{"deadLetterTargetArn": 5}', '{"other": 1}'):
        assert dead_letter_target(policy) is None


def test_parse_notification_needs_type_topic_and_message() -> None:
    """Only a JSON object with Type Notification, a TopicArn and a Message is a notification."""
    assert parse_notification(notification()) is not None
    assert parse_notification('{"Type": "Notification", "TopicArn": "t"}') is None
    assert (
        parse_notification('{"Type": "SubscriptionConfirmation", "TopicArn": "t", "Message": ""}')
        is None
    )
    assert parse_notification("[1]") is None


_protocols = st.sampled_from(["sqs", "lambda", "http", "email", "", "SQS"])
_endpoints = st.sampled_from([WORKER, FUNCTION, "", "not an arn", "arn:aws:s3:::bucket"])
_subscriptions = st.builds(
    Subscription,
    arn=st.sampled_from([f"{TOPIC}:a", f"{TOPIC}:b", f"{OTHER_TOPIC}:c"]),
    topic_arn=st.sampled_from([TOPIC, OTHER_TOPIC, ""]),
    protocol=_protocols,
    endpoint=_endpoints,
    dlq_arn=st.just(DLQ.arn),
    raw=st.booleans(),
)
_other_feeds = st.lists(
    st.builds(
        Feed,
        kind=st.sampled_from([FeedKind.LAMBDA_DLQ, FeedKind.SQS_REDRIVE]),
        source_arn=st.sampled_from([FUNCTION, WORKER]),
    ),
    max_size=2,
)
_notification_bodies = st.builds(
    lambda message, topic, extra: json.dumps(
        {"Type": "Notification", "TopicArn": topic, "Message": message, **extra}
    ),
    st.text(max_size=10),
    st.sampled_from([TOPIC, OTHER_TOPIC, "x"]),
    st.dictionaries(st.text(max_size=5), strategies.json_values(), max_size=3),
)
_bodies = st.text(max_size=30) | strategies.json_values().map(json.dumps) | _notification_bodies
_system = st.dictionaries(
    st.sampled_from(["DeadLetterQueueSourceArn", "SentTimestamp"]), st.text(max_size=20), max_size=2
)


@settings(max_examples=300, deadline=None)
@given(
    body=_bodies,
    subscriptions=st.lists(_subscriptions, max_size=3),
    others=_other_feeds,
    system=_system,
    raw_attributes=st.booleans(),
)
def test_the_resolver_never_raises(
    body: str,
    subscriptions: list[Subscription],
    others: list[Feed],
    system: dict[str, str],
    raw_attributes: bool,
) -> None:
    """Any body, any feed map: a Job to an SQS queue or a function, an Unresolvable, or None."""
    attributes = (
        {"RequestID": MessageAttribute.string("i"), "ErrorCode": MessageAttribute.number(1)}
        if raw_attributes
        else {}
    )
    source = feeds(*subscriptions, extra=others)
    answer = SnsSubscriptionResolver(source).resolve(
        DeadLetter(DLQ, "m", "r", body, system, attributes)
    )
    assert answer is None or isinstance(answer, Job | Unresolvable)
    if isinstance(answer, Job):
        assert answer.target.type in (TargetType.SQS, TargetType.LAMBDA)
        assert answer.target.arn in (WORKER, FUNCTION)
        assert isinstance(answer.body, str)
        assert answer.key
