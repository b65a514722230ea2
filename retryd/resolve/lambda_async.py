"""Lambda asynchronous-invocation DLQs: the event as it was, from a function the queue must name.

Lambda sends a discarded event to a function's DLQ unchanged, adding only the
attributes RequestID (String), ErrorCode (Number, the HTTP status) and
ErrorMessage (String, its first 1 KB) (Lambda developer guide, "Dead-letter
queues" under asynchronous invocation). Nothing in the message names the
function, so the feed map says which function sends its failures to the queue:
its DeadLetterConfig, or an on-failure destination that is the queue.
"""

from __future__ import annotations

from retryd.discovery.feeds import FeedKind, FeedMap, FeedSource
from retryd.models import DeadLetter, Job, ParkReason, Target, TargetType, Unresolvable
from retryd.resolve.base import body_as_is

REQUEST_ID = "RequestID"
ERROR_CODE = "ErrorCode"
ERROR_MESSAGE = "ErrorMessage"
# Set by SQS on a message its redrive policy moved: such a message came from a
# queue, and is the SQS redrive resolver's to handle.
REDRIVE_SOURCE = "DeadLetterQueueSourceArn"
_LAMBDA_FEEDS = (FeedKind.LAMBDA_DLQ, FeedKind.LAMBDA_ON_FAILURE)


class LambdaAsyncResolver:
    """Resends a Lambda async DLQ message's body to the one function that feeds its queue."""

    name = "lambda-async-dlq"

    def __init__(self, feeds: FeedSource) -> None:
        # The cache, not a map: it is refreshed between cycles, this resolver is built once.
        self._feeds = feeds

    def resolve(self, letter: DeadLetter) -> Job | Unresolvable | None:
        function = _feeding_function(letter, self._feeds.current)
        if function is None or isinstance(function, Unresolvable):
            return function
        target = _function_target(function)
        if target is None:
            return Unresolvable(
                letter, ParkReason.UNRESOLVABLE, f"{function} is not a Lambda function ARN"
            )
        return body_as_is(letter, target, self.name)


def _feeding_function(letter: DeadLetter, feed_map: FeedMap) -> str | Unresolvable | None:
    """The one function feeding the letter's queue; why not, when it is ours; else None."""
    if letter.system_attributes.get(REDRIVE_SOURCE):
        return None
    queue_arn = letter.queue.arn
    functions = sorted({feed.source_arn for feed in feed_map.of_kind(queue_arn, *_LAMBDA_FEEDS)})
    also_redrive = bool(feed_map.of_kind(queue_arn, FeedKind.SQS_REDRIVE))
    if also_redrive and not _has_lambda_attributes(letter):
        # Both a function's DLQ and a queue's: only Lambda's attributes tell them apart.
        return None
    if not functions:
        if _has_lambda_attributes(letter) and not also_redrive:
            return Unresolvable(
                letter, ParkReason.UNRESOLVABLE, _unknown_function(letter, feed_map)
            )
        return None
    if len(functions) > 1:
        return Unresolvable(
            letter,
            ParkReason.AMBIGUOUS_TARGET,
            f"{len(functions)} functions send failures to queue {letter.queue.name} "
            f"({', '.join(functions)}) and the message does not say which one it came "
            "from; a static route for the queue decides",
        )
    return functions[0]


def _has_lambda_attributes(letter: DeadLetter) -> bool:
    attributes = letter.message_attributes
    return REQUEST_ID in attributes and ERROR_CODE in attributes


def _function_target(arn: str) -> Target | None:
    try:
        target = Target.from_arn(arn)
    except ValueError:
        return None
    return target if target.type is TargetType.LAMBDA else None


def _unknown_function(letter: DeadLetter, feed_map: FeedMap) -> str:
    request_id = (letter.attribute_string(REQUEST_ID) or "")[:100]
    detail = (
        f"a Lambda asynchronous DLQ message (RequestID {request_id}), but no function is "
        f"known to send its failures to queue {letter.queue.name}"
    )
    if feed_map.errors:
        detail += f"; the feed map is incomplete ({feed_map.errors[0]})"
    return detail + "; a static route for the queue decides"
