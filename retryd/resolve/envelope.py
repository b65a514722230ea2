"""The retryd/v1 envelope: the structured shape producers adopt to get exact retries.

An envelope is a claim, so it is held to its schema: a body that says it is a
retryd envelope but breaks the schema is parked with the validation error, never
guessed at (a typo such as `maxAttempt` would otherwise silently lift a limit).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from retryd.arns import Arn
from retryd.models import (
    DeadLetter,
    FailedExecution,
    Job,
    ParkReason,
    Target,
    TargetType,
    Unresolvable,
)
from retryd.resolve.base import (
    forward_attributes,
    stamped_attempt,
    stamped_first_failed_at,
    stamped_key,
)
from retryd.resolve.keys import MAX_KEY_CHARS, compact_json, idempotency_key, parsed_json
from retryd.resolve.stepfunctions_execution import execution_key, execution_state_machine

ENVELOPE_V1 = "retryd/v1"
# Any value in this family claims to be a retryd envelope (retryd/v2 included, so a
# newer producer's messages are parked for a newer retryd rather than misread).
# Other values of an `envelope` field belong to someone else's JSON.
ENVELOPE_FAMILY = "retryd/"
# A Step Functions ARN's resource naming an execution rather than a state machine (an
# Express one is named to be refused as such: it cannot be redriven).
_EXECUTION_RESOURCES = ("execution:", "express:")
# How much of an unsupported version string is echoed into a park detail.
_SHOWN_VERSION_CHARS = 40


def _iso_text_only(value: Any) -> Any:
    # pydantic would read a bare number as a Unix timestamp; the envelope says ISO-8601.
    if not isinstance(value, str):
        raise ValueError("must be an ISO-8601 timestamp string with a UTC offset")  # noqa: TRY004 - pydantic turns ValueError into a field error; TypeError would escape
    return value


IsoTimestamp = Annotated[AwareDatetime, BeforeValidator(_iso_text_only)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnvelopeTarget(_Strict):
    """Where the payload goes back to; the type must agree with the ARN's service.

    A `stepfunctions` target may name a failed Standard execution instead of a state
    machine: it is then redriven in place, as the status-change event of that failure
    would be (retryd.resolve.stepfunctions_execution), and `redriveCount` says how often
    it had been redriven when it failed (default 0).
    """

    type: TargetType
    arn: StrictStr
    redrive_count: Annotated[StrictInt | None, Field(alias="redriveCount", ge=0)] = None

    @property
    def execution_arn(self) -> str | None:
        """The failed execution to redrive, when the ARN names one rather than a machine."""
        if self.type is not TargetType.STEPFUNCTIONS:
            return None
        try:
            resource = Arn.parse(self.arn).resource
        except ValueError:
            return None
        return self.arn if resource.startswith(_EXECUTION_RESOURCES) else None

    @model_validator(mode="after")
    def _type_matches_arn(self) -> EnvelopeTarget:
        if self.execution_arn is not None:
            if isinstance(machine := execution_state_machine(self.arn), str):
                raise ValueError(machine)
            return self
        if self.redrive_count is not None:
            raise ValueError(
                "redriveCount applies only to an execution ARN (a failed execution to redrive)"
            )
        # ValueError from from_arn (not an ARN, unsupported service) becomes a field error.
        inferred = Target.from_arn(self.arn).type
        if inferred is not self.type:
            raise ValueError(
                f"type {self.type.value!r} does not match the ARN, which names a "
                f"{inferred.value!r} resource"
            )
        return self

    def to_target(self) -> Target:
        """The target: an execution's state machine (its allowlist entry, breaker and rate
        limit apply), else from_arn's spelling (a Lambda `:$LATEST` dropped), as every other
        shape's target."""
        if self.execution_arn is not None:
            machine = execution_state_machine(self.arn)
            if isinstance(machine, str):
                raise TypeError(machine)  # validated above: cannot happen
            return machine
        return Target.from_arn(self.arn)


class EnvelopeError(_Strict):
    """The failure the producer saw, carried for operators; it does not steer retrying."""

    code: StrictStr
    message: StrictStr = ""


class EnvelopeV1(_Strict):
    """The whole retryd/v1 envelope, field names exactly as producers write them."""

    envelope: Literal["retryd/v1"]
    target: EnvelopeTarget
    # Required but may be null: `Any` with no default is required in pydantic 2.
    payload: Any
    attempt: Annotated[StrictInt, Field(ge=0)] = 0
    max_attempts: Annotated[StrictInt | None, Field(alias="maxAttempts", ge=1)] = None
    idempotency_key: Annotated[
        StrictStr | None, Field(alias="idempotencyKey", min_length=1, max_length=MAX_KEY_CHARS)
    ] = None
    error: EnvelopeError | None = None
    first_failed_at: Annotated[IsoTimestamp | None, Field(alias="firstFailedAt")] = None


class PutEventsEntry(_Strict):
    """An EventBridge envelope's payload: one PutEvents entry, minus the bus (the target names it).

    `Detail` may be written as a JSON object or as the string PutEvents wants.
    """

    source: Annotated[StrictStr, Field(alias="Source", min_length=1)]
    detail_type: Annotated[StrictStr, Field(alias="DetailType", min_length=1)]
    # Any + a validator rather than a union: one clear message instead of one per member.
    detail: Annotated[Any, Field(alias="Detail")]
    event_bus_name: Annotated[StrictStr | None, Field(alias="EventBusName", min_length=1)] = None
    resources: Annotated[list[StrictStr] | None, Field(alias="Resources")] = None
    time: Annotated[IsoTimestamp | None, Field(alias="Time")] = None

    @field_validator("detail")
    @classmethod
    def _detail_is_an_object(cls, detail: Any) -> dict[str, Any] | str:
        if isinstance(detail, dict):
            return detail
        if isinstance(detail, str):
            try:
                parsed = json.loads(detail)
            except (ValueError, RecursionError):
                parsed = None
            if isinstance(parsed, dict):
                return detail
        raise ValueError("must be a JSON object, or a string holding one")

    @model_validator(mode="after")
    def _bus_is_the_target(self, info: ValidationInfo) -> PutEventsEntry:
        # The allowlist vets target.arn; a different EventBusName in the payload would
        # send the event to a bus the allowlist never looked at.
        target = info.context.get("target") if isinstance(info.context, dict) else None
        named = self.event_bus_name
        if (
            isinstance(target, Target)
            and named is not None
            and named not in (target.arn, target.name)
        ):
            raise ValueError("EventBusName names a different bus than target.arn")
        return self

    def to_entry(self) -> dict[str, Any]:
        """The entry as PutEvents takes it, without EventBusName (the target ARN is the bus)."""
        detail = self.detail if isinstance(self.detail, str) else compact_json(self.detail)
        entry: dict[str, Any] = {
            "Source": self.source,
            "DetailType": self.detail_type,
            "Detail": detail,
        }
        if self.resources is not None:
            entry["Resources"] = list(self.resources)
        if self.time is not None:
            entry["Time"] = self.time.isoformat()
        return entry


def format_errors(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the field by its dotted path; input values left out."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        path = ".".join(str(part) for part in error["loc"])
        where = ".".join(part for part in (prefix, path) if part) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] in ("model_type", "model_attributes_type", "dict_type"):
            # pydantic would name the model class, which means nothing to a producer.
            message = "Input should be a JSON object"
        elif error["type"] == "missing":
            message = "required field is missing"
        lines.append(f"{where}: {message}")
    return "\n".join(lines)


class EnvelopeResolver:
    """Resolves bodies of the form {"envelope": "retryd/v1", ...}; others are not its shape."""

    name = "envelope"

    def __init__(self, *, start_if_not_redrivable: bool = False) -> None:
        """`start_if_not_redrivable`: `[stepfunctions] not_redrivable`, for an envelope that
        names a failed execution."""
        self._start_if_not_redrivable = start_if_not_redrivable

    def resolve(self, letter: DeadLetter) -> Job | Unresolvable | None:
        document = _claimed_envelope(letter.body)
        if document is None:
            return None
        version = document["envelope"]
        if version != ENVELOPE_V1:
            shown = repr(version[:_SHOWN_VERSION_CHARS])
            return self._invalid(
                letter, f"unsupported envelope version {shown}; this retryd reads {ENVELOPE_V1}"
            )
        try:
            envelope = EnvelopeV1.model_validate(document)
        except ValidationError as exc:
            return self._invalid(letter, format_errors(exc))
        target = envelope.target.to_target()
        if envelope.target.execution_arn is not None:
            return self._redrive(letter, envelope, target, envelope.target.execution_arn)
        try:
            body = _body_for(target, envelope.payload)
        except ValidationError as exc:
            return self._invalid(letter, format_errors(exc, prefix="payload"))
        return Job(
            letter=letter,
            target=target,
            body=body,
            key=idempotency_key(target.arn, body, envelope.idempotency_key or stamped_key(letter)),
            attempt=max(envelope.attempt, stamped_attempt(letter) or 0),
            max_attempts=envelope.max_attempts,
            resolver=self.name,
            first_failed_at=_first_failed_at(envelope, letter),
            forward_attributes=forward_attributes(letter),
        )

    def _redrive(
        self, letter: DeadLetter, envelope: EnvelopeV1, machine: Target, execution_arn: str
    ) -> Job:
        """A failed execution the envelope names: the job its status-change event would be
        (the same key for the same failure), with the envelope's attempts and limits."""
        redrive_count = envelope.target.redrive_count or 0
        # The original input, for a fresh start when it cannot be redriven; null: none.
        body = "" if envelope.payload is None else compact_json(envelope.payload)
        declared = envelope.idempotency_key or stamped_key(letter)
        return Job(
            letter=letter,
            target=machine,
            body=body,
            key=execution_key(machine, execution_arn, redrive_count, declared),
            attempt=max(envelope.attempt, stamped_attempt(letter) or 0),
            max_attempts=envelope.max_attempts,
            resolver=self.name,
            first_failed_at=_first_failed_at(envelope, letter),
            forward_attributes=forward_attributes(letter),
            source_attempts=redrive_count + 1,
            origin=FailedExecution(
                execution_arn=execution_arn,
                status="",
                redrive_count=redrive_count,
                start_if_not_redrivable=self._start_if_not_redrivable,
            ),
        )

    @staticmethod
    def _invalid(letter: DeadLetter, detail: str) -> Unresolvable:
        return Unresolvable(letter, ParkReason.INVALID_ENVELOPE, detail)


def _claimed_envelope(body: str) -> dict[str, Any] | None:
    """The parsed body when it claims to be a retryd envelope; None when it is another shape."""
    document = parsed_json(body)
    if not isinstance(document, dict):
        return None
    version = document.get("envelope")
    if not isinstance(version, str) or not version.startswith(ENVELOPE_FAMILY):
        return None
    return document


def _body_for(target: Target, payload: Any) -> str:
    """The exact text the target receives; ValidationError for a bad EventBridge entry."""
    if target.type is TargetType.EVENTBRIDGE:
        entry = PutEventsEntry.model_validate(payload, context={"target": target})
        return compact_json(entry.to_entry())
    if target.type in (TargetType.SQS, TargetType.SNS) and isinstance(payload, str):
        # A queue or topic carries text: a string payload is the message itself.
        return payload
    return compact_json(payload)


def _first_failed_at(envelope: EnvelopeV1, letter: DeadLetter) -> datetime | None:
    return envelope.first_failed_at or stamped_first_failed_at(letter) or letter.sent_at
