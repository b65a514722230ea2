"""Typed values that flow through one cycle: queues, dead letters, targets, jobs, outcomes.

Everything here is frozen: a message's journey is a series of decisions, each a
new value, so nothing downstream can quietly change what an earlier step saw.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from retryd.arns import Arn, is_account_id, parse_queue_url, queue_arn_from_url


class TargetType(StrEnum):
    """The five kinds of resource retryd can resubmit to (the envelope's `target.type`)."""

    LAMBDA = "lambda"
    STEPFUNCTIONS = "stepfunctions"
    SQS = "sqs"
    SNS = "sns"
    EVENTBRIDGE = "eventbridge"


# ARN service field -> target type. EventBridge buses live under "events".
_SERVICE_TO_TYPE = {
    "lambda": TargetType.LAMBDA,
    "states": TargetType.STEPFUNCTIONS,
    "sqs": TargetType.SQS,
    "sns": TargetType.SNS,
    "events": TargetType.EVENTBRIDGE,
}

LATEST_QUALIFIER = ":$LATEST"


@functools.lru_cache(maxsize=4096)
def _parsed_arn(arn: str) -> Arn:
    """A target's ARN split once: its name and kind are asked for every message it is sent."""
    return Arn.parse(arn)


@dataclass(frozen=True, slots=True)
class Target:
    """A resource retryd may send a message back to."""

    type: TargetType
    arn: str

    @classmethod
    def from_arn(cls, arn: str) -> Target:
        """Infer the target type from the ARN's service; ValueError if retryd cannot send there."""
        parsed = Arn.parse(arn)
        target_type = _SERVICE_TO_TYPE.get(parsed.service)
        if target_type is None:
            raise ValueError(f"unsupported target service {parsed.service!r} in {arn!r}")
        if parsed.account and not is_account_id(parsed.account):
            # It would reach AWS as an owner account (GetQueueUrl's QueueOwnerAWSAccountId):
            # no account holds it, and the allowlist's `*` account must not admit it.
            raise ValueError(
                f"account {parsed.account[:40]!r} is not a 12-digit AWS account id: {arn!r}"
            )
        if target_type is TargetType.LAMBDA and not parsed.resource.startswith("function:"):
            raise ValueError(f"Lambda target must be a function ARN: {arn!r}")
        if target_type is TargetType.LAMBDA:
            # `$LATEST` names the same code as the unqualified ARN: one spelling keeps
            # allowlist matches, idempotency keys and breakers the same for every shape.
            arn = arn.removesuffix(LATEST_QUALIFIER)
        if target_type is TargetType.STEPFUNCTIONS and not parsed.resource.startswith(
            "stateMachine:"
        ):
            raise ValueError(f"Step Functions target must be a state machine ARN: {arn!r}")
        if target_type is TargetType.EVENTBRIDGE and not parsed.resource.startswith("event-bus/"):
            raise ValueError(f"EventBridge target must be an event bus ARN: {arn!r}")
        if _RESOURCE_NAMES[target_type].fullmatch(parsed.resource) is None:
            # An empty or malformed name is no resource AWS could hold: a call would at
            # best fail, at worst reach a default (EventBridge's `event-bus/` is no bus).
            raise ValueError(f"{target_type.value} target has no valid resource name: {arn!r}")
        return cls(target_type, arn)

    @property
    def parsed(self) -> Arn:
        return _parsed_arn(self.arn)

    @property
    def name(self) -> str:
        """The resource's short name (function, state machine, queue, topic or bus)."""
        resource = self.parsed.resource
        if self.type is TargetType.LAMBDA:
            return resource.split(":")[1]
        if self.type is TargetType.STEPFUNCTIONS:
            return resource.split(":")[1]
        if self.type is TargetType.EVENTBRIDGE:
            return resource.removeprefix("event-bus/")
        return resource

    @property
    def is_fifo(self) -> bool:
        return self.type in (TargetType.SQS, TargetType.SNS) and self.name.endswith(".fifo")


# What each service accepts as a resource name (the API references' constraints):
# Lambda FunctionName [a-zA-Z0-9-_]{1,64} and a Qualifier of 1-128 (version, alias, $LATEST);
# Step Functions names 1-80 characters with no white space, brackets, wildcards or
# `"#%\\^|~`$&,;:/` (a version or alias may follow); SQS queue names
# [A-Za-z0-9_-]{1,80} and SNS topic names [A-Za-z0-9_-]{1,256}, each with an optional
# `.fifo`; EventBridge bus names [/.\-_A-Za-z0-9]{1,256}.
_RESOURCE_NAMES: dict[TargetType, re.Pattern[str]] = {
    TargetType.LAMBDA: re.compile(r"function:[a-zA-Z0-9_-]{1,64}(?::[a-zA-Z0-9$_-]{1,128})?"),
    TargetType.STEPFUNCTIONS: re.compile(
        r"stateMachine:[^\s<>{}\[\]?*\"#%\\^|~`$&,;:/\x00-\x1f\x7f]{1,80}(?::[a-zA-Z0-9_-]{1,80})?"
    ),
    TargetType.SQS: re.compile(r"(?=.{1,80}$)[A-Za-z0-9_-]+(?:\.fifo)?"),
    TargetType.SNS: re.compile(r"(?=.{1,256}$)[A-Za-z0-9_-]+(?:\.fifo)?"),
    TargetType.EVENTBRIDGE: re.compile(r"event-bus/[/.\-_A-Za-z0-9]{1,256}"),
}


class SourceKind(StrEnum):
    """Where dead letters are kept; a bounded set, used as a metric label."""

    SQS = "sqs"
    # Objects under a prefix of an S3 bucket (Lambda's S3 on-failure destinations).
    S3 = "s3"


@dataclass(frozen=True, slots=True)
class QueueRef:
    """One DLQ as discovery found it: an SQS queue, or a bucket prefix of failure records.

    An S3 source is named `bucket/prefix`, its url is `s3://bucket/prefix` and its
    ARN `arn:aws:s3:::bucket/prefix`; `retryd.s3_objects` reads and writes it.
    """

    name: str
    url: str
    arn: str
    # MessageRetentionPeriod, once a cycle has read it: when SQS will delete a message.
    retention_s: int | None = None
    kind: SourceKind = SourceKind.SQS

    @property
    def is_fifo(self) -> bool:
        return self.kind is SourceKind.SQS and self.name.endswith(".fifo")


def queue_ref_from_url(url: str, default_region: str | None) -> QueueRef:
    """A QueueRef with the ARN derived from the URL; `default_region` covers non-AWS hosts."""
    return QueueRef(
        name=parse_queue_url(url).name, url=url, arn=queue_arn_from_url(url, default_region)
    )


@dataclass(frozen=True, slots=True)
class MessageAttribute:
    """One SQS/SNS message attribute, in the shape both services share."""

    data_type: str
    string_value: str | None = None
    binary_value: bytes | None = None

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> MessageAttribute:
        binary = raw.get("BinaryValue")
        return cls(
            data_type=str(raw["DataType"]),
            string_value=raw.get("StringValue"),
            binary_value=bytes(binary) if binary is not None else None,
        )

    @classmethod
    def string(cls, value: str) -> MessageAttribute:
        return cls("String", string_value=value)

    @classmethod
    def number(cls, value: int) -> MessageAttribute:
        return cls("Number", string_value=str(value))

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"DataType": self.data_type}
        if self.string_value is not None:
            wire["StringValue"] = self.string_value
        if self.binary_value is not None:
            wire["BinaryValue"] = self.binary_value
        return wire

    def to_json(self) -> dict[str, str]:
        """A JSON-safe form, for packing attributes that do not fit into one."""
        out = {"DataType": self.data_type}
        if self.string_value is not None:
            out["StringValue"] = self.string_value
        if self.binary_value is not None:
            out["BinaryValue"] = base64.b64encode(self.binary_value).decode("ascii")
        return out

    @property
    def wire_size(self) -> int:
        """Bytes SQS counts against the message size: name is added by the caller."""
        value = self.binary_value or (self.string_value or "").encode()
        return len(self.data_type.encode()) + len(value)


Attributes = Mapping[str, MessageAttribute]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message received from a DLQ, with everything SQS told us about it."""

    queue: QueueRef
    message_id: str
    receipt_handle: str
    body: str
    system_attributes: Mapping[str, str] = field(default_factory=dict)
    message_attributes: Attributes = field(default_factory=dict)

    @classmethod
    def from_wire(cls, queue: QueueRef, raw: Mapping[str, Any]) -> DeadLetter:
        """One entry of an SQS ReceiveMessage response."""
        return cls(
            queue=queue,
            message_id=str(raw["MessageId"]),
            receipt_handle=str(raw["ReceiptHandle"]),
            body=str(raw.get("Body", "")),
            system_attributes=dict(raw.get("Attributes", {})),
            message_attributes={
                name: MessageAttribute.from_wire(value)
                for name, value in raw.get("MessageAttributes", {}).items()
            },
        )

    @property
    def receive_count(self) -> int:
        return int(self.system_attributes.get("ApproximateReceiveCount", "1"))

    @property
    def sent_at_s(self) -> float | None:
        """SQS's SentTimestamp in unix seconds; None when absent or not a number."""
        raw = self.system_attributes.get("SentTimestamp")
        if raw is None or not (raw.isascii() and raw.isdigit()):
            return None
        return int(raw) / 1000

    @property
    def sent_at(self) -> datetime | None:
        sent_s = self.sent_at_s
        return None if sent_s is None else datetime.fromtimestamp(sent_s, tz=UTC)

    @property
    def group_id(self) -> str | None:
        return self.system_attributes.get("MessageGroupId")

    def attribute_string(self, name: str) -> str | None:
        attribute = self.message_attributes.get(name)
        return attribute.string_value if attribute is not None else None


@dataclass(frozen=True, slots=True)
class FailedExecution:
    """A Step Functions execution that ended FAILED, TIMED_OUT or ABORTED, to be redriven.

    The Job that carries it targets the execution's state machine (so the allowlist,
    breaker and rate limit are the state machine's) and holds the execution's original
    input as its body, for a StartExecution when the execution cannot be redriven.
    """

    execution_arn: str
    status: str
    # How many times it had been redriven when it failed this time (the event's redriveCount).
    redrive_count: int = 0
    stopped_at: datetime | None = None
    # What to do when it cannot be redriven: start a new execution with the original
    # input (True) or park the message `not-redrivable` (False). `[stepfunctions]`.
    start_if_not_redrivable: bool = False

    def describe(self) -> str:
        """What is resumed, in a few words (`retryd plan` shows it beside the target)."""
        return f"redrive execution {self.execution_arn}"

    def to_json(self) -> dict[str, Any]:
        # An envelope names the execution without its status.
        return {"execution_arn": self.execution_arn, "status": self.status or None}


class StreamKind(StrEnum):
    """The streams whose failed batches Lambda's event source mappings point at."""

    KINESIS = "kinesis"
    DYNAMODB = "dynamodb"


@dataclass(frozen=True, slots=True)
class StreamBatch:
    """A batch a Lambda event source mapping gave up on: where it is in its stream.

    The Job that carries it targets the function, and its body is the pointer as
    Lambda wrote it (`KinesisBatchInfo`, `DDBStreamBatchInfo`); the records are read
    back from the stream when the job is sent (retryd.targets.stream_replay).
    """

    kind: StreamKind
    stream_arn: str
    shard_id: str
    start_sequence: str
    end_sequence: str
    batch_size: int

    def describe(self) -> str:
        """What is resumed, in a few words (`retryd plan` shows it beside the target)."""
        return (
            f"replay {self.batch_size} record(s) of {self.stream_arn} shard {self.shard_id}, "
            f"sequence {self.start_sequence} to {self.end_sequence}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "stream_arn": self.stream_arn,
            "shard_id": self.shard_id,
            "start_sequence": self.start_sequence,
            "end_sequence": self.end_sequence,
            "batch_size": self.batch_size,
        }


@dataclass(frozen=True, slots=True)
class Job:
    """A resolved dead letter: what to send, where, and under which identity.

    `body` is the exact text to deliver: the Lambda payload, the Step Functions
    input, the SQS/SNS message body, or (EventBridge) a PutEvents entry as JSON.

    `attempt` counts retryd's own resubmissions only: it is what `guards.max_attempts`
    limits. `source_attempts` is what the AWS service that dead-lettered the message
    says it already tried (EventBridge's RETRY_ATTEMPTS, a Lambda destination
    record's approximateInvokeCount), as it says it: shown, never counted against
    retryd's limit (EventBridge's default policy alone makes 185).
    """

    letter: DeadLetter
    target: Target
    body: str
    key: str
    attempt: int = 0
    max_attempts: int | None = None
    resolver: str = ""
    first_failed_at: datetime | None = None
    forward_attributes: Attributes = field(default_factory=dict)
    source_attempts: int = 0
    # Set when the job resumes something that failed in place instead of sending the body
    # anew: a Step Functions execution to redrive, a stream batch to read back and replay.
    origin: FailedExecution | StreamBatch | None = None

    @property
    def first_failed_at_s(self) -> float | None:
        return self.first_failed_at.timestamp() if self.first_failed_at is not None else None

    @property
    def next_attempt(self) -> int:
        return self.attempt + 1


class ParkReason(StrEnum):
    """Why a message was moved to the parking queue; a bounded set, used as a metric label."""

    UNRESOLVABLE = "unresolvable"
    INVALID_ENVELOPE = "invalid-envelope"
    TARGET_NOT_ALLOWED = "target-not-allowed"
    ATTEMPTS_EXHAUSTED = "attempts-exhausted"
    TARGET_REJECTED = "target-rejected"
    PAYLOAD_TOO_LARGE = "payload-too-large"
    # The source recorded only a pointer (a Kinesis/DynamoDB stream batch), not the event.
    NOT_REPLAYABLE = "not-replayable"
    # EventBridge Scheduler cut the payload short: resubmitting it would send half an event.
    PAYLOAD_TRUNCATED = "payload-truncated"
    # The message names a target retryd cannot call (Scheduler universal targets).
    UNSUPPORTED_TARGET = "unsupported-target"
    # More than one resource feeds this DLQ and nothing says which one this message is from.
    AMBIGUOUS_TARGET = "ambiguous-target"
    # The AWS service that dead-lettered the message said retrying cannot help.
    SOURCE_ERROR_PERMANENT = "source-error-permanent"
    TOO_OLD = "too-old"
    # SQS would delete it (retention) before retryd could try again.
    RETENTION_EXPIRING = "retention-expiring"
    # A hook on the way back (retryd.resolve.hooks): the payload fails the route's JSON
    # Schema, the transform raised or ran out of time, or the transform asked to park it.
    INVALID_PAYLOAD = "invalid-payload"
    TRANSFORM_FAILED = "transform-failed"
    TRANSFORM_PARKED = "transform-parked"
    # A failed Step Functions execution that cannot be redriven (Express, older than 14
    # days, gone), with `[stepfunctions] not_redrivable = "park"`.
    NOT_REDRIVABLE = "not-redrivable"
    # A stream batch no longer (wholly) in its stream: trimmed by retention, or gone.
    SOURCE_EXPIRED = "source-expired"


class FailReason(StrEnum):
    """Why a message was left in its DLQ (outcome `failed`); a bounded set, used as a metric label.

    A failed message reappears when its lease ends and is looked at again.
    """

    # The target could not take it for now (throttled, unavailable, timed out).
    TRANSIENT_ERROR = "transient-error"
    # It had to be parked, but the parking queue did not take the copy.
    PARKING_FAILED = "parking-failed"
    # The batch's lease ran out before its copy was known to be safe.
    LEASE_EXPIRED = "lease-expired"
    # A bug in retryd while handling it (logged with a traceback).
    INTERNAL_ERROR = "internal-error"
    # The attempt ledger could not be read or written, so retryd cannot tell whether to send.
    LEDGER_UNAVAILABLE = "ledger-unavailable"
    # The ledger cannot work as configured (its table is missing, no credentials): the
    # message waits too, but for a person rather than another cycle.
    LEDGER_MISCONFIGURED = "ledger-misconfigured"


# Failed reasons that another cycle will not cure: `retryd once` exits as for a bad config.
CONFIG_FAIL_REASONS = frozenset({FailReason.LEDGER_MISCONFIGURED})


def ledger_hold_reason(error_class: ErrorClass) -> FailReason:
    """Why a message is held when the ledger failed with an error of `error_class`."""
    if error_class is ErrorClass.CONFIG:
        return FailReason.LEDGER_MISCONFIGURED
    return FailReason.LEDGER_UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Unresolvable:
    """A dead letter no resolver could turn into a Job, and why.

    `retry_later`: it may only be unresolvable for now (what feeds its DLQ could not
    be learned for a transient reason); it stays in its DLQ instead of being parked.
    """

    letter: DeadLetter
    reason: ParkReason
    detail: str
    retry_later: bool = False
    # The ledger key its park is claimed and recorded under, as the resolver chain gives
    # it (from its DLQ and body: it names no target); empty until then. Derived from the
    # letter, so it takes no part in equality.
    key: str = field(default="", compare=False)


class Outcome(StrEnum):
    """What happened to one message: in a cycle, a redrive job, or (predicted) in a plan."""

    RESUBMITTED = "resubmitted"
    PARKED = "parked"
    DEFERRED = "deferred"
    FAILED = "failed"
    # Operator paths only: a guard would park it, and an operator's redrive never parks
    # on a guard's word (the message is handed back where it was, for a person to see).
    REFUSED = "refused"


# What a daemon's cycle can decide (its summary and `once --output json` count these).
CYCLE_OUTCOMES = (Outcome.RESUBMITTED, Outcome.PARKED, Outcome.DEFERRED, Outcome.FAILED)
# Outcomes whose message leaves its queue: its copy is safe, so it is deleted.
DELETED_OUTCOMES = frozenset({Outcome.RESUBMITTED, Outcome.PARKED})


class ErrorClass(StrEnum):
    """How a failed AWS call is treated: retried later, parked now, or left for a person.

    CONFIG is retryd's own set-up, not the message's or the target's fault (no
    credentials, a missing ledger table): the message stays in its DLQ, like a
    transient failure, but another cycle will not fix it and it is said so.
    """

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    CONFIG = "config"


class Refusal(StrEnum):
    """Why retryd itself refused to send a job, without calling the target (its error code)."""

    # Over the target's size limit: parked payload-too-large, never retried.
    PAYLOAD_TOO_LARGE = "retryd.PayloadTooLarge"
    # Not what the target needs (not JSON for Lambda, no Source for EventBridge, ...).
    INVALID_PAYLOAD = "retryd.InvalidPayload"
    # A failed execution that Step Functions will not redrive, and no fallback was asked for.
    NOT_REDRIVABLE = "retryd.NotRedrivable"
    # The stream no longer holds the batch a job points at.
    SOURCE_EXPIRED = "retryd.SourceExpired"


@dataclass(frozen=True, slots=True)
class SendError:
    """A target or parking call that did not take a message."""

    error_class: ErrorClass
    code: str
    message: str
    # Set when retryd refused the job itself: what to park it as, without reading `code`.
    refusal: Refusal | None = None

    @classmethod
    def refused(cls, refusal: Refusal, message: str) -> SendError:
        """retryd's own refusal of a job: permanent, with the refusal as its code."""
        return cls(ErrorClass.PERMANENT, refusal.value, message, refusal)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


@dataclass(frozen=True, slots=True)
class Decision:
    """The settled fate of one message: exported as a metric and one log line."""

    letter: DeadLetter
    outcome: Outcome
    target: Target | None = None
    reason: str = ""
    detail: str = ""
    attempt: int = 0
    # What the source service tried before the DLQ (see Job.source_attempts); 0 if unknown.
    source_attempts: int = 0

    @property
    def deletes(self) -> bool:
        """Its copy is safe (resubmitted or parked): the message is deleted from its queue."""
        return self.outcome in DELETED_OUTCOMES
