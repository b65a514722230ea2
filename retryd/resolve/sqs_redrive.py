"""SQS redrive-policy DLQs: the message as it was, back to the queue it came from.

SQS moves a message that was received `maxReceiveCount` times to the DLQ named
by the source queue's redrive policy, body and attributes unchanged. Real AWS
names the source in the `DeadLetterQueueSourceArn` system attribute (returned
when asked for, as every receive of retryd's does; SQS API reference,
ReceiveMessage). Where it is missing (older messages, emulators), the feed map's
ListDeadLetterSourceQueues answer is used when it names exactly one source.
"""

from __future__ import annotations

from retryd.discovery.feeds import FeedKind, FeedSource
from retryd.models import DeadLetter, Job, ParkReason, Target, TargetType, Unresolvable
from retryd.resolve.base import body_as_is

REDRIVE_SOURCE = "DeadLetterQueueSourceArn"


class SqsRedriveResolver:
    """Resends a redriven message, attributes kept, to its source queue."""

    name = "sqs-redrive"

    def __init__(self, feeds: FeedSource) -> None:
        self._feeds = feeds

    def resolve(self, letter: DeadLetter) -> Job | Unresolvable | None:
        named = letter.system_attributes.get(REDRIVE_SOURCE)
        if named:
            target = _queue_target(named)
            if target is None:
                return Unresolvable(
                    letter,
                    ParkReason.UNRESOLVABLE,
                    f"{REDRIVE_SOURCE} {named[:200]!r} is not an SQS queue ARN",
                )
            return self._job(letter, target)
        sources = sorted(
            {
                feed.source_arn
                for feed in self._feeds.current.of_kind(letter.queue.arn, FeedKind.SQS_REDRIVE)
            }
        )
        if not sources:
            return None
        if len(sources) > 1:
            return Unresolvable(
                letter,
                ParkReason.AMBIGUOUS_TARGET,
                f"{len(sources)} queues redrive into {letter.queue.name} "
                f"({', '.join(sources)}) and the message does not say which one it came "
                f"from ({REDRIVE_SOURCE} is missing); a static route for the queue decides",
            )
        target = _queue_target(sources[0])
        if target is None:
            return Unresolvable(
                letter, ParkReason.UNRESOLVABLE, f"{sources[0]} is not an SQS queue ARN"
            )
        return self._job(letter, target)

    def _job(self, letter: DeadLetter, target: Target) -> Job:
        # The attempt comes from the retryd.attempt stamp this message carried back
        # through the redrive policy (SQS keeps message attributes when it moves one).
        return body_as_is(letter, target, self.name)


def _queue_target(arn: str) -> Target | None:
    try:
        target = Target.from_arn(arn)
    except ValueError:
        return None
    return target if target.type is TargetType.SQS else None
