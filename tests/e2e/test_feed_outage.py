"""A feed map that could not be learned must not park what it would have resolved (review)."""

from __future__ import annotations

from retryd.models import Outcome
from tests.conftest import SettingsFactory
from tests.e2e.helpers import cycle
from tests.e2e.test_sns_subscriptions import PARKING, notification, subscribe
from tests.faults import Fault
from tests.world import World


def test_a_subscription_dlq_message_is_left_in_place_while_subscriptions_cannot_be_listed(
    world: World, make_settings: SettingsFactory
) -> None:
    """SNS throttles ListSubscriptions on the daemon's first map: the message of a subscription
    DLQ stays in its DLQ for a later cycle rather than being parked as unresolvable."""
    world.create_queue(PARKING)
    topic_arn = world.client("sns").create_topic(Name="orders")["TopicArn"]
    world.create_queue("orders-worker")
    subscribe(world, topic_arn, "sqs", world.queue_arn("orders-worker"), "retry-orders-worker")
    world.send(
        "retry-orders-worker",
        notification(topic_arn, {"order": 1}, "00000000-0000-0000-0000-000000000001"),
    )
    world.faults.add(Fault("sns", "ListSubscriptions"))

    report = cycle(make_settings())

    assert report.outcomes == {Outcome.FAILED.value: 1}, report.decisions
    assert world.depth(PARKING) == 0


def test_a_subscription_dlq_message_is_parked_when_subscriptions_may_not_be_read(
    world: World, make_settings: SettingsFactory
) -> None:
    """AccessDenied on ListSubscriptions is no passing fault: another cycle would know no
    more, so the unrecognised message is parked unresolvable as before, never held forever."""
    world.create_queue(PARKING)
    topic_arn = world.client("sns").create_topic(Name="orders")["TopicArn"]
    world.create_queue("orders-worker")
    subscribe(world, topic_arn, "sqs", world.queue_arn("orders-worker"), "retry-orders-worker")
    world.send(
        "retry-orders-worker",
        notification(topic_arn, {"order": 1}, "00000000-0000-0000-0000-000000000001"),
    )
    world.faults.add(Fault("sns", "ListSubscriptions", code="AuthorizationError", status=403))

    report = cycle(make_settings())

    assert report.outcomes == {Outcome.PARKED.value: 1}, report.decisions
    assert world.depth(PARKING) == 1
