"""The SNS resubmitter: PublishBatch to the target topic, against the moto server."""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from retryd import stamps
from retryd.aws import open_clients
from retryd.models import (
    ErrorClass,
    Job,
    MessageAttribute,
    Refusal,
    Target,
)
from retryd.settings import Settings
from retryd.targets.base import Delivery
from retryd.targets.sns_topic import SnsTopicTarget
from tests.conftest import SettingsFactory
from tests.faults import Fault
from tests.targets.helpers import (
    DERIVED_KEY,
    LONE_SURROGATE,
    MALFORMED_REPLIES,
    calls,
    expected_dedup_id,
    strings,
)
from tests.targets.helpers import make_message_job as make_job
from tests.world import ACCOUNT, REGION, World


def submit_sns(settings: Settings, target: Target, jobs: Sequence[Job]) -> list[Delivery]:
    async def main() -> list[Delivery]:
        async with open_clients(settings.aws) as clients:
            return await SnsTopicTarget(clients.sns).submit(target, jobs)

    return anyio.run(main)


def test_sns_publishes_body_and_attributes(world: World, make_settings: SettingsFactory) -> None:
    """The spy queue receives the body with the user's attribute and retryd's stamps."""
    topic_arn, spy = world.create_topic_with_spy("orders")
    target = Target.from_arn(topic_arn)
    user = {
        "tenant": MessageAttribute.string("acme"),
        "empty": MessageAttribute.string(""),
    }
    deliveries = submit_sns(make_settings(), target, [make_job(topic_arn, attributes=user)])
    assert [delivery.error for delivery in deliveries] == [None]
    [message] = world.drain(spy)
    assert message["Body"] == '{"orderId": "42"}'
    received = strings(message)
    assert received["tenant"] == "acme"
    assert "empty" not in received
    assert received[stamps.ATTEMPT] == "1"
    assert received[stamps.KEY] == "order-42"
    assert received[stamps.SOURCE_QUEUE] == "retry-orders"


def test_sns_twelve_jobs_take_two_publish_batch_calls(
    world: World, make_settings: SettingsFactory
) -> None:
    """12 jobs go out in 2 PublishBatch calls and all reach the subscriber."""
    topic_arn, spy = world.create_topic_with_spy("orders")
    target = Target.from_arn(topic_arn)
    jobs = [make_job(topic_arn, body=f"b-{index}", key=f"k-{index}") for index in range(12)]
    world.record()
    deliveries = submit_sns(make_settings(), target, jobs)
    assert calls(world, "PublishBatch") == 2
    assert all(delivery.accepted for delivery in deliveries)
    assert len(world.drain(spy)) == 12


def test_sns_fifo_topic_gets_group_and_dedup_id(
    world: World, make_settings: SettingsFactory
) -> None:
    """A FIFO topic is published with the letter's group and a dedup id of its dead letter."""
    topic_arn, spy = world.create_topic_with_spy("orders", fifo=True)
    the_job = make_job(topic_arn, group_id="customer-7")
    deliveries = submit_sns(make_settings(), Target.from_arn(topic_arn), [the_job])
    assert deliveries[0].accepted
    [message] = world.drain(spy)
    assert message["Attributes"]["MessageGroupId"] == "customer-7"
    assert message["Attributes"]["MessageDeduplicationId"] == expected_dedup_id(
        "order-42", "m-1", 1
    )


def test_sns_fifo_equal_bodies_of_distinct_dead_letters_both_arrive(
    world: World, make_settings: SettingsFactory
) -> None:
    """Two dead letters with one body (one derived key) are both published; a repeat is not."""
    topic_arn, spy = world.create_topic_with_spy("orders", fifo=True)
    jobs = [
        make_job(
            topic_arn,
            body='{"cmd": "increment"}',
            key=DERIVED_KEY,
            group_id="g",
            message_id=message_id,
        )
        for message_id in ("dlq-message-1", "dlq-message-2")
    ]
    target = Target.from_arn(topic_arn)
    deliveries = submit_sns(make_settings(), target, jobs)
    assert all(delivery.accepted for delivery in deliveries)
    assert submit_sns(make_settings(), target, jobs[:1])[0].accepted
    assert [message["Body"] for message in world.drain(spy)] == ['{"cmd": "increment"}'] * 2


def test_sns_missing_topic_is_permanent(world: World, make_settings: SettingsFactory) -> None:
    """Publishing to a topic that does not exist fails each job permanently."""
    topic_arn = f"arn:aws:sns:{REGION}:{ACCOUNT}:gone"
    deliveries = submit_sns(make_settings(), Target.from_arn(topic_arn), [make_job(topic_arn)])
    error = deliveries[0].error
    assert error is not None
    assert error.error_class is ErrorClass.PERMANENT


def test_sns_throttled_publish_is_transient(world: World, make_settings: SettingsFactory) -> None:
    """A throttled PublishBatch fails its jobs as transient and nothing reaches the topic."""
    topic_arn, spy = world.create_topic_with_spy("orders")
    fault = world.faults.add(Fault("sns", "PublishBatch", code="Throttling"))
    jobs = [make_job(topic_arn, key=f"k-{n}") for n in range(2)]
    deliveries = submit_sns(make_settings(), Target.from_arn(topic_arn), jobs)
    for delivery in deliveries:
        assert delivery.error is not None
        assert delivery.error.error_class is ErrorClass.TRANSIENT
    assert world.drain(spy) == []
    # Throttling is about the topic, not an entry: no entry is tried again on its own.
    assert fault.hits == 1


def test_sns_permanent_whole_batch_failure_is_narrowed_to_its_entry(
    world: World, make_settings: SettingsFactory
) -> None:
    """A PublishBatch refused as a whole is resent entry by entry: only the poisoned one fails."""
    topic_arn, spy = world.create_topic_with_spy("orders")
    fault = world.faults.add(
        Fault("sns", "PublishBatch", code="InvalidParameter", contains="poison-marker", times=2)
    )
    bodies = ["body-0", "body-1 poison-marker", "body-2"]
    jobs = [make_job(topic_arn, body=body, key=f"k-{n}") for n, body in enumerate(bodies)]
    deliveries = submit_sns(make_settings(), Target.from_arn(topic_arn), jobs)
    assert [delivery.accepted for delivery in deliveries] == [True, False, True]
    error = deliveries[1].error
    assert error is not None
    assert error.error_class is ErrorClass.PERMANENT
    assert error.code == "InvalidParameter"
    assert fault.hits == 2
    assert sorted(message["Body"] for message in world.drain(spy)) == ["body-0", "body-2"]


def test_sns_unpreparable_job_fails_alone(world: World, make_settings: SettingsFactory) -> None:
    """A key no message can carry is a permanent invalid payload naming the error; others go."""
    topic_arn, spy = world.create_topic_with_spy("orders")
    jobs = [make_job(topic_arn, key=LONE_SURROGATE), make_job(topic_arn, key="k-ok")]
    deliveries = submit_sns(make_settings(), Target.from_arn(topic_arn), jobs)
    error = deliveries[0].error
    assert error is not None
    assert error.error_class is ErrorClass.PERMANENT
    assert error.code == Refusal.INVALID_PAYLOAD
    assert "UnicodeEncodeError" in error.message
    assert deliveries[1].accepted
    assert len(world.drain(spy)) == 1


def test_sns_malformed_publish_answer_is_one_transient_verdict(
    world: World, make_settings: SettingsFactory
) -> None:
    """A PublishBatch 200 whose body is a proxy's page is transient for all, with no resends."""
    topic_arn, spy = world.create_topic_with_spy("orders")
    fault = world.faults.add(Fault("sns", "PublishBatch", answer=MALFORMED_REPLIES["html-page"]))
    jobs = [make_job(topic_arn, key=f"k-{n}") for n in range(2)]
    deliveries = submit_sns(make_settings(), Target.from_arn(topic_arn), jobs)
    for delivery in deliveries:
        assert delivery.error is not None
        assert delivery.error.error_class is ErrorClass.TRANSIENT
    assert fault.hits == 1
    assert world.drain(spy) == []
