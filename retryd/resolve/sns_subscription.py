"""SNS subscription DLQs: the message goes back to the subscriber that failed it, not the topic.

SNS moves a message it could not deliver to one subscription into that
subscription's DLQ (its RedrivePolicy). Nothing in the message names the
subscription, so the feed map says which subscriptions send their failures to
the queue (retryd.discovery.subscriptions). Re-publishing to the topic would
deliver the message again to every other subscriber; sending it to the
subscriber reaches only the one that missed it.

What is sent:
- raw message delivery: the body is the published message, sent as it is, with
  its message attributes;
- otherwise the body is the JSON notification SNS delivers (Type, MessageId,
  TopicArn, Message, ...). An SQS subscriber receives exactly that JSON, so it is
  sent unchanged. A Lambda subscriber is invoked by SNS with that notification
  inside a `Records` event (Lambda developer guide, "Using Lambda with Amazon
  SNS", example event), so the function gets the same event shape again.

Other protocols (http/s, email, sms, mobile push, Firehose) have no target retryd
can call: their messages are parked `unsupported-target`, the protocol named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from retryd.discovery.feeds import FeedKind, FeedMap, FeedSource
from retryd.discovery.subscriptions import LAMBDA_PROTOCOL, SQS_PROTOCOL, Subscription
from retryd.models import DeadLetter, Job, ParkReason, Target, TargetType, Unresolvable
from retryd.resolve.base import body_as_is
from retryd.resolve.keys import compact_json, parsed_json

NOTIFICATION_TYPE = "Notification"
# Set by SQS on a message its redrive policy moved, and by Lambda on its async DLQ
# messages: such a message is another resolver's.
REDRIVE_SOURCE = "DeadLetterQueueSourceArn"
LAMBDA_ATTRIBUTES = ("RequestID", "ErrorCode")
_OTHER_FEEDS = (FeedKind.LAMBDA_DLQ, FeedKind.LAMBDA_ON_FAILURE, FeedKind.SQS_REDRIVE)
# The Lambda SNS event spells these two keys differently from the notification.
_LAMBDA_EVENT_KEYS = {"SigningCertURL": "SigningCertUrl", "UnsubscribeURL": "UnsubscribeUrl"}
_NAMED = 5


class SnsSubscriptionResolver:
    """Resends an SNS subscription DLQ message to the subscriber of the one subscription it fits."""

    name = "sns-subscription"

    def __init__(self, feeds: FeedSource) -> None:
        # The cache, not a map: it is refreshed between cycles, this resolver is built once.
        self._feeds = feeds

    def resolve(self, letter: DeadLetter) -> Job | Unresolvable | None:
        feed_map = self._feeds.current
        subscriptions = _subscriptions(feed_map, letter.queue.arn)
        if not subscriptions or _belongs_elsewhere(letter):
            return None
        notification = parse_notification(letter.body)
        candidates = _candidates(subscriptions, notification)
        others = feed_map.of_kind(letter.queue.arn, *_OTHER_FEEDS)
        if others and (notification is None or not candidates):
            # A queue several kinds of source write to; this message does not show it is SNS's.
            names = sorted({feed.source_arn for feed in others} | {s.arn for s in subscriptions})
            return _ambiguous(letter, names, "resources")
        if not candidates:
            return Unresolvable(
                letter,
                ParkReason.UNRESOLVABLE,
                f"queue {letter.queue.name} is the DLQ of SNS subscriptions that deliver JSON "
                "notifications, and this message is not one; a static route for the queue "
                "decides",
            )
        if len(candidates) > 1:
            return _ambiguous(letter, [s.arn for s in candidates], "SNS subscriptions")
        return self._job(letter, candidates[0], notification)

    def _job(
        self, letter: DeadLetter, subscription: Subscription, notification: dict[str, Any] | None
    ) -> Job | Unresolvable:
        target = _subscriber(subscription)
        if isinstance(target, str):
            return Unresolvable(letter, ParkReason.UNSUPPORTED_TARGET, target)
        if target.type is TargetType.LAMBDA and not subscription.raw:
            if notification is None:
                return Unresolvable(
                    letter,
                    ParkReason.UNRESOLVABLE,
                    f"queue {letter.queue.name} is the DLQ of Lambda subscription "
                    f"{subscription.arn}, and this message is not an SNS notification",
                )
            # Keyed on the message as it sits in the DLQ, like every other shape.
            job = body_as_is(letter, target, self.name)
            return replace(job, body=compact_json(lambda_event(notification, subscription.arn)))
        return body_as_is(letter, target, self.name)


def parse_notification(body: str) -> dict[str, Any] | None:
    """The body as an SNS JSON notification (Type "Notification", TopicArn, Message); else None."""
    document = parsed_json(body)
    if not isinstance(document, dict) or document.get("Type") != NOTIFICATION_TYPE:
        return None
    if not isinstance(document.get("TopicArn"), str) or not isinstance(
        document.get("Message"), str
    ):
        return None
    return document


def lambda_event(notification: dict[str, Any], subscription_arn: str) -> dict[str, Any]:
    """The event SNS invokes a subscribed function with, for one notification."""
    sns = {_LAMBDA_EVENT_KEYS.get(key, key): value for key, value in notification.items()}
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "EventSubscriptionArn": subscription_arn,
                "Sns": sns,
            }
        ]
    }


def _subscriptions(feed_map: FeedMap, queue_arn: str) -> list[Subscription]:
    return [
        feed.subscription
        for feed in feed_map.of_kind(queue_arn, FeedKind.SNS_SUBSCRIPTION)
        if feed.subscription is not None
    ]


def _belongs_elsewhere(letter: DeadLetter) -> bool:
    if letter.system_attributes.get(REDRIVE_SOURCE):
        return True
    return all(name in letter.message_attributes for name in LAMBDA_ATTRIBUTES)


def _candidates(
    subscriptions: Sequence[Subscription], notification: dict[str, Any] | None
) -> list[Subscription]:
    """The subscriptions this message can have come from.

    A JSON notification comes from a non-raw subscription of the topic it names;
    anything else from a raw one (a raw message that merely looks like a
    notification is matched to the raw subscriptions when no non-raw one fits).
    """
    raw = [s for s in subscriptions if s.raw]
    if notification is None:
        return raw
    topic = notification["TopicArn"]
    wrapped = [s for s in subscriptions if not s.raw and s.topic_arn == topic]
    return wrapped or raw


def _subscriber(subscription: Subscription) -> Target | str:
    """The subscriber as a target, or why it cannot be one."""
    expected = {SQS_PROTOCOL: TargetType.SQS, LAMBDA_PROTOCOL: TargetType.LAMBDA}.get(
        subscription.protocol
    )
    if expected is None:
        # The endpoint itself (an address, a phone number, a URL) is personal or secret
        # enough to be left out; the subscription ARN finds it.
        protocol = subscription.protocol[:40] or "(none)"
        return (
            f"SNS subscription {subscription.arn} delivers over {protocol}; retryd can send "
            "again only to SQS queue and Lambda function subscribers"
        )
    try:
        target = Target.from_arn(subscription.endpoint)
    except ValueError:
        target = None
    if target is None or target.type is not expected:
        return (
            f"SNS subscription {subscription.arn} ({subscription.protocol}) has an endpoint "
            "that is not a resource ARN retryd can call"
        )
    return target


def _ambiguous(letter: DeadLetter, arns: Sequence[str], what: str) -> Unresolvable:
    shown = ", ".join(arns[:_NAMED]) + (
        f" and {len(arns) - _NAMED} more" if len(arns) > _NAMED else ""
    )
    return Unresolvable(
        letter,
        ParkReason.AMBIGUOUS_TARGET,
        f"{len(arns)} {what} send failures to queue {letter.queue.name} ({shown}) and the "
        "message does not say which one it came from; a static route for the queue decides",
    )
