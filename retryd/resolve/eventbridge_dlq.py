"""EventBridge rule DLQs and EventBridge Scheduler DLQs: the event, and the target it missed.

EventBridge writes the undelivered event as the body and says what went wrong in
message attributes: RULE_ARN (Scheduler: SCHEDULE_ARN), TARGET_ARN, ERROR_CODE,
ERROR_MESSAGE, RETRY_ATTEMPTS, EXHAUSTED_RETRY_CONDITION, and for Scheduler also
EXECUTION_ID, SCHEDULED_TIME and IS_PAYLOAD_TRUNCATED. Sources:
https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-rule-dlq.html and
https://docs.aws.amazon.com/scheduler/latest/UserGuide/configuring-schedule-dlq.html

The event goes straight back to TARGET_ARN with that service's resubmitter. It
is never put back on the rule's bus: every rule on that bus would see it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from retryd.arns import Arn, is_account_id
from retryd.classify import PERMANENT_CODES, TRANSIENT_CODES
from retryd.models import (
    DeadLetter,
    Job,
    MessageAttribute,
    ParkReason,
    Target,
    TargetType,
    Unresolvable,
)
from retryd.resolve.base import (
    forward_attributes,
    parse_timestamp,
    stamped_attempt,
    stamped_first_failed_at,
    stamped_key,
)
from retryd.resolve.keys import compact_json, idempotency_key, parsed_json
from retryd.resolve.static_route import StaticRouteResolver

RULE_ARN = "RULE_ARN"
SCHEDULE_ARN = "SCHEDULE_ARN"
TARGET_ARN = "TARGET_ARN"
ERROR_CODE = "ERROR_CODE"
ERROR_MESSAGE = "ERROR_MESSAGE"
RETRY_ATTEMPTS = "RETRY_ATTEMPTS"
EXHAUSTED_RETRY_CONDITION = "EXHAUSTED_RETRY_CONDITION"
EXECUTION_ID = "EXECUTION_ID"
SCHEDULED_TIME = "SCHEDULED_TIME"
IS_PAYLOAD_TRUNCATED = "IS_PAYLOAD_TRUNCATED"
# EventBridge's own bookkeeping, not the event's: never forwarded to a queue or topic
# (it would also use up slots of SQS's 10-attribute cap that retryd's stamps need).
METADATA_ATTRIBUTES = frozenset(
    {
        RULE_ARN,
        SCHEDULE_ARN,
        TARGET_ARN,
        ERROR_CODE,
        ERROR_MESSAGE,
        RETRY_ATTEMPTS,
        EXHAUSTED_RETRY_CONDITION,
        EXECUTION_ID,
        SCHEDULED_TIME,
        IS_PAYLOAD_TRUNCATED,
    }
)

# ERROR_CODE values (EventBridge user guide, "Using dead-letter queues to process
# undelivered events", URL above) that say the event, the target or its permissions
# are wrong, so sending the same event to the same target again cannot succeed:
# a missing target or permission, an event the target rejects as malformed, a
# target the event already created, or a routing loop EventBridge refuses.
PERMANENT_ERROR_CODES = frozenset(
    {
        "NO_PERMISSIONS",
        "NO_RESOURCE",
        "INVALID_JSON",
        "INVALID_PARAMETER",
        "FAILED_TO_ASSUME_ROLE",
        "RESOURCE_ALREADY_EXISTS",
        "THIRD_ACCOUNT_HOP_DETECTED",
        "THIRD_REGION_HOP_DETECTED",
    }
)

# A rule on the default bus is `rule/<name>`; on any other bus `rule/<bus>/<name>`.
_DEFAULT_BUS = "default"
_RULE_PREFIX = "rule/"
_BUS_PREFIX = "event-bus/"
_RULE_PARTS_ON_CUSTOM_BUS = 2


@dataclass(frozen=True, slots=True)
class _Failure:
    """What the DLQ message's attributes say about the failed delivery."""

    source_arn: str
    target_arn: str
    is_scheduler: bool
    code: str
    message: str

    @property
    def source(self) -> str:
        return f"schedule {self.source_arn}" if self.is_scheduler else f"rule {self.source_arn}"


class EventBridgeDlqResolver:
    """Resolves EventBridge rule and Scheduler DLQ messages to their TARGET_ARN.

    `routes` only matter for a TARGET_ARN retryd cannot call (a Scheduler
    universal target, Kinesis, ECS, an API destination, ...): a static route for
    the queue then says where such messages go instead.
    """

    name = "eventbridge-dlq"

    def __init__(self, routes: StaticRouteResolver) -> None:
        self._routes = routes

    def resolve(self, letter: DeadLetter) -> Job | Unresolvable | None:
        failure = _failure(letter)
        if failure is None:
            return None
        if _flag(letter.attribute_string(IS_PAYLOAD_TRUNCATED)):
            return Unresolvable(
                letter,
                ParkReason.PAYLOAD_TRUNCATED,
                f"{failure.source} wrote a truncated payload (IS_PAYLOAD_TRUNCATED=true); "
                "the full input is in the schedule's target, not in this message",
            )
        if _is_permanent(letter, failure):
            return Unresolvable(
                letter, ParkReason.SOURCE_ERROR_PERMANENT, f"{failure.code}: {failure.message}"
            )
        direct = _direct_target(letter, failure)
        if isinstance(direct, str):
            routed = self._routes.target_for(letter.queue.name)
            if routed is None:
                return Unresolvable(
                    letter,
                    ParkReason.UNSUPPORTED_TARGET,
                    f"{direct}; a static route for queue {letter.queue.name} would send "
                    "these messages elsewhere",
                )
            return self._job(letter, routed, letter.body)
        target, body = direct
        return self._job(letter, target, body)

    def _job(self, letter: DeadLetter, target: Target, body: str) -> Job:
        return Job(
            letter=letter,
            target=target,
            body=body,
            key=idempotency_key(target.arn, body, stamped_key(letter)),
            # EventBridge's retries are its own (185 under the default policy): kept
            # apart, so that they never spend retryd's guards.max_attempts.
            attempt=stamped_attempt(letter) or 0,
            source_attempts=_retry_attempts(letter),
            resolver=self.name,
            first_failed_at=_first_failed_at(letter),
            forward_attributes=_event_attributes(letter),
        )


def _failure(letter: DeadLetter) -> _Failure | None:
    """The failure's attributes when this is an EventBridge/Scheduler DLQ message, else None."""
    target_arn = letter.attribute_string(TARGET_ARN)
    schedule_arn = letter.attribute_string(SCHEDULE_ARN)
    rule_arn = letter.attribute_string(RULE_ARN)
    source_arn = schedule_arn or rule_arn
    if not target_arn or not source_arn:
        return None
    return _Failure(
        source_arn=source_arn,
        target_arn=target_arn.strip(),
        is_scheduler=bool(schedule_arn),
        code=(letter.attribute_string(ERROR_CODE) or "").strip(),
        message=letter.attribute_string(ERROR_MESSAGE) or "",
    )


def _flag(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"


def _is_permanent(letter: DeadLetter, failure: _Failure) -> bool:
    """Whether the service that dead-lettered the event said retrying cannot help."""
    if failure.code in PERMANENT_ERROR_CODES:
        return True
    if not failure.is_scheduler:
        return False
    # Scheduler passes on the target API's own error code ("AWS.SimpleQueueService.
    # NonExistentQueue"), and sets EXHAUSTED_RETRY_CONDITION only when that error was
    # retryable (Scheduler user guide, URL above): its absence marks a permanent error.
    if failure.code in PERMANENT_CODES:
        return True
    short_code = failure.code.rsplit(".", 1)[-1]
    if failure.code in TRANSIENT_CODES or short_code in TRANSIENT_CODES:
        return False
    return not letter.attribute_string(EXHAUSTED_RETRY_CONDITION)


def _direct_target(letter: DeadLetter, failure: _Failure) -> tuple[Target, str] | str:
    """TARGET_ARN and the body to send it; or why retryd cannot send there itself."""
    try:
        target = Target.from_arn(failure.target_arn)
    except ValueError as exc:
        return _unsupported(failure, exc)
    if target.type is not TargetType.EVENTBRIDGE:
        return target, letter.body
    if _rule_bus(failure) == _bus_key(target):
        return (
            f"TARGET_ARN {target.arn} is the bus of {failure.source}: putting the event "
            "back there would deliver it to every rule on the bus again"
        )
    entry = _put_events_entry(letter.body)
    if entry is None:
        return (
            f"TARGET_ARN {target.arn} is an event bus, and the message body is not an "
            "event with source, detail-type and detail to put on it"
        )
    return target, entry


def _unsupported(failure: _Failure, refused: ValueError) -> str:
    try:
        arn = Arn.parse(failure.target_arn)
    except ValueError:
        return f"TARGET_ARN {failure.target_arn[:200]!r} is not an ARN"
    service = arn.service
    if arn.account and not is_account_id(arn.account):
        return f"TARGET_ARN {refused}"
    if failure.is_scheduler and service == "scheduler":
        return (
            f"TARGET_ARN {failure.target_arn} is a Scheduler universal target (an AWS SDK "
            "call retryd does not make)"
        )
    return f"TARGET_ARN {failure.target_arn} is a {service} target, which retryd cannot call"


def _rule_bus(failure: _Failure) -> tuple[str, str, str] | None:
    """(region, account, bus name) of the rule's bus; None for a schedule or an odd ARN."""
    if failure.is_scheduler:
        return None
    try:
        arn = Arn.parse(failure.source_arn)
    except ValueError:
        return None
    if arn.service != "events" or not arn.resource.startswith(_RULE_PREFIX):
        return None
    parts = arn.resource.removeprefix(_RULE_PREFIX).split("/")
    bus = parts[0] if len(parts) >= _RULE_PARTS_ON_CUSTOM_BUS else _DEFAULT_BUS
    return arn.region, arn.account, bus


def _bus_key(target: Target) -> tuple[str, str, str]:
    arn = target.parsed
    return arn.region, arn.account, arn.resource.removeprefix(_BUS_PREFIX)


def _put_events_entry(body: str) -> str | None:
    """A delivered event as the PutEvents entry that recreates it; None if it is not one."""
    event = parsed_json(body)
    if not isinstance(event, dict):
        return None
    source, detail_type, detail = event.get("source"), event.get("detail-type"), event.get("detail")
    if not (isinstance(source, str) and source and isinstance(detail_type, str) and detail_type):
        return None
    if not isinstance(detail, dict):
        return None
    entry: dict[str, Any] = {"Source": source, "DetailType": detail_type}
    try:
        entry["Detail"] = compact_json(detail)
        resources = event.get("resources")
        if isinstance(resources, list) and resources and all(isinstance(r, str) for r in resources):
            entry["Resources"] = resources
        if isinstance(event.get("time"), str):
            entry["Time"] = event["time"]
        return compact_json(entry)
    except (ValueError, RecursionError):
        return None


def _retry_attempts(letter: DeadLetter) -> int:
    """RETRY_ATTEMPTS: the retries EventBridge made before giving up; 0 when absent or odd."""
    text = (letter.attribute_string(RETRY_ATTEMPTS) or "").strip()
    # Bounded like retryd's own stamps: a count, not an arbitrarily long number.
    if not text.isascii() or not text.isdigit() or len(text) > 18:  # noqa: PLR2004 - int64 digits
        return 0
    return int(text)


def _first_failed_at(letter: DeadLetter) -> datetime | None:
    stamped = stamped_first_failed_at(letter)
    if stamped is not None:
        return stamped
    scheduled = letter.attribute_string(SCHEDULED_TIME)
    when = parse_timestamp(scheduled) if scheduled else None
    return when or letter.sent_at


def _event_attributes(letter: DeadLetter) -> Mapping[str, MessageAttribute]:
    kept = {
        name: value
        for name, value in forward_attributes(letter).items()
        if name not in METADATA_ATTRIBUTES
    }
    return MappingProxyType(kept)
