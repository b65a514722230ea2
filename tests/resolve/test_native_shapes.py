"""AWS's own dead letters resolve with no envelope: Lambda, EventBridge, Scheduler, SQS."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retryd.discovery.feeds import FeedKind
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
from retryd.resolve.eventbridge_dlq import PERMANENT_ERROR_CODES, EventBridgeDlqResolver
from retryd.resolve.keys import hashed_key
from retryd.resolve.lambda_async import LambdaAsyncResolver
from retryd.resolve.lambda_destination import LambdaDestinationResolver
from retryd.resolve.sqs_redrive import SqsRedriveResolver
from retryd.resolve.static_route import StaticRouteResolver
from retryd.settings import Route
from retryd.targets.sqs_queue import dedup_id, group_id
from tests import strategies
from tests.conftest import SettingsFactory
from tests.native_helpers import (
    DLQ,
    FixedFeeds,
    feed_map,
    fixture,
    function_arn,
    letter,
    load_letter,
    queue,
    queue_arn,
    with_attributes,
)

ROUTED = function_arn("routed")
NO_ROUTES = StaticRouteResolver([])
ROUTE_DLQ = StaticRouteResolver([Route(queue="retry-*", target=ROUTED)])


def as_job(answer: Job | Unresolvable | None) -> Job:
    assert isinstance(answer, Job), answer
    return answer


def as_unresolvable(answer: Job | Unresolvable | None, reason: ParkReason) -> str:
    assert isinstance(answer, Unresolvable), answer
    assert answer.reason is reason, answer
    return answer.detail


# -- Lambda on-failure destination records ----------------------------------------------


def destination(letter_: DeadLetter) -> Job | Unresolvable | None:
    return LambdaDestinationResolver().resolve(letter_)


def record_with(**changes: object) -> dict[str, object]:
    """The documented invocation record with top-level or requestContext fields changed."""
    record: dict[str, object] = json.loads(fixture("lambda_destination_record")["Body"])
    context = dict(record["requestContext"])  # type: ignore[call-overload]
    for name, value in changes.items():
        if name in context or name in ("functionArn", "condition", "approximateInvokeCount"):
            context[name] = value
        else:
            record[name] = value
    record["requestContext"] = context
    return record


def test_destination_record_resubmits_the_request_payload_to_its_function() -> None:
    """The documented record becomes an invoke of the function with requestPayload as JSON text."""
    job = as_job(destination(load_letter("lambda_destination_record")))
    assert job.target == Target(
        TargetType.LAMBDA, "arn:aws:lambda:us-east-2:123456789012:function:my-function"
    )
    assert json.loads(job.body) == {
        "ORDER_IDS": [
            "9e07af03-ce31-4ff3-xmpl-36dce652cb4f",
            "637de236-e7b2-464e-xmpl-baf57f86bb53",
            "a81ddca6-2c35-45c7-xmpl-c3a03a31ed15",
        ]
    }
    assert job.key == hashed_key(job.target.arn, job.body)
    assert job.first_failed_at == datetime(2019, 11, 14, 18, 16, 5, 568000, tzinfo=UTC)
    assert job.resolver == "lambda-destination"


def test_a_destination_record_inside_an_sns_notification_resolves_as_the_raw_record() -> None:
    """Through an SNS topic without raw delivery, the record in `Message` gives the same job."""
    raw = as_job(destination(load_letter("lambda_destination_record")))
    wrapped = as_job(destination(load_letter("lambda_destination_record_sns")))
    assert (wrapped.target, wrapped.body, wrapped.key) == (raw.target, raw.body, raw.key)
    assert (wrapped.source_attempts, wrapped.first_failed_at) == (3, raw.first_failed_at)


def test_a_stream_pointer_inside_an_sns_notification_is_unwrapped_too() -> None:
    """A wrapped KinesisBatchInfo record is recognised (not left to the next resolver)."""
    notification = json.loads(fixture("lambda_destination_record_sns")["Body"])
    notification["Message"] = fixture("lambda_stream_kinesis")["Body"]
    assert destination(letter(notification)) is not None


@pytest.mark.parametrize(
    "message", ["not json", "[1, 2]", json.dumps({"requestContext": {"functionArn": "x"}})]
)
def test_an_sns_notification_of_something_else_is_not_a_destination_record(message: str) -> None:
    """A notification whose Message is no destination record is left to the next resolver."""
    notification = json.loads(fixture("lambda_destination_record_sns")["Body"])
    notification["Message"] = message
    assert destination(letter(notification)) is None


def test_lambdas_invocations_are_kept_apart_from_retryds_attempts() -> None:
    """approximateInvokeCount 3 is Lambda's: retryd has made none, so it resubmits as attempt 1."""
    job = as_job(destination(load_letter("lambda_destination_record")))
    assert (job.attempt, job.next_attempt, job.source_attempts) == (0, 1, 3)


@pytest.mark.parametrize("qualifier", ["live", "7"])
def test_destination_record_keeps_the_alias_or_version(qualifier: str) -> None:
    """An alias or version qualifier on functionArn is the target: that code failed."""
    arn = f"{function_arn('charge')}:{qualifier}"
    job = as_job(destination(letter(record_with(functionArn=arn))))
    assert job.target.arn == arn
    assert job.target.name == "charge"


def test_the_stamped_attempt_and_key_are_retryds_count_whatever_lambda_counted() -> None:
    """retryd's own stamps give its attempt and key; Lambda's count stays beside them."""
    stamped = letter(
        record_with(approximateInvokeCount=7),
        {"retryd.attempt": MessageAttribute.number(4), "retryd.key": "order-9"},
    )
    job = as_job(destination(stamped))
    assert (job.attempt, job.key, job.source_attempts) == (4, "order-9", 7)


@pytest.mark.parametrize("count", [0, -3, True, "3", 1.5, None])
def test_an_unusable_invoke_count_is_no_source_count(count: object) -> None:
    """Only a positive integer approximateInvokeCount is read; nothing is ever an attempt."""
    job = as_job(destination(letter(record_with(approximateInvokeCount=count))))
    assert (job.attempt, job.source_attempts) == (0, 0)


def test_a_null_request_payload_is_still_an_event() -> None:
    """requestPayload null is what the function was invoked with: it is resent as `null`."""
    assert as_job(destination(letter(record_with(requestPayload=None)))).body == "null"


@pytest.mark.parametrize(
    ("name", "stream", "shard", "first", "last"),
    [
        (
            "lambda_stream_kinesis",
            "arn:aws:kinesis:us-east-2:123456789012:stream/mystream",
            "shardId-000000000001",
            "49601189658422359378836298521827638475320189012309704722",
            "49601189658422359378836298522902373528957594348623495186",
        ),
        (
            "lambda_stream_dynamodb",
            "arn:aws:dynamodb:us-east-2:123456789012:table/mytable/stream/2019-11-14T00:04:06.388",
            "shardId-00000001573689847184-864758bb",
            "800000000003126276362",
            "800000000003126276362",
        ),
    ],
)
def test_stream_failure_records_are_not_replayable_and_say_where_the_data_is(
    name: str, stream: str, shard: str, first: str, last: str
) -> None:
    """A batch pointer is parked not-replayable with the stream, shard and sequence range."""
    detail = as_unresolvable(destination(load_letter(name)), ParkReason.NOT_REPLAYABLE)
    for part in (stream, shard, f"{first} to {last}", "RetryAttemptsExhausted"):
        assert part in detail


def test_other_batch_pointers_are_not_replayable_too() -> None:
    """Any *BatchInfo pointer (a future event source) is named by its key."""
    record = record_with()
    del record["requestPayload"]
    record["KafkaBatchInfo"] = {"shardId": "p-0", "streamArn": "arn:aws:kafka:x"}
    detail = as_unresolvable(destination(letter(record)), ParkReason.NOT_REPLAYABLE)
    assert detail.startswith("Kafka batch")
    assert "arn:aws:kafka:x" in detail


def test_a_record_without_payload_or_pointer_is_not_replayable() -> None:
    """No requestPayload at all: the event is not in the message."""
    record = record_with()
    del record["requestPayload"]
    detail = as_unresolvable(destination(letter(record)), ParkReason.NOT_REPLAYABLE)
    assert "no requestPayload" in detail


def test_a_success_record_is_not_retried() -> None:
    """A Success record in a DLQ is a misconfiguration: parked, never re-run."""
    detail = as_unresolvable(
        destination(letter(record_with(condition="Success"))), ParkReason.UNRESOLVABLE
    )
    assert "success record" in detail


@pytest.mark.parametrize(
    "arn", ["arn:aws:sqs:us-east-1:123456789012:q", "not an arn", 42, None, ["x"]]
)
def test_a_function_arn_that_is_not_a_function_is_unresolvable(arn: object) -> None:
    """functionArn must name a Lambda function; anything else is parked with why."""
    detail = as_unresolvable(
        destination(letter(record_with(functionArn=arn))), ParkReason.UNRESOLVABLE
    )
    assert "not a Lambda function ARN" in detail


@pytest.mark.parametrize(
    "body",
    [
        {"requestContext": {"requestId": "x", "stage": "prod"}, "body": "{}"},
        {"requestContext": {"functionArn": function_arn("f")}},
        {"requestContext": "RetriesExhausted"},
        [1, 2],
        "plain text",
    ],
)
def test_other_shapes_are_left_to_the_next_resolver(body: object) -> None:
    """API Gateway events and records without a condition are not this shape."""
    assert destination(letter(body if isinstance(body, str) else json.dumps(body))) is None


# -- EventBridge rule and Scheduler DLQs ---------------------------------------------------


def eventbridge(
    letter_: DeadLetter, routes: StaticRouteResolver = NO_ROUTES
) -> Job | Unresolvable | None:
    return EventBridgeDlqResolver(routes).resolve(letter_)


RULE_LETTER = load_letter("eventbridge_rule_dlq")


def test_rule_dlq_event_goes_straight_to_target_arn() -> None:
    """The event, unchanged, goes to TARGET_ARN; RETRY_ATTEMPTS is EventBridge's, not retryd's."""
    job = as_job(eventbridge(RULE_LETTER))
    assert job.target == Target(
        TargetType.LAMBDA, "arn:aws:lambda:us-east-1:123456789012:function:on-ec2-state"
    )
    assert job.body == RULE_LETTER.body
    assert (job.attempt, job.source_attempts) == (0, 3)
    assert job.key == hashed_key(job.target.arn, job.body)
    assert job.resolver == "eventbridge-dlq"


def test_eventbridge_metadata_is_not_forwarded_to_a_queue() -> None:
    """RULE_ARN, ERROR_CODE, ... stay behind; the event's own attributes (none here) go on."""
    routed = with_attributes(
        RULE_LETTER, TARGET_ARN=queue_arn("ec2-events"), tenant=MessageAttribute.string("acme")
    )
    job = as_job(eventbridge(routed))
    assert job.target.type is TargetType.SQS
    assert set(job.forward_attributes) == {"tenant"}


@pytest.mark.parametrize(
    ("arn", "kind"),
    [
        (queue_arn("ec2-events"), TargetType.SQS),
        ("arn:aws:sns:us-east-1:123456789012:ec2-events", TargetType.SNS),
        ("arn:aws:states:us-east-1:123456789012:stateMachine:on-ec2", TargetType.STEPFUNCTIONS),
    ],
)
def test_each_supported_target_gets_the_event_as_its_body(arn: str, kind: TargetType) -> None:
    """Queues, topics and state machines get the event text itself."""
    job = as_job(eventbridge(with_attributes(RULE_LETTER, TARGET_ARN=arn)))
    assert (job.target.type, job.body) == (kind, RULE_LETTER.body)


@pytest.mark.parametrize("code", sorted(PERMANENT_ERROR_CODES))
def test_permanent_error_codes_park_with_code_and_message(code: str) -> None:
    """A permanent ERROR_CODE parks source-error-permanent with "CODE: message"."""
    failed = with_attributes(RULE_LETTER, ERROR_CODE=code, ERROR_MESSAGE="it said no")
    detail = as_unresolvable(eventbridge(failed), ParkReason.SOURCE_ERROR_PERMANENT)
    assert detail == f"{code}: it said no"


@pytest.mark.parametrize(
    "code", ["THROTTLING", "TIMEOUT", "INTERNAL_ERROR", "SDK_CLIENT_ERROR", ""]
)
def test_transient_error_codes_are_resubmitted(code: str) -> None:
    """Throttling, timeouts and internal errors are worth another try."""
    assert isinstance(eventbridge(with_attributes(RULE_LETTER, ERROR_CODE=code)), Job)


def test_the_published_scheduler_example_is_a_permanent_target_error() -> None:
    """Scheduler passes on SQS's NonExistentQueue: parked with the code and the message."""
    detail = as_unresolvable(
        eventbridge(load_letter("scheduler_dlq")), ParkReason.SOURCE_ERROR_PERMANENT
    )
    assert detail == (
        "AWS.SimpleQueueService.NonExistentQueue: "
        "The specified queue does not exist for this wsdl version."
    )


SCHEDULED = with_attributes(
    load_letter("scheduler_dlq"),
    ERROR_CODE="ThrottlingException",
    ERROR_MESSAGE="Rate exceeded",
    TARGET_ARN=queue_arn("reports"),
)


def test_a_scheduler_dlq_message_goes_to_its_templated_target() -> None:
    """A schedule's input goes back to its target; SCHEDULED_TIME is when it first failed."""
    job = as_job(eventbridge(SCHEDULED))
    assert job.target == Target(TargetType.SQS, queue_arn("reports"))
    assert job.body == SCHEDULED.body
    assert job.first_failed_at == datetime(2022, 5, 14, 1, 12, tzinfo=UTC)


def test_scheduler_without_exhausted_retry_condition_is_permanent() -> None:
    """Scheduler sets EXHAUSTED_RETRY_CONDITION only for retryable errors: its absence is final."""
    final = with_attributes(SCHEDULED, ERROR_CODE="SomeTargetError", EXHAUSTED_RETRY_CONDITION=None)
    detail = as_unresolvable(eventbridge(final), ParkReason.SOURCE_ERROR_PERMANENT)
    assert detail.startswith("SomeTargetError: ")


def test_scheduler_internal_errors_stay_retryable_without_the_condition() -> None:
    """Scheduler's own InternalServerError is transient even when the condition is missing."""
    internal = with_attributes(
        SCHEDULED, ERROR_CODE="AWS.Scheduler.InternalServerError", EXHAUSTED_RETRY_CONDITION=None
    )
    assert isinstance(eventbridge(internal), Job)


def test_a_truncated_payload_is_parked_even_when_routed() -> None:
    """IS_PAYLOAD_TRUNCATED=true parks payload-truncated: no route can restore the rest."""
    truncated = with_attributes(SCHEDULED, IS_PAYLOAD_TRUNCATED="TRUE")
    detail = as_unresolvable(eventbridge(truncated, ROUTE_DLQ), ParkReason.PAYLOAD_TRUNCATED)
    assert "IS_PAYLOAD_TRUNCATED" in detail


UNIVERSAL = with_attributes(SCHEDULED, TARGET_ARN="arn:aws:scheduler:::aws-sdk:sqs:sendMessage")


@pytest.mark.parametrize(
    ("arn", "said"),
    [
        ("arn:aws:scheduler:::aws-sdk:sqs:sendMessage", "Scheduler universal target"),
        ("arn:aws:kinesis:us-east-1:123456789012:stream/clicks", "kinesis target"),
        ("arn:aws:ecs:us-east-1:123456789012:cluster/jobs", "ecs target"),
        ("arn:aws:events:us-east-1:123456789012:api-destination/crm/abc", "events target"),
        ("arn:aws:lambda:us-east-1:123456789012:layer:x", "lambda target"),
        ("not-an-arn", "is not an ARN"),
        ("arn:aws:sqs:us-east-1:abc:orders", "account 'abc' is not a 12-digit"),
    ],
)
def test_targets_retryd_cannot_call_are_unsupported(arn: str, said: str) -> None:
    """Universal targets, Kinesis, ECS, API destinations ... park unsupported-target."""
    detail = as_unresolvable(
        eventbridge(with_attributes(SCHEDULED, TARGET_ARN=arn)), ParkReason.UNSUPPORTED_TARGET
    )
    assert said in detail
    assert "static route for queue retry-orders" in detail


def test_a_static_route_takes_over_an_unsupported_target() -> None:
    """With a route for the queue, the route's target gets the body."""
    job = as_job(eventbridge(UNIVERSAL, ROUTE_DLQ))
    assert (job.target.arn, job.body) == (ROUTED, UNIVERSAL.body)


def test_a_supported_target_arn_wins_over_a_static_route() -> None:
    """What the message says about itself outranks the operator's route for the queue."""
    job = as_job(eventbridge(RULE_LETTER, ROUTE_DLQ))
    assert job.target.arn.endswith("function:on-ec2-state")


def bus_letter(rule: str, bus_arn: str) -> DeadLetter:
    return with_attributes(RULE_LETTER, RULE_ARN=rule, TARGET_ARN=bus_arn)


def test_a_cross_bus_target_gets_a_put_events_entry_built_from_the_event() -> None:
    """An event-bus target (another bus, another account) gets the event as a PutEvents entry."""
    job = as_job(
        eventbridge(
            bus_letter(
                "arn:aws:events:us-east-1:123456789012:rule/orders/forward",
                "arn:aws:events:us-east-1:210987654321:event-bus/audit",
            )
        )
    )
    assert job.target.type is TargetType.EVENTBRIDGE
    assert json.loads(job.body) == {
        "Source": "aws.ec2",
        "DetailType": "EC2 Instance State-change Notification",
        "Detail": '{"instance-id":"i-abcd1111","state":"pending"}',
        "Resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-abcd1111"],
        "Time": "2021-11-11T21:29:54Z",
    }


@pytest.mark.parametrize(
    ("rule", "bus"),
    [
        ("rule/forward", "event-bus/default"),
        ("rule/orders/forward", "event-bus/orders"),
    ],
)
def test_the_rules_own_bus_is_never_a_target(rule: str, bus: str) -> None:
    """Re-putting on the rule's own bus would reach every rule on it: unsupported."""
    prefix = "arn:aws:events:us-east-1:123456789012:"
    detail = as_unresolvable(
        eventbridge(bus_letter(prefix + rule, prefix + bus)), ParkReason.UNSUPPORTED_TARGET
    )
    assert "every rule" in detail


def test_a_bus_target_needs_an_event_body() -> None:
    """A body without source/detail-type/detail cannot become a PutEvents entry."""
    not_event = DeadLetter(
        DLQ,
        "m",
        "r",
        '{"hello": "world"}',
        {},
        dict(
            bus_letter(
                "arn:aws:events:us-east-1:123456789012:rule/orders/forward",
                "arn:aws:events:us-east-1:123456789012:event-bus/audit",
            ).message_attributes
        ),
    )
    detail = as_unresolvable(eventbridge(not_event), ParkReason.UNSUPPORTED_TARGET)
    assert "not an event" in detail


@pytest.mark.parametrize("text", ["", "x", "-1", "1e3", "9" * 30, " 2 "])
def test_retry_attempts_must_be_a_plain_count(text: str) -> None:
    """RETRY_ATTEMPTS is read only as a plain non-negative integer (spaces trimmed)."""
    expected = 2 if text == " 2 " else 0
    job = as_job(eventbridge(with_attributes(RULE_LETTER, RETRY_ATTEMPTS=text)))
    assert (job.attempt, job.source_attempts) == (0, expected)


@pytest.mark.parametrize(("stamp", "retries"), [(1, 185), (9, 3)])
def test_only_retryds_stamp_is_the_attempt_whatever_retry_attempts_says(
    stamp: int, retries: int
) -> None:
    """retryd's stamp is its attempt; RETRY_ATTEMPTS is kept beside it, never merged in."""
    stamped = with_attributes(
        RULE_LETTER,
        RETRY_ATTEMPTS=str(retries),
        **{"retryd.attempt": MessageAttribute.number(stamp)},
    )
    job = as_job(eventbridge(stamped))
    assert (job.attempt, job.source_attempts) == (stamp, retries)


def test_eventbridge_default_policy_leaves_retryd_its_first_attempt() -> None:
    """RETRY_ATTEMPTS=185 (EventBridge's default policy): retryd's next attempt is still 1."""
    job = as_job(eventbridge(with_attributes(RULE_LETTER, RETRY_ATTEMPTS="185")))
    assert (job.next_attempt, job.source_attempts) == (1, 185)


@pytest.mark.parametrize("missing", ["TARGET_ARN", "RULE_ARN"])
def test_without_target_and_source_it_is_not_this_shape(missing: str) -> None:
    """TARGET_ARN plus RULE_ARN or SCHEDULE_ARN is what marks the shape."""
    assert eventbridge(with_attributes(RULE_LETTER, **{missing: None})) is None


# -- Lambda asynchronous-invocation DLQs -----------------------------------------------------

ASYNC_LETTER = load_letter("lambda_async_dlq")


def lambda_async(letter_: DeadLetter, feeds: FixedFeeds) -> Job | Unresolvable | None:
    return LambdaAsyncResolver(feeds).resolve(letter_)


def test_a_lambda_dlq_message_goes_back_to_the_one_function_feeding_the_queue() -> None:
    """The event, unchanged, is invoked on the function whose DLQ this queue is."""
    feeds = feed_map({DLQ: [(FeedKind.LAMBDA_DLQ, function_arn("resize"))]})
    job = as_job(lambda_async(ASYNC_LETTER, feeds))
    assert job.target == Target(TargetType.LAMBDA, function_arn("resize"))
    assert job.body == ASYNC_LETTER.body
    assert (job.attempt, job.resolver) == (0, "lambda-async-dlq")


def test_an_on_failure_destination_feeds_the_same_way() -> None:
    """A function whose on-failure destination is the queue (qualifier kept) is its source too."""
    feeds = feed_map({DLQ: [(FeedKind.LAMBDA_ON_FAILURE, function_arn("resize") + ":live")]})
    assert as_job(lambda_async(ASYNC_LETTER, feeds)).target.arn.endswith("function:resize:live")


def test_two_functions_on_one_dlq_are_ambiguous_and_named() -> None:
    """Nothing in the message says which function: parked ambiguous-target naming both."""
    feeds = feed_map(
        {
            DLQ: [
                (FeedKind.LAMBDA_DLQ, function_arn("a")),
                (FeedKind.LAMBDA_ON_FAILURE, function_arn("b")),
            ]
        }
    )
    detail = as_unresolvable(lambda_async(ASYNC_LETTER, feeds), ParkReason.AMBIGUOUS_TARGET)
    assert function_arn("a") in detail
    assert function_arn("b") in detail


def test_a_lambda_shaped_message_with_no_known_function_says_why() -> None:
    """Lambda's attributes but no feeding function: parked, naming the feed map's gap."""
    feeds = feed_map({}, errors=["ListFunctions: AccessDeniedException"])
    detail = as_unresolvable(lambda_async(ASYNC_LETTER, feeds), ParkReason.UNRESOLVABLE)
    assert "RequestID e4b46cbf" in detail
    assert "AccessDeniedException" in detail


def test_a_plain_message_on_an_unknown_queue_is_not_this_shape() -> None:
    """Without Lambda's attributes or a feeding function, the next resolver decides."""
    assert lambda_async(letter({"x": 1}), FixedFeeds()) is None


def test_a_redriven_message_is_left_to_the_sqs_resolver() -> None:
    """DeadLetterQueueSourceArn means SQS moved it here, whatever else feeds the queue."""
    feeds = feed_map({DLQ: [(FeedKind.LAMBDA_DLQ, function_arn("resize"))]})
    redriven = letter({"x": 1}, system={"DeadLetterQueueSourceArn": queue_arn("orders")})
    assert lambda_async(redriven, feeds) is None


def test_on_a_queue_fed_by_both_only_lambda_attributes_claim_a_message() -> None:
    """A queue that is both a function's DLQ and a redrive DLQ: attributes decide."""
    feeds = feed_map(
        {
            DLQ: [
                (FeedKind.LAMBDA_DLQ, function_arn("resize")),
                (FeedKind.SQS_REDRIVE, queue_arn("orders")),
            ]
        }
    )
    assert lambda_async(letter({"x": 1}), feeds) is None
    assert isinstance(lambda_async(ASYNC_LETTER, feeds), Job)


# -- SQS redrive-policy DLQs -----------------------------------------------------------------


def redrive(letter_: DeadLetter, feeds: FixedFeeds | None = None) -> Job | Unresolvable | None:
    return SqsRedriveResolver(feeds or FixedFeeds()).resolve(letter_)


def test_dead_letter_queue_source_arn_names_the_queue_to_resend_to() -> None:
    """Real AWS's system attribute is enough: body and attributes go back to the source."""
    redriven = load_letter("sqs_redrive_dlq")
    job = as_job(redrive(redriven))
    assert job.target == Target(TargetType.SQS, "arn:aws:sqs:us-east-1:177715257436:MyQueue")
    assert job.body == "This is a test message"
    assert job.forward_attributes == {"tenant": MessageAttribute.string("acme")}
    assert job.resolver == "sqs-redrive"


def test_the_system_attribute_wins_over_an_ambiguous_feed_map() -> None:
    """When SQS names the source, two redrive sources are no longer ambiguous."""
    feeds = feed_map(
        {DLQ: [(FeedKind.SQS_REDRIVE, queue_arn("a")), (FeedKind.SQS_REDRIVE, queue_arn("b"))]}
    )
    redriven = letter("x", system={"DeadLetterQueueSourceArn": queue_arn("b")})
    assert as_job(redrive(redriven, feeds)).target.arn == queue_arn("b")


def test_the_only_redrive_source_is_used_without_the_attribute() -> None:
    """ListDeadLetterSourceQueues naming one queue resolves messages that do not say."""
    feeds = feed_map({DLQ: [(FeedKind.SQS_REDRIVE, queue_arn("orders"))]})
    stamped = letter("x", {"retryd.attempt": MessageAttribute.number(2)})
    job = as_job(redrive(stamped, feeds))
    assert (job.target.arn, job.attempt) == (queue_arn("orders"), 2)


def test_several_redrive_sources_without_the_attribute_are_ambiguous() -> None:
    """Two queues redrive here and the message does not say which: ambiguous-target."""
    feeds = feed_map(
        {DLQ: [(FeedKind.SQS_REDRIVE, queue_arn("a")), (FeedKind.SQS_REDRIVE, queue_arn("b"))]}
    )
    detail = as_unresolvable(redrive(letter("x"), feeds), ParkReason.AMBIGUOUS_TARGET)
    assert queue_arn("a") in detail
    assert "DeadLetterQueueSourceArn is missing" in detail


def test_no_redrive_source_is_not_this_shape() -> None:
    """No attribute and no known source: the next resolver (or none) decides."""
    assert redrive(letter("x")) is None


@pytest.mark.parametrize("named", ["arn:aws:sns:us-east-1:123456789012:t", "garbage"])
def test_a_source_arn_that_is_not_a_queue_is_unresolvable(named: str) -> None:
    """A DeadLetterQueueSourceArn that is not an SQS ARN is parked, not guessed at."""
    detail = as_unresolvable(
        redrive(letter("x", system={"DeadLetterQueueSourceArn": named})), ParkReason.UNRESOLVABLE
    )
    assert "is not an SQS queue ARN" in detail


def test_a_fifo_source_keeps_the_group_and_gets_a_dedup_id_from_the_key() -> None:
    """The resubmission keeps MessageGroupId; its dedup id derives from key and message."""
    fifo_dlq = queue("retry-orders.fifo")
    redriven = letter(
        "x",
        system={
            "DeadLetterQueueSourceArn": queue_arn("orders.fifo"),
            "MessageGroupId": "customer-7",
        },
        on=fifo_dlq,
    )
    job = as_job(redrive(redriven))
    assert job.target.is_fifo
    assert group_id(job) == "customer-7"
    assert dedup_id(job) != dedup_id(
        as_job(redrive(with_attributes(redriven, **{"retryd.key": "k2"})))
    )
    assert len(dedup_id(job)) == 64


# -- the whole chain --------------------------------------------------------------------------


def test_chain_order_follows_the_design(make_settings: SettingsFactory) -> None:
    """Self-describing shapes, then static routes, then what the feed map infers."""
    assert build_chain(make_settings()).names == (
        "envelope",
        "lambda-destination",
        "stepfunctions-execution",
        "eventbridge-dlq",
        "static-route",
    )
    assert build_chain(make_settings(), FixedFeeds()).names[-2:] == (
        "lambda-async-dlq",
        "sqs-redrive",
    )


@pytest.mark.parametrize(
    ("name", "outcome"),
    [
        ("lambda_destination_record", "lambda-destination"),
        # The documented records' streams are in us-east-2, outside the test allowlist:
        # never read (tests/resolve/test_stream_batches.py has those that are).
        ("lambda_stream_kinesis", ParkReason.TARGET_NOT_ALLOWED),
        ("lambda_stream_dynamodb", ParkReason.TARGET_NOT_ALLOWED),
        ("eventbridge_rule_dlq", "eventbridge-dlq"),
        ("scheduler_dlq", ParkReason.SOURCE_ERROR_PERMANENT),
        ("lambda_async_dlq", "lambda-async-dlq"),
        ("sqs_redrive_dlq", "sqs-redrive"),
        ("stepfunctions_execution_failed", "stepfunctions-execution"),
        ("lambda_destination_record_sns", "lambda-destination"),
    ],
)
def test_every_fixture_resolves_through_the_chain_with_no_route(
    make_settings: SettingsFactory, name: str, outcome: str | ParkReason
) -> None:
    """Each documented shape lands with its resolver, or parks with its reason."""
    feeds = feed_map({DLQ: [(FeedKind.LAMBDA_DLQ, function_arn("resize"))]})
    answer = build_chain(make_settings(), feeds).resolve(load_letter(name))
    if isinstance(outcome, ParkReason):
        assert isinstance(answer, Unresolvable)
        assert answer.reason is outcome
    else:
        assert as_job(answer).resolver == outcome


def test_a_static_route_settles_an_ambiguous_lambda_dlq(make_settings: SettingsFactory) -> None:
    """Routes come before inferred resolvers: the operator's word ends the ambiguity."""
    feeds = feed_map(
        {DLQ: [(FeedKind.LAMBDA_DLQ, function_arn("a")), (FeedKind.LAMBDA_DLQ, function_arn("b"))]}
    )
    routed = make_settings(routes=[{"queue": "retry-orders", "target": function_arn("a")}])
    job = as_job(build_chain(routed, feeds).resolve(ASYNC_LETTER))
    assert (job.resolver, job.target.arn) == ("static-route", function_arn("a"))


# -- never raising ----------------------------------------------------------------------------

_NAMES = [
    "TARGET_ARN",
    "RULE_ARN",
    "SCHEDULE_ARN",
    "ERROR_CODE",
    "ERROR_MESSAGE",
    "RETRY_ATTEMPTS",
    "EXHAUSTED_RETRY_CONDITION",
    "IS_PAYLOAD_TRUNCATED",
    "SCHEDULED_TIME",
    "RequestID",
    "ErrorCode",
    "retryd.attempt",
    "retryd.key",
    "retryd.first-failed-at",
]
_ARNS = [
    function_arn("f"),
    function_arn("f") + ":live",
    queue_arn("q"),
    queue_arn("q.fifo"),
    "arn:aws:events:us-east-1:123456789012:event-bus/default",
    "arn:aws:events:us-east-1:123456789012:rule/default/r",
    "arn:aws:events:us-east-1:123456789012:rule/r",
    "arn:aws:scheduler:::aws-sdk:sqs:sendMessage",
    "arn:aws:kinesis:us-east-1:123456789012:stream/s",
    "arn::::",
]
_texts = (
    st.sampled_from(_ARNS) | st.text(max_size=20) | st.sampled_from(["true", "3", "NO_RESOURCE"])
)
_attributes = st.dictionaries(
    st.sampled_from(_NAMES) | st.text(max_size=6),
    st.builds(
        MessageAttribute,
        st.sampled_from(["String", "Number", "Binary", "Number.int"]),
        _texts | st.none(),
        st.none() | st.binary(max_size=4),
    ),
    max_size=6,
)
_system = st.dictionaries(
    st.sampled_from(["DeadLetterQueueSourceArn", "MessageGroupId", "SentTimestamp"]),
    _texts,
    max_size=3,
)
_record_like = st.fixed_dictionaries(
    {
        "requestContext": st.dictionaries(
            st.sampled_from(["functionArn", "condition", "approximateInvokeCount"]),
            strategies.json_values() | st.sampled_from(_ARNS),
        )
    },
    optional={
        "requestPayload": strategies.json_values(),
        "KinesisBatchInfo": strategies.json_values(),
        "timestamp": strategies.json_values() | st.just("2019-11-14T18:16:05.568Z"),
        "source": st.text(max_size=5),
        "detail-type": st.text(max_size=5),
        "detail": strategies.json_values(),
    },
).map(json.dumps)
_bodies = st.text(max_size=40) | strategies.json_values().map(json.dumps) | _record_like
_feeds = st.lists(
    st.tuples(st.sampled_from(list(FeedKind)), st.sampled_from(_ARNS)), max_size=3
).map(lambda entries: feed_map({DLQ: entries}))


@settings(max_examples=300, deadline=None)
@given(body=_bodies, attributes=_attributes, system=_system, feeds=_feeds)
def test_no_resolver_raises_on_arbitrary_messages(
    body: str, attributes: dict[str, MessageAttribute], system: dict[str, str], feeds: FixedFeeds
) -> None:
    """Every native resolver answers a Job, an Unresolvable or None for any body and attributes."""
    arbitrary = DeadLetter(DLQ, "m", "r", body, system, attributes)
    for resolver in (
        LambdaDestinationResolver(),
        EventBridgeDlqResolver(NO_ROUTES),
        EventBridgeDlqResolver(ROUTE_DLQ),
        LambdaAsyncResolver(feeds),
        SqsRedriveResolver(feeds),
    ):
        answer = resolver.resolve(arbitrary)
        assert answer is None or isinstance(answer, Job | Unresolvable)
        if isinstance(answer, Job):
            assert isinstance(answer.body, str)
            assert answer.key
            assert Target.from_arn(answer.target.arn) == answer.target


# make_settings is a pure factory: sharing it between examples is safe.
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=_bodies, attributes=_attributes, system=_system, feeds=_feeds)
def test_the_whole_chain_never_hits_a_resolver_failure(
    make_settings: SettingsFactory,
    body: str,
    attributes: dict[str, MessageAttribute],
    system: dict[str, str],
    feeds: FixedFeeds,
) -> None:
    """The chain resolves or parks every message, and never because a resolver raised."""
    chain = build_chain(make_settings(routes=[{"queue": "retry-*", "target": ROUTED}]), feeds)
    answer = chain.resolve(DeadLetter(DLQ, "m", "r", body, system, attributes))
    if isinstance(answer, Unresolvable):
        assert "failed:" not in answer.detail
    else:
        assert isinstance(answer, Job)
