"""`retryd once` drains DLQs filled the way AWS fills them; routes only for ambiguous cases."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from structlog.testing import capture_logs

from retryd.models import Job, Outcome
from retryd.targets.sqs_queue import dedup_id
from tests.conftest import SettingsFactory
from tests.e2e.helpers import cycle, number, string
from tests.native_helpers import PARKING, detail_of, fixture, parked_by_reason
from tests.world import World


def fail_until_redriven(world: World, source: str, dlq: str) -> None:
    """Receive from `source` without deleting until SQS's redrive policy moves it to `dlq`."""
    sqs = world.client("sqs")
    url = world.queue_url(source)
    for _ in range(5):
        sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, WaitTimeSeconds=0)
        if world.depth(dlq) == 1:
            return
    raise AssertionError(f"redrive policy never moved the message to {dlq}")


def with_redrive(world: World, source: str, dlq: str) -> None:
    policy = json.dumps({"deadLetterTargetArn": world.queue_arn(dlq), "maxReceiveCount": "1"})
    world.create_queue(source, RedrivePolicy=policy)


def invocation_payloads(world: World, qualified: str) -> list[Any]:
    """Payloads of the Invoke calls whose path names `qualified` (function[:qualifier])."""
    return [
        json.loads(call["payload"])
        for call in world.invocations()
        if f"function:{qualified}/" in unquote(call["url"])
    ]


def parked(world: World) -> dict[str, list[dict[str, Any]]]:
    return parked_by_reason(world.drain(PARKING))


# -- SQS redrive policy ---------------------------------------------------------------------


def test_a_redriven_message_goes_back_to_its_source_and_counts_its_trips(
    world: World, make_settings: SettingsFactory
) -> None:
    """maxReceiveCount fills the DLQ; retryd resends to the source twice, attempt 1 then 2.

    moto does not set DeadLetterQueueSourceArn, so the source comes from
    ListDeadLetterSourceQueues (one source queue).
    """
    world.create_queue(PARKING)
    world.create_queue("retry-orders")
    with_redrive(world, "orders", "retry-orders")
    world.send("orders", {"orderId": 7}, attributes={"tenant": string("acme")})
    fail_until_redriven(world, "orders", "retry-orders")

    first = cycle(make_settings())

    assert first.outcomes == {"resubmitted": 1}
    assert world.depth("retry-orders") == 0
    (back,) = world.drain("orders")
    assert json.loads(back["Body"]) == {"orderId": 7}
    attributes = back["MessageAttributes"]
    assert attributes["tenant"]["StringValue"] == "acme"
    assert attributes["retryd.attempt"]["StringValue"] == "1"

    # The consumer fails it again: the stamp rides through the redrive policy.
    world.send("orders", back["Body"], attributes=attributes)
    fail_until_redriven(world, "orders", "retry-orders")
    second = cycle(make_settings())

    assert second.decisions is not None
    # The stamp said attempt 1 was made: this resubmission is attempt 2.
    assert [d.attempt for d in second.decisions] == [2]
    (again,) = world.drain("orders")
    assert again["MessageAttributes"]["retryd.attempt"]["StringValue"] == "2"
    assert again["MessageAttributes"]["tenant"]["StringValue"] == "acme"


def test_a_fifo_source_keeps_its_group_and_gets_a_key_derived_dedup_id(
    world: World, make_settings: SettingsFactory
) -> None:
    """A FIFO source's message returns in its own group with a dedup id from its key."""
    world.create_queue(PARKING)
    world.create_queue("retry-orders.fifo")
    with_redrive(world, "orders.fifo", "retry-orders.fifo")
    world.send("orders.fifo", "order 8", MessageGroupId="customer-8", MessageDeduplicationId="d-8")
    fail_until_redriven(world, "orders.fifo", "retry-orders.fifo")

    report = cycle(make_settings())

    assert report.outcomes == {"resubmitted": 1}
    assert report.decisions is not None
    (back,) = world.drain("orders.fifo")
    assert back["Body"] == "order 8"
    assert back["Attributes"]["MessageGroupId"] == "customer-8"
    key = back["MessageAttributes"]["retryd.key"]["StringValue"]
    (decision,) = report.decisions
    assert decision.target is not None
    resent = Job(decision.letter, decision.target, "order 8", key)
    assert back["Attributes"]["MessageDeduplicationId"] == dedup_id(resent)


def test_two_redrive_sources_without_the_source_attribute_are_parked_ambiguous(
    world: World, make_settings: SettingsFactory
) -> None:
    """moto sends no DeadLetterQueueSourceArn: two sources cannot be told apart, so park.

    On real AWS the system attribute names the source and the message would go back.
    """
    world.create_queue(PARKING)
    world.create_queue("retry-shared")
    with_redrive(world, "left", "retry-shared")
    with_redrive(world, "right", "retry-shared")
    world.send("left", "from the left")
    fail_until_redriven(world, "left", "retry-shared")

    report = cycle(make_settings())

    assert report.outcomes == {"parked": 1}
    (message,) = parked(world)["ambiguous-target"]
    assert message["Body"] == "from the left"
    assert world.queue_arn("left") in detail_of(message)
    assert world.queue_arn("right") in detail_of(message)


# -- EventBridge rule and Scheduler DLQs ------------------------------------------------------


def real_event(world: World) -> str:
    """An event as EventBridge delivers it to a target, captured through a rule to SQS."""
    events = world.client("events")
    world.create_queue("captured")
    events.put_rule(Name="orders-rule", EventPattern=json.dumps({"source": ["shop"]}))
    events.put_targets(
        Rule="orders-rule", Targets=[{"Id": "capture", "Arn": world.queue_arn("captured")}]
    )
    events.put_events(
        Entries=[{"Source": "shop", "DetailType": "OrderPlaced", "Detail": '{"orderId": "42"}'}]
    )
    (captured,) = world.drain("captured")
    body: str = captured["Body"]
    return body


def test_an_eventbridge_dlq_message_is_resubmitted_to_target_arn(
    world: World, make_settings: SettingsFactory
) -> None:
    """The rule's event reaches TARGET_ARN (a Lambda) directly; permanent errors are parked.

    moto's EventBridge does not write DLQ messages, so they are built here as AWS
    documents them (eb-rule-dlq.html): the event as body, RULE_ARN, TARGET_ARN,
    ERROR_CODE, ERROR_MESSAGE, RETRY_ATTEMPTS, EXHAUSTED_RETRY_CONDITION attributes.
    """
    world.create_queue(PARKING)
    world.create_queue("retry-events")
    notify = world.create_function("notify")
    event = real_event(world)
    rule_arn = world.client("events").describe_rule(Name="orders-rule")["Arn"]
    failure = {
        "RULE_ARN": string(rule_arn),
        "TARGET_ARN": string(notify),
        "ERROR_CODE": string("THROTTLING"),
        "ERROR_MESSAGE": string("Rate exceeded."),
        "EXHAUSTED_RETRY_CONDITION": string("MaximumRetryAttempts"),
        "RETRY_ATTEMPTS": string("2"),
    }
    world.send("retry-events", event, attributes=failure)
    denied = {**failure, "ERROR_CODE": string("NO_PERMISSIONS"), "ERROR_MESSAGE": string("denied")}
    world.send("retry-events", event, attributes=denied)
    world.record()

    report = cycle(make_settings())

    assert report.outcomes == {"resubmitted": 1, "parked": 1}
    assert report.decisions is not None
    # RETRY_ATTEMPTS 2 were EventBridge's tries, not retryd's: its resubmission is attempt 1.
    resubmitted = [
        (d.attempt, d.source_attempts) for d in report.decisions if d.outcome is Outcome.RESUBMITTED
    ]
    assert resubmitted == [(1, 2)]
    assert invocation_payloads(world, "notify") == [json.loads(event)]
    (permanent,) = parked(world)["source-error-permanent"]
    assert detail_of(permanent) == "NO_PERMISSIONS: denied"
    assert world.depth("retry-events") == 0


def rule_dlq_attributes(retry_attempts: int, **stamps: dict[str, str]) -> dict[str, Any]:
    """The published rule-DLQ fixture's attributes, saying RETRY_ATTEMPTS=`retry_attempts`."""
    published = fixture("eventbridge_rule_dlq")["MessageAttributes"]
    attributes = {
        name: {"DataType": value["DataType"], "StringValue": value["StringValue"]}
        for name, value in published.items()
    }
    return {**attributes, "RETRY_ATTEMPTS": string(str(retry_attempts)), **stamps}


def test_eventbridge_default_retry_policy_still_leaves_retryd_all_its_attempts(
    world: World, make_settings: SettingsFactory
) -> None:
    """RETRY_ATTEMPTS=185 with max_attempts 5 is resubmitted as retryd's attempt 1, not parked.

    185 is what EventBridge's default retry policy makes over 24 hours; they are its
    tries, and guards.max_attempts counts retryd's resubmissions only.
    """
    world.create_queue(PARKING)
    world.create_queue("retry-events")
    world.create_function("on-ec2-state")
    body = fixture("eventbridge_rule_dlq")["Body"]
    world.send("retry-events", body, attributes=rule_dlq_attributes(185))
    world.record()

    with capture_logs() as logs:
        report = cycle(make_settings(guards={"max_attempts": 5}))

    assert report.outcomes == {"resubmitted": 1}
    assert report.decisions is not None
    (decision,) = report.decisions
    assert (decision.attempt, decision.source_attempts) == (1, 185)
    assert invocation_payloads(world, "on-ec2-state") == [json.loads(body)]
    (line,) = [entry for entry in logs if entry["event"] == "resubmitted"]
    assert (line["attempt"], line["source_attempts"]) == (1, 185)


def test_a_parked_eventbridge_message_names_the_source_tries_beside_retryds(
    world: World, make_settings: SettingsFactory
) -> None:
    """retryd's own 5 attempts park it; the parked detail also says EventBridge tried 185 times."""
    world.create_queue(PARKING)
    world.create_queue("retry-events")
    world.create_function("on-ec2-state")
    body = fixture("eventbridge_rule_dlq")["Body"]
    world.send(
        "retry-events",
        body,
        attributes=rule_dlq_attributes(185, **{"retryd.attempt": number(5)}),
    )

    report = cycle(make_settings(guards={"max_attempts": 5}))

    assert report.outcomes == {"parked": 1}
    (message,) = parked(world)["attempts-exhausted"]
    detail = detail_of(message)
    assert detail.startswith("attempt 5 of at most 5 already made")
    assert "the source tried 185 time(s) before its DLQ; not counted by retryd" in detail
    # The original attributes, RETRY_ATTEMPTS among them, are kept on the parked copy.
    assert message["MessageAttributes"]["RETRY_ATTEMPTS"]["StringValue"] == "185"


def test_a_cross_bus_target_gets_the_event_put_on_that_bus(
    world: World, make_settings: SettingsFactory
) -> None:
    """A rule whose target is another bus: the event is put on that bus, not the rule's."""
    world.create_queue(PARKING)
    world.create_queue("retry-forward")
    event = real_event(world)
    audit_arn, audit_spy = world.create_bus_with_spy("audit", source="shop")
    rule_arn = world.client("events").describe_rule(Name="orders-rule")["Arn"]
    world.send(
        "retry-forward",
        event,
        attributes={
            "RULE_ARN": string(rule_arn),
            "TARGET_ARN": string(audit_arn),
            "ERROR_CODE": string("INTERNAL_ERROR"),
            "ERROR_MESSAGE": string("try again"),
            "RETRY_ATTEMPTS": string("0"),
        },
    )

    report = cycle(make_settings())

    assert report.outcomes == {"resubmitted": 1}
    (delivered,) = [json.loads(m["Body"]) for m in world.drain(audit_spy)]
    assert (delivered["source"], delivered["detail-type"]) == ("shop", "OrderPlaced")
    assert delivered["detail"] == {"orderId": "42"}
    # Nothing went back through the rule on the default bus.
    assert world.drain("captured") == []


def test_scheduler_dlq_messages_park_truncated_and_unsupported(
    world: World, make_settings: SettingsFactory
) -> None:
    """A truncated payload and a universal-target schedule are parked with their reasons."""
    world.create_queue(PARKING)
    world.create_queue("retry-schedules")
    published = fixture("scheduler_dlq")
    attributes = {
        name: {"DataType": value["DataType"], "StringValue": value["StringValue"]}
        for name, value in published["MessageAttributes"].items()
    }
    retryable = {**attributes, "ERROR_CODE": string("ThrottlingException")}
    world.send("retry-schedules", published["Body"], attributes=retryable)
    truncated = {
        **retryable,
        "IS_PAYLOAD_TRUNCATED": string("true"),
        "TARGET_ARN": string(world.queue_arn("reports")),
    }
    world.send("retry-schedules", '{"report": "da', attributes=truncated)

    report = cycle(make_settings())

    assert report.outcomes == {"parked": 2}
    by_reason = parked(world)
    assert "Scheduler universal target" in detail_of(by_reason["unsupported-target"][0])
    assert by_reason["payload-truncated"][0]["Body"] == '{"report": "da'


# -- Lambda destinations and async DLQs -------------------------------------------------------


def test_a_destination_record_is_invoked_on_the_qualified_function(
    world: World, make_settings: SettingsFactory
) -> None:
    """requestPayload goes to functionArn with its alias; a record of a stream outside the
    allowlist is parked."""
    world.create_queue(PARKING)
    world.create_queue("retry-charge")
    charge = world.create_function("charge")
    lambda_ = world.client("lambda")
    version = lambda_.publish_version(FunctionName="charge")["Version"]
    lambda_.create_alias(FunctionName="charge", Name="live", FunctionVersion=version)
    record = json.loads(fixture("lambda_destination_record")["Body"])
    record["requestContext"]["functionArn"] = f"{charge}:live"
    record["requestPayload"] = {"orderId": "42"}
    # The record's timestamp is when it failed: a fresh failure, not the docs' 2019 one.
    record["timestamp"] = datetime.now(UTC).isoformat()
    world.send("retry-charge", record)
    world.send("retry-charge", fixture("lambda_stream_kinesis")["Body"])
    world.record()

    report = cycle(make_settings())

    assert report.outcomes == {"resubmitted": 1, "parked": 1}
    assert invocation_payloads(world, "charge:live") == [{"orderId": "42"}]
    assert report.decisions is not None
    resubmitted = [d for d in report.decisions if d.outcome is Outcome.RESUBMITTED]
    # approximateInvokeCount 3 is Lambda's count: retryd's own resubmission is attempt 1.
    assert (resubmitted[0].attempt, resubmitted[0].source_attempts) == (1, 3)
    # The documented record's stream is in us-east-2, which the allowlist does not admit:
    # it is never read (tests/e2e/test_stream_batches.py replays those it admits).
    (pointer,) = parked(world)["target-not-allowed"]
    assert "arn:aws:kinesis:us-east-2:123456789012:stream/mystream" in detail_of(pointer)


def test_a_destination_record_through_an_sns_topic_is_invoked_whether_raw_or_not(
    world: World, make_settings: SettingsFactory
) -> None:
    """Lambda's SNS destinations into SQS subscriptions, one raw and one not: every record
    goes back to the function exactly once."""
    world.create_queue(PARKING)
    charge = world.create_function("charge")
    sns = world.client("sns")
    record = json.loads(fixture("lambda_destination_record")["Body"])
    record["requestContext"]["functionArn"] = charge
    record["timestamp"] = datetime.now(UTC).isoformat()
    for queue, raw in (("retry-raw", "true"), ("retry-wrapped", "false")):
        topic = sns.create_topic(Name=f"{queue}-topic")["TopicArn"]
        world.create_queue(queue)
        sns.subscribe(
            TopicArn=topic,
            Protocol="sqs",
            Endpoint=world.queue_arn(queue),
            Attributes={"RawMessageDelivery": raw},
        )
        for order in ("1", "2"):
            record["requestPayload"] = {"orderId": f"{queue}-{order}"}
            sns.publish(TopicArn=topic, Message=json.dumps(record))
    world.wait_visible(["retry-raw", "retry-wrapped"])
    world.record()

    report = cycle(make_settings())

    assert report.outcomes == {"resubmitted": 4}
    payloads = invocation_payloads(world, "charge")
    assert sorted(p["orderId"] for p in payloads) == [
        "retry-raw-1",
        "retry-raw-2",
        "retry-wrapped-1",
        "retry-wrapped-2",
    ]
    assert (world.depth("retry-raw"), world.depth("retry-wrapped")) == (0, 0)


def lambda_dlq_message(world: World, queue: str, event: dict[str, Any]) -> None:
    """What Lambda writes to a function's DLQ: the event, and three attributes."""
    world.send(
        queue,
        event,
        attributes={
            "RequestID": string("e4b46cbf-b738-xmpl-8880-a18cdf61200e"),
            "ErrorCode": number(200),
            "ErrorMessage": string("Process exited before completing request"),
        },
    )


def test_a_lambda_async_dlq_goes_back_to_the_function_that_feeds_it(
    world: World, make_settings: SettingsFactory
) -> None:
    """The queue is mapped to its function by the function's event-invoke config.

    moto does not store a function's DeadLetterConfig, so the queue is wired as the
    function's on-failure destination here; test_feeds covers DeadLetterConfig on
    ListFunctions' documented response shape.
    """
    world.create_queue(PARKING)
    world.create_queue("retry-resize")
    world.create_function("resize")
    world.client("lambda").put_function_event_invoke_config(
        FunctionName="resize",
        DestinationConfig={"OnFailure": {"Destination": world.queue_arn("retry-resize")}},
    )
    lambda_dlq_message(world, "retry-resize", {"image": "cat.png"})
    world.record()

    report = cycle(make_settings())

    assert report.outcomes == {"resubmitted": 1}
    assert invocation_payloads(world, "resize") == [{"image": "cat.png"}]
    assert world.depth("retry-resize") == 0


def test_two_functions_on_one_dlq_park_ambiguous_until_routed(
    world: World, make_settings: SettingsFactory
) -> None:
    """Shared by two functions: parked ambiguous-target; a route for the queue settles it."""
    world.create_queue(PARKING)
    world.create_queue("retry-shared")
    for name in ("thumbs", "previews"):
        world.create_function(name)
        world.client("lambda").put_function_event_invoke_config(
            FunctionName=name,
            DestinationConfig={"OnFailure": {"Destination": world.queue_arn("retry-shared")}},
        )
    lambda_dlq_message(world, "retry-shared", {"image": "dog.png"})

    unrouted = cycle(make_settings())

    assert unrouted.outcomes == {"parked": 1}
    (ambiguous,) = parked(world)["ambiguous-target"]
    assert "thumbs" in detail_of(ambiguous)
    assert "previews" in detail_of(ambiguous)

    lambda_dlq_message(world, "retry-shared", {"image": "dog.png"})
    world.record()
    thumbs = world.client("lambda").get_function(FunctionName="thumbs")["Configuration"]
    routed = cycle(
        make_settings(routes=[{"queue": "retry-shared", "target": thumbs["FunctionArn"]}])
    )

    assert routed.outcomes == {"resubmitted": 1}
    assert invocation_payloads(world, "thumbs") == [{"image": "dog.png"}]
